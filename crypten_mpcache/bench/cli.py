"""``crypten-mpcache bench``: what a decode step costs under MPC, full cache vs MPCache.

``add_arguments`` fills a parser; ``run`` builds a BenchConfig, runs it with a progress
bar, prints the side-by-side table (with full/cache ratios) and writes the optional
JSON, markdown and PNG. Bad input raises ValueError with a one-line message (the main
CLI prints it and exits 2). ``--report-only`` rebuilds the table/plot from a JSON.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crypten_mpcache.bench.runner import BenchConfig

DEFAULTS = BenchConfig()


def _csv(kind: Callable[[str], Any]) -> Callable[[str], tuple[Any, ...]]:
    def parse(text: str) -> tuple[Any, ...]:
        try:
            values = tuple(kind(x.strip()) for x in text.split(",") if x.strip())
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"bad list {text!r}: {exc}") from exc
        if not values:
            raise argparse.ArgumentTypeError(f"empty list {text!r}")
        return values
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The bench subcommand's options."""
    from crypten_mpcache.bench.shapes import SHAPES
    from crypten_mpcache.bench.variants import ABLATIONS
    from crypten_mpcache.runtime.launcher import COMPARISONS, DEALERS
    from crypten_mpcache.secure.functions.activation import SILU_METHODS

    add = parser.add_argument
    add("--shape", default=DEFAULTS.shape, choices=tuple(SHAPES),
        help="real layer dimensions (random weights); tiny is for smoke tests")
    add("--layers", type=int, default=DEFAULTS.layers,
        help="decoder layers to run (default 1; each Llama-7B/8B layer needs ~8-9 GB "
             "with 2 parties + dealer unless weights are shared, see --distinct-weights)")
    add("--context", dest="contexts", type=_csv(int), default=DEFAULTS.contexts,
        help="KV-cache lengths, e.g. 512,1024,2048,4096")
    add("--cache", dest="caches", type=_csv(str), default=DEFAULTS.caches,
        help="cache variants: registry policies (full, mpcache, ...) and the ablations "
             + ", ".join(a for a in ABLATIONS if a != "mpcache"))
    add("--budget", type=float, default=DEFAULTS.budget,
        help="fraction of the context attended per decode step, forced sink/recent "
             "clusters included (default 0.05)")
    add("--dealer", default=DEFAULTS.dealer, choices=DEALERS,
        help="ttp: separate trusted dealer; tfp: party 0 deals (cost measurement only)")
    add("--comparison", default=DEFAULTS.comparison, choices=COMPARISONS,
        help="secure comparison of every row (full and MPCache alike): masked (the "
             "dealer deals the mask's bits; default) or crypten (CrypTen's adder)")
    add("--activation", default=DEFAULTS.activation, choices=SILU_METHODS,
        help="secure SiLU of every row (full and MPCache alike): lookup (a table read by "
             "a dealt one-hot; default), exp_poly, piecewise or sigmoid")
    add("--steps", type=int, default=DEFAULTS.steps, help="decode steps measured per row")
    add("--distinct-weights", action="store_true",
        help="encrypt distinct weights per layer (default: one shared set; the per-step "
             "transcript is identical, the memory is one layer's)")
    add("--max-memory-gb", type=float, default=None,
        help="refuse rows whose estimated peak memory exceeds this")
    add("--seed", type=int, default=DEFAULTS.seed)
    add("--json", dest="json_path", default=None, metavar="PATH", help="write the rows here")
    add("--markdown", dest="markdown_path", default=None, metavar="PATH",
        help="write the table here")
    add("--plot", dest="plot_path", default=None, metavar="PATH.png",
        help="bytes and LAN/WAN latency vs context")
    add("--report-only", default=None, metavar="JSON",
        help="skip running: rebuild the table/plot from this result JSON")
    add("--quiet", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """A validated BenchConfig (ValueError with a one-line message on bad input)."""
    return BenchConfig(shape=args.shape, layers=args.layers, contexts=tuple(args.contexts),
                       caches=tuple(args.caches), budget=args.budget, dealer=args.dealer,
                       comparison=args.comparison, activation=args.activation,
                       steps=args.steps,
                       share_weights=not args.distinct_weights,
                       seed=args.seed, max_memory_gb=args.max_memory_gb)


def _check_outputs(args: argparse.Namespace) -> None:
    for path in (args.json_path, args.markdown_path, args.plot_path):
        if path is not None and not Path(path).expanduser().resolve().parent.is_dir():
            raise ValueError(f"cannot write {path}: its folder does not exist")
    if args.plot_path is not None and not args.plot_path.endswith(".png"):
        raise ValueError(f"--plot must name a .png file, got {args.plot_path!r}")


def _progress(total: int, quiet: bool, partial: Path | None) -> Callable[[Any, Any], None]:
    """A tqdm bar over rows; with ``partial``, each finished row is also appended there
    (JSON lines) so that a run that dies late keeps its rows."""
    from tqdm import tqdm

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


def _write(result: dict[str, Any], args: argparse.Namespace) -> None:
    from crypten_mpcache.bench.plot import plot
    from crypten_mpcache.bench.report import format_report

    text = format_report(result)
    print(text)
    if args.json_path is not None and args.report_only is None:
        Path(args.json_path).write_text(json.dumps(result, indent=1))
        print(f"\nwrote {args.json_path}")
    if args.markdown_path is not None:
        command = result.get("command", "")
        Path(args.markdown_path).write_text(
            (f"Command: `{command}`\n\n" if command else "") + text + "\n")
        print(f"wrote {args.markdown_path}")
    if args.plot_path is not None:
        print(f"wrote {plot(result, args.plot_path)}")


def _command_line() -> str:
    """How this run was started, for the record in the JSON and markdown."""
    argv = sys.argv[1:]
    if "bench" in argv[:2]:
        return "crypten-mpcache " + shlex.join(argv)
    return "python -m crypten_mpcache.bench.cli " + shlex.join(argv)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark (or rebuild its report) and write the requested outputs."""
    _check_outputs(args)
    if args.report_only is not None:
        source = Path(args.report_only)
        if not source.is_file():
            raise ValueError(f"no such result JSON: {args.report_only}")
        _write(json.loads(source.read_text()), args)
        return 0
    from crypten_mpcache.bench.runner import run_bench

    config = config_from_args(args)
    partial = Path(args.json_path + ".partial") if args.json_path else None
    on_row = _progress(len(config.tasks()), args.quiet, partial)
    result = run_bench(config, on_row=on_row).as_dict()
    result["command"] = _command_line()
    _write(result, args)
    if partial is not None:
        partial.unlink(missing_ok=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m crypten_mpcache.bench.cli``) until it is wired in."""
    parser = argparse.ArgumentParser(prog="crypten-mpcache bench",
                                     description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ValueError as error:
        print(f"crypten-mpcache bench: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
