"""``crypten-mpcache eval``: accuracy vs KV-cache budget on the embedded SmolLM2.

``add_arguments`` fills a parser; ``run`` turns the arguments into an EvalConfig, runs it,
writes the JSON / plots / markdown table and prints a one-line summary. Bad input gives
a one-line error and exit status 2. ``--report-only`` rebuilds the table and plots from
existing JSONs without running anything.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crypten_mpcache.config import MPCACHE_ABLATIONS
from crypten_mpcache.eval.methods import METHODS
from crypten_mpcache.eval.runner import QUERY_AT, EvalConfig

DEFAULTS = EvalConfig()


def _csv(kind: Callable[[str], Any]) -> Callable[[str], tuple[Any, ...]]:
    def parse(text: str) -> tuple[Any, ...]:
        try:
            return tuple(kind(x.strip()) for x in text.split(",") if x.strip())
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"bad list {text!r}: {exc}") from exc
    return parse


def _shard(text: str) -> tuple[int, int]:
    index, sep, count = text.partition("/")
    try:
        if not sep:
            raise ValueError
        return int(index), int(count)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--shard takes I/N, e.g. 0/4, got {text!r}") from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The eval subcommand's options (comma-separated lists where several are allowed)."""
    add = parser.add_argument
    add("--task", dest="tasks", type=_csv(str), default=DEFAULTS.tasks,
        help="passkey,needle,kv-retrieval,ppl (default: all four)")
    add("--context", dest="contexts", type=_csv(int), default=DEFAULTS.contexts,
        help="prompt lengths in tokens, e.g. 1024,2048,4096 (default: 1024)")
    add("--method", dest="methods", type=_csv(str), default=DEFAULTS.methods,
        help=f"{','.join(METHODS)} and the MPCache ablations "
             f"{', '.join('mpcache:' + a for a in MPCACHE_ABLATIONS)} (default: all 7)")
    add("--budget", dest="budgets", type=_csv(float), default=DEFAULTS.budgets,
        help="fractions of the prompt attended per decode step (default: 0.05,0.1,0.2)")
    add("--query-at", dest="query_at", type=_csv(str), default=DEFAULTS.query_at,
        help=f"{','.join(QUERY_AT)}, comma-separated: question inside the prompt, fed "
             "after prefill as one chunk, or fed token by token after prefill (default: "
             "prefill,chunk)")
    add("--samples", type=int, default=DEFAULTS.samples, help="samples per task and context")
    add("--fraction", type=float, default=DEFAULTS.fraction,
        help="run only this fraction of the samples (quick look)")
    add("--seed", type=int, default=DEFAULTS.seed)
    add("--style", default=DEFAULTS.style, help="prompt style: chat (default) or plain")
    add("--out-dir", default=DEFAULTS.out_dir,
        help=f"where run folders go (default: {DEFAULTS.out_dir}/, ignored by git)")
    add("--run-name", default="", help="run folder name; an existing one is resumed")
    add("--json", dest="json_path", default="", help="write the result JSON here too")
    add("--plot", dest="plot_path", default="",
        help="PNG base path: one file per task, e.g. out.png -> out-passkey.png")
    add("--markdown", dest="markdown_path", default="", help="write the results table here")
    add("--notes", dest="notes_path", default="",
        help="markdown file inserted near the top of --markdown (hand-written findings)")
    add("--report-only", nargs="+", default=None, metavar="JSON",
        help="skip running; build --markdown/--plot from these result JSONs or run folders")
    add("--model-folder", default="",
        help="a local transformers checkpoint folder (default: the embedded SmolLM2)")
    add("--device", default=DEFAULTS.device,
        help="cpu (default), cuda or auto (cuda when a GPU is visible)")
    add("--shard", default="0/1", type=_shard,
        help="I/N: run every N-th unit starting at I, for N processes sharing one run "
             "folder (each writes predictions-I-of-N.jsonl; reports read them all)")
    add("--workers", type=int, default=1,
        help="split the run over this many processes (one --shard each) sharing the run "
             "folder: use the cores, or keep a GPU busy (default: 1)")
    add("--no-progress", action="store_true", help="hide the progress bar")


def _config(args: argparse.Namespace) -> EvalConfig:
    return EvalConfig(
        tasks=tuple(args.tasks), contexts=tuple(args.contexts), methods=tuple(args.methods),
        budgets=tuple(args.budgets), query_at=tuple(args.query_at), samples=args.samples,
        fraction=args.fraction, seed=args.seed, style=args.style, out_dir=args.out_dir,
        run_name=args.run_name, model_folder=args.model_folder, device=args.device,
        shard_index=args.shard[0], shard_count=args.shard[1])


def _check_methods(names: tuple[str, ...]) -> None:
    from crypten_mpcache.config import OVERRIDE_SEPARATOR, variant_overrides
    from crypten_mpcache.eval.methods import is_known, known_methods

    bad = [m for m in names if not is_known(m)]
    if bad:
        raise ValueError(f"unknown method(s) {bad}; choose from {', '.join(known_methods())}"
                         " (an MPCache variant may add knobs: mpcache+field=value)")
    for name in names:
        if OVERRIDE_SEPARATOR in name:
            variant_overrides(name)  # a bad knob is a one-line error before any model loads


def _outputs(rows: list[dict[str, Any]], args: argparse.Namespace, command: str) -> None:
    if args.plot_path:
        from crypten_mpcache.eval.plots import plot_all

        for path in plot_all(rows, args.plot_path):
            print(f"plot: {path}")
    if args.markdown_path:
        from crypten_mpcache.eval.report import markdown

        Path(args.markdown_path).parent.mkdir(parents=True, exist_ok=True)
        notes = Path(args.notes_path).read_text() if args.notes_path else ""
        Path(args.markdown_path).write_text(markdown(rows, command, notes=notes))
        print(f"table: {args.markdown_path}")


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
    from crypten_mpcache import assets
    from crypten_mpcache.eval.parallel import run_workers
    from crypten_mpcache.eval.runner import load_tokenizer, plan, run_folder
    from crypten_mpcache.eval.tasks import Haystack

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


def run(args: argparse.Namespace) -> int:
    """Run the evaluation described by ``args``; 0 on success, 2 on bad input."""
    argv = sys.argv[sys.argv.index("eval") + 1:] if "eval" in sys.argv else sys.argv[1:]
    command = "crypten-mpcache eval " + " ".join(shlex.quote(a) for a in argv)
    try:
        if args.report_only:
            from crypten_mpcache.eval.report import load_rows

            _outputs(load_rows(args.report_only), args, command)
            return 0
        cfg = _config(args)
        _check_methods(cfg.methods)
        if args.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {args.workers}")
        if args.workers > 1 and cfg.shard_count > 1:
            raise ValueError("--workers and --shard exclude each other")
    except (ValueError, FileNotFoundError, KeyError, json.JSONDecodeError) as exc:
        print(f"crypten-mpcache eval: error: {exc}", file=sys.stderr)
        return 2
    from crypten_mpcache.eval.runner import run_eval

    if args.workers > 1:
        if not cfg.run_name:  # every worker must write to the same folder
            from dataclasses import replace

            from crypten_mpcache.eval.runner import run_folder

            cfg = replace(cfg, run_name=run_folder(cfg).name)
        status = _run_workers(cfg, args.workers, not args.no_progress)
        if status:
            return status
    result = run_eval(cfg, progress=not args.no_progress)  # reads what the workers wrote
    for name, why in result["unavailable"].items():
        print(f"unavailable: {name}: {why}")
    if args.json_path:
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).write_text(json.dumps(result, indent=2))
    _outputs(result["rows"], args, command)
    print(f"{len(result['rows'])} rows in {result['seconds']} s; run folder {result['run_dir']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m crypten_mpcache.eval.cli``)."""
    parser = argparse.ArgumentParser(prog="crypten-mpcache eval", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
