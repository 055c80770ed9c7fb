"""``crypten-mpcache bench``: what a decode step costs under MPC, full cache vs MPCache.

Parses and validates the options, then calls ``bench.command`` (run, or ``--report-only``
rebuild of the table/plot from a JSON). Options left out take ``BenchConfig``'s defaults.
"""

from __future__ import annotations

import argparse
from typing import Any

from crypten_mpcache.bench.shapes import SHAPES
from crypten_mpcache.cli.common import check_writable, comma_list, positive_int, ratio
from crypten_mpcache.config import MPCACHE, mpcache_variants
from crypten_mpcache.runtime.launcher import COMPARISONS, DEALERS, LaunchConfig
from crypten_mpcache.runtime.offline import DEALINGS
from crypten_mpcache.secure.functions.activation import SILU_METHODS

NAME = "bench"
HELP = "MPC cost of a decode step: full cache vs MPCache"

# The options that become BenchConfig fields (None: the field's default).
CONFIG_FIELDS = ("shape", "layers", "contexts", "caches", "budget", "dealer", "comparison",
                 "dcf_max_elements", "dealing",
                 "activation", "steps", "seed", "max_memory_gb")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The bench command's options."""
    parser.description = ("Bytes, rounds and seconds of one decode step under MPC for "
                          "Llama-shaped decoders (random weights), side by side.")
    add = parser.add_argument
    add("--shape", default=None, choices=tuple(SHAPES),
        help="real layer dimensions (random weights); tiny is for smoke tests")
    add("--layers", type=positive_int, default=None,
        help="decoder layers to run (default 1; each Llama-7B/8B layer needs ~8-9 GB "
             "with 2 parties + dealer unless weights are shared, see --distinct-weights)")
    add("--context", dest="contexts", type=comma_list(positive_int), default=None,
        help="KV-cache lengths, e.g. 512,1024,2048,4096")
    add("--cache", dest="caches", type=comma_list(str), default=None,
        help="cache variants: registry policies (full, mpcache, ...) and the ablations "
             + ", ".join(v for v in mpcache_variants() if v != MPCACHE))
    add("--budget", type=ratio, default=None,
        help="fraction of the context attended per decode step, forced sink/recent "
             "clusters included (default 0.05)")
    add("--dealer", default=None, choices=DEALERS,
        help="ttp: separate trusted dealer; tfp: party 0 deals (cost measurement only)")
    add("--dealing", default=None, choices=DEALINGS,
        help="ttp only: ahead (default: each phase's material is dealt before the phase) "
             "or on-demand (each piece fetched when needed)")
    add("--comparison", default=None, choices=COMPARISONS,
        help="secure comparison of every row (full and MPCache alike): hybrid (default: "
             "dcf for calls of at most --dcf-max-elements elements, masked above), masked "
             "(the dealer deals the mask's bits), dcf (one round from dealt DCF keys) "
             "or crypten "
             "(CrypTen's adder)")
    add("--dcf-max-elements", type=positive_int, default=None,
        help="hybrid only: comparison calls of at most this many elements take DCF keys "
             f"(default {LaunchConfig.dcf_max_elements})")
    add("--activation", default=None, choices=SILU_METHODS,
        help="secure SiLU of every row (full and MPCache alike): lookup (a table read by "
             "a dealt one-hot; default), exp_poly, piecewise or sigmoid")
    add("--steps", type=positive_int, default=None, help="decode steps measured per row")
    add("--distinct-weights", action="store_true",
        help="encrypt distinct weights per layer (default: one shared set; the per-step "
             "transcript is identical, the memory is one layer's)")
    add("--max-memory-gb", type=float, default=None,
        help="refuse rows whose estimated peak memory exceeds this")
    add("--seed", type=int, default=None)
    add("--json", dest="json_path", default=None, metavar="PATH", help="write the rows here")
    add("--markdown", dest="markdown_path", default=None, metavar="PATH",
        help="write the table here")
    add("--plot", dest="plot_path", default=None, metavar="PATH.png",
        help="bytes and LAN/WAN latency vs context")
    add("--report-only", default=None, metavar="JSON",
        help="skip running: rebuild the table/plot from this result JSON")
    add("--quiet", action="store_true", help="no progress bar")


def config_options(args: argparse.Namespace) -> dict[str, Any]:
    """The BenchConfig fields the command line sets (the others keep their defaults)."""
    given = {name: getattr(args, name) for name in CONFIG_FIELDS
             if getattr(args, name) is not None}
    if args.distinct_weights:
        given["share_weights"] = False
    return given


def run(args: argparse.Namespace) -> int:
    """Validate the outputs and the config, then run (or rebuild the report)."""
    # Late: the bench runner loads the secure model and transformers' Llama (seconds),
    # which `--help` and the other commands do not need.
    from crypten_mpcache.bench import command
    from crypten_mpcache.bench.runner import BenchConfig

    outputs = command.Outputs(args.json_path, args.markdown_path, args.plot_path)
    check_writable(args.json_path, args.markdown_path, args.plot_path)
    outputs.check()
    if args.report_only is not None:
        return command.report_only(args.report_only, outputs)
    return command.run_command(BenchConfig(**config_options(args)), outputs, quiet=args.quiet)
