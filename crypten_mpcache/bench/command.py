"""What ``crypten-mpcache bench`` does once its arguments are valid.

``run_command`` runs a BenchConfig with a progress bar (or, with ``report_only``, reloads
a result JSON), prints the side-by-side table (with full/cache ratios) and writes the
optional JSON, markdown and PNG. The options are parsed by ``crypten_mpcache.cli.bench``.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from crypten_mpcache.bench.plot import plot
from crypten_mpcache.bench.report import format_report
from crypten_mpcache.bench.runner import BenchConfig, run_bench


@dataclass(frozen=True)
class Outputs:
    """Where a bench run writes (None: nowhere)."""

    json_path: str | None = None
    markdown_path: str | None = None
    plot_path: str | None = None

    def check(self) -> None:
        if self.plot_path is not None and not self.plot_path.endswith(".png"):
            raise ValueError(f"--plot must name a .png file, got {self.plot_path!r}")


def _progress(total: int, quiet: bool, partial: Path | None) -> Callable[[Any, Any], None]:
    """A tqdm bar over rows; with ``partial``, each finished row is also appended there
    (JSON lines) so that a run that dies late keeps its rows."""
    bar = tqdm(total=total, desc="bench", unit="row", disable=quiet, file=sys.stderr)

    def update(task: Any, row: dict[str, Any] | None) -> None:
        if row is None:
            bar.set_postfix_str(f"ctx {task.context} {task.cache}")
            return
        bar.update(1)
        if partial is not None:
            with partial.open("a") as out:
                out.write(json.dumps(row) + "\n")
        if bar.n == bar.total:
            bar.close()
    return update


def write(result: dict[str, Any], outputs: Outputs, write_json: bool = True) -> None:
    """Print the report and write the requested files."""
    text = format_report(result)
    print(text)
    if outputs.json_path is not None and write_json:
        Path(outputs.json_path).write_text(json.dumps(result, indent=1))
        print(f"\nwrote {outputs.json_path}")
    if outputs.markdown_path is not None:
        command = result.get("command", "")
        Path(outputs.markdown_path).write_text(
            (f"Command: `{command}`\n\n" if command else "") + text + "\n")
        print(f"wrote {outputs.markdown_path}")
    if outputs.plot_path is not None:
        print(f"wrote {plot(result, outputs.plot_path)}")


def command_line() -> str:
    """How this run was started, for the record in the JSON and markdown."""
    argv = sys.argv[1:]
    start = argv.index("bench") + 1 if "bench" in argv[:3] else 0
    return "crypten-mpcache bench " + shlex.join(argv[start:])


def report_only(source: str, outputs: Outputs) -> int:
    """Rebuild the table/plot from a result JSON without running anything."""
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"no such result JSON: {source}")
    write(json.loads(path.read_text()), outputs, write_json=False)
    return 0


def run_command(config: BenchConfig, outputs: Outputs, quiet: bool = False) -> int:
    """Run the benchmark and write the requested outputs."""
    partial = Path(outputs.json_path + ".partial") if outputs.json_path else None
    on_row = _progress(len(config.tasks()), quiet, partial)
    result = run_bench(config, on_row=on_row).as_dict()
    result["command"] = command_line()
    write(result, outputs)
    if partial is not None:
        partial.unlink(missing_ok=True)
    return 0
