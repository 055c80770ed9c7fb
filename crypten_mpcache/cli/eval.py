"""``crypten-mpcache eval``: accuracy vs KV-cache budget on the embedded SmolLM2.

Parses and validates the options (comma-separated lists where several are allowed), then
calls ``eval.command``: run the grid, or ``--report-only`` rebuild of the table and plots
from existing JSONs. Options left out take ``EvalConfig``'s defaults.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from crypten_mpcache.cli.common import CLIError, comma_list, positive_int, ratio
from crypten_mpcache.config import MPCACHE, MPCACHE_ABLATIONS, OVERRIDE_SEPARATOR, variant_overrides
from crypten_mpcache.methods import BASELINE_NAMES, FULL, is_known, known_methods

NAME = "eval"
HELP = "plaintext accuracy vs budget on the embedded model"
QUERY_AT = ("prefill", "chunk", "decode")  # eval.runner.QUERY_AT (checked by EvalConfig)

# The options that become EvalConfig fields (None: the field's default).
CONFIG_FIELDS = ("tasks", "contexts", "methods", "budgets", "query_at", "samples",
                 "fraction", "seed", "style", "out_dir", "run_name", "model_folder", "device")


def _shard(text: str) -> tuple[int, int]:
    index, sep, count = text.partition("/")
    try:
        if not sep:
            raise ValueError
        return int(index), int(count)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--shard takes I/N, e.g. 0/4, got {text!r}") from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The eval command's options."""
    parser.description = __doc__.splitlines()[0].split(": ", 1)[1]
    add = parser.add_argument
    add("--task", dest="tasks", type=comma_list(str), default=None,
        help="passkey,needle,kv-retrieval,ppl (default: all four)")
    add("--context", dest="contexts", type=comma_list(int), default=None,
        help="prompt lengths in tokens, e.g. 1024,2048,4096 (default: 1024)")
    add("--method", dest="methods", type=comma_list(str), default=None,
        help=f"{','.join((FULL, MPCACHE, *BASELINE_NAMES))} and the MPCache ablations "
             f"{', '.join('mpcache:' + a for a in MPCACHE_ABLATIONS)} (default: all 7)")
    add("--budget", dest="budgets", type=comma_list(ratio), default=None,
        help="fractions of the prompt attended per decode step (default: 0.05,0.1,0.2)")
    add("--query-at", dest="query_at", type=comma_list(str), default=None,
        help=f"{','.join(QUERY_AT)}, comma-separated: question inside the prompt, fed "
             "after prefill as one chunk, or fed token by token after prefill (default: "
             "prefill,chunk)")
    add("--samples", type=positive_int, default=None,
        help="samples per task and context (default: 2)")
    add("--fraction", type=float, default=None,
        help="run only this fraction of the samples (quick look)")
    add("--seed", type=int, default=None)
    add("--style", default=None, help="prompt style: chat (default) or plain")
    add("--out-dir", default=None,
        help="where run folders go (default: runs/, ignored by git)")
    add("--run-name", default=None, help="run folder name; an existing one is resumed")
    add("--json", dest="json_path", default="", help="write the result JSON here too")
    add("--plot", dest="plot_path", default="",
        help="PNG base path: one file per task, e.g. out.png -> out-passkey.png")
    add("--markdown", dest="markdown_path", default="", help="write the results table here")
    add("--notes", dest="notes_path", default="",
        help="markdown file inserted near the top of --markdown (hand-written findings)")
    add("--report-only", nargs="+", default=None, metavar="JSON",
        help="skip running; build --markdown/--plot from these result JSONs or run folders")
    add("--model-folder", default=None,
        help="a local transformers checkpoint folder (default: the embedded SmolLM2)")
    add("--device", default=None,
        help="cpu (default), cuda or auto (cuda when a GPU is visible)")
    add("--shard", default="0/1", type=_shard,
        help="I/N: run every N-th unit starting at I, for N processes sharing one run "
             "folder (each writes predictions-I-of-N.jsonl; reports read them all)")
    add("--workers", type=positive_int, default=1,
        help="split the run over this many processes (one --shard each) sharing the run "
             "folder: use the cores, or keep a GPU busy (default: 1)")
    add("--no-progress", action="store_true", help="hide the progress bar")


def config_options(args: argparse.Namespace) -> dict[str, Any]:
    """The EvalConfig fields the command line sets (the others keep their defaults)."""
    given = {name: getattr(args, name) for name in CONFIG_FIELDS
             if getattr(args, name) is not None}
    given["shard_index"], given["shard_count"] = args.shard
    return given


def check_methods(names: tuple[str, ...]) -> None:
    """Every name is known and its knobs parse (before any model loads)."""
    bad = [m for m in names if not is_known(m)]
    if bad:
        raise CLIError(f"unknown method(s) {bad}; choose from {', '.join(known_methods())}"
                       " (an MPCache variant may add knobs: mpcache+field=value)")
    for name in names:
        if OVERRIDE_SEPARATOR in name:
            variant_overrides(name)


def command_line() -> str:
    """How this run was started, for the markdown report."""
    argv = sys.argv[sys.argv.index("eval") + 1:] if "eval" in sys.argv else sys.argv[1:]
    return "crypten-mpcache eval " + " ".join(shlex.quote(a) for a in argv)


def run(args: argparse.Namespace) -> int:
    """Validate the options, then run the evaluation (or rebuild its report)."""
    # Late: the eval runner loads transformers' models and the plaintext engine (seconds),
    # which `--help` and the other commands do not need.
    from crypten_mpcache.eval import command
    from crypten_mpcache.eval.runner import EvalConfig

    outputs = command.Outputs(args.json_path, args.plot_path, args.markdown_path,
                              args.notes_path)
    if args.report_only:
        return command.report_only(args.report_only, outputs, command_line())
    cfg = EvalConfig(**config_options(args))
    check_methods(cfg.methods)
    if args.workers > 1 and cfg.shard_count > 1:
        raise CLIError("--workers and --shard exclude each other")
    return command.run_command(cfg, outputs, command_line(), workers=args.workers,
                               progress=not args.no_progress)
