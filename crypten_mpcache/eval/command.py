"""What ``crypten-mpcache eval`` does once its arguments are valid.

``run_command`` runs an EvalConfig (in ``workers`` shard processes sharing one run folder
when asked), writes the JSON / plots / markdown table and prints a one-line summary;
``report_only`` rebuilds the table and plots from existing JSONs without running
anything. The options are parsed by ``crypten_mpcache.cli.eval``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from crypten_mpcache import assets
from crypten_mpcache.eval.parallel import run_workers
from crypten_mpcache.eval.plots import plot_all
from crypten_mpcache.eval.report import load_rows, markdown
from crypten_mpcache.eval.retention import Outcomes, load_outcomes
from crypten_mpcache.eval.runner import EvalConfig, load_tokenizer, plan, run_eval, run_folder
from crypten_mpcache.eval.tasks import Haystack


@dataclass(frozen=True)
class Outputs:
    """What an eval run writes besides its run folder ("": nothing)."""

    json_path: str = ""
    plot_path: str = ""
    markdown_path: str = ""
    notes_path: str = ""


def write_reports(rows: list[dict[str, Any]], outputs: Outputs, command: str,
                  outcomes: Outcomes | None = None) -> None:
    """Plots and the markdown page (with retention where per-sample ``outcomes`` exist)."""
    if outputs.plot_path:
        for path in plot_all(rows, outputs.plot_path):
            print(f"plot: {path}")
    if outputs.markdown_path:
        Path(outputs.markdown_path).parent.mkdir(parents=True, exist_ok=True)
        notes = Path(outputs.notes_path).read_text() if outputs.notes_path else ""
        page = markdown(rows, command, notes=notes, outcomes=outcomes)
        Path(outputs.markdown_path).write_text(page)
        print(f"table: {outputs.markdown_path}")


def report_only(sources: list[str], outputs: Outputs, command: str) -> int:
    """Build the markdown/plots from result JSONs or run folders (retention from the run
    folders' predictions or an outcomes JSON such as results/retention.json)."""
    write_reports(load_rows(sources), outputs, command, load_outcomes(sources))
    return 0


def config_argv(cfg: EvalConfig) -> list[str]:
    """The eval options that reproduce ``cfg`` (what each ``--workers`` shard runs)."""
    def join(values: tuple[Any, ...]) -> str:
        return ",".join(str(v) for v in values)

    return ["--task", join(cfg.tasks), "--context", join(cfg.contexts),
            "--method", join(cfg.methods), "--budget", join(cfg.budgets),
            "--query-at", join(cfg.query_at), "--samples", str(cfg.samples),
            "--fraction", str(cfg.fraction), "--seed", str(cfg.seed), "--style", cfg.style,
            "--out-dir", cfg.out_dir, "--run-name", cfg.run_name, "--device", cfg.device,
            "--model-folder", cfg.model_folder]


def _run_workers(cfg: EvalConfig, workers: int, progress: bool) -> int:
    """Run the grid in ``workers`` shard processes; 0, or 1 with a one-line error."""
    # The parent converts the model once, before any worker starts.
    tokenizer = load_tokenizer(cfg.model_folder)
    keys = [u.key for u in plan(cfg, Haystack(tokenizer, assets.essay_texts())).units]
    folder = run_folder(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    status = run_workers(config_argv(cfg), workers, folder, keys, progress)
    if status:
        print(f"crypten-mpcache eval: error: a worker failed (exit status {status}); the "
              f"finished units are in {folder}: run the same command again to resume",
              file=sys.stderr)
        return 1
    return 0


def run_command(cfg: EvalConfig, outputs: Outputs, command: str, workers: int = 1,
                progress: bool = True) -> int:
    """Run the evaluation (``workers`` > 1: shard processes first) and write the outputs."""
    if workers > 1:
        if not cfg.run_name:  # every worker must write to the same folder
            cfg = replace(cfg, run_name=run_folder(cfg).name)
        status = _run_workers(cfg, workers, progress)
        if status:
            return status
    result = run_eval(cfg, progress=progress)  # reads what the workers wrote
    for name, why in result["unavailable"].items():
        print(f"unavailable: {name}: {why}")
    if outputs.json_path:
        Path(outputs.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(outputs.json_path).write_text(json.dumps(result, indent=2))
    write_reports(result["rows"], outputs, command, load_outcomes([result["run_dir"]]))
    print(f"{len(result['rows'])} rows in {result['seconds']} s; run folder {result['run_dir']}")
    return 0
