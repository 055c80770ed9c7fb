"""The ``crypten-mpcache`` command line.

Subcommands: ``generate`` (private generation), ``eval`` (plaintext accuracy of eviction
methods on the embedded model), ``bench`` (MPC cost of a decode step, full vs MPCache).
Bad input ends with one line ``crypten-mpcache: error: ...`` and exit status 2, never a
bare traceback (``--debug`` shows it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

PROG = "crypten-mpcache"


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _budget(text: str) -> float | int:
    """``0.05`` (with a dot) is a fraction of the context; ``128`` is a token count."""
    try:
        return float(text) if "." in text else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction like 0.05 or a token count "
                                         f"like 128, got {text!r}") from None


def _add_generate(sub: argparse._SubParsersAction) -> None:
    from crypten_mpcache.runtime.launcher import COMPARISONS, DEALERS

    p = sub.add_parser("generate", help="private greedy generation under MPC",
                       description="Private greedy generation: party 0 holds the weights, "
                       "party 1 the prompt; only the generated tokens are revealed, "
                       "to party 1.")
    p.add_argument("--prompt", default=None,
                   help="the client's prompt (default: a short built-in question)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=16)
    p.add_argument("--model", default=None, metavar="PATH",
                   help="a local Llama-family checkpoint folder (default: the embedded "
                   "SmolLM2-135M-Instruct)")
    p.add_argument("--parties", type=int, default=2, help="2 or 3 computing parties")
    p.add_argument("--dealer", default="ttp", choices=DEALERS,
                   help="ttp: separate trusted dealer (secure); tfp: party 0 deals "
                   "(tests and cost measurement only)")
    p.add_argument("--comparison", default="masked", choices=COMPARISONS,
                   help="secure comparison protocol: masked (the dealer deals the mask's "
                   "bits; default, ~7x fewer bytes) or crypten (CrypTen's own)")
    p.add_argument("--cache", default="full", metavar="CACHE",
                   help="KV cache: full, or an MPCache variant with the names and "
                   f"configurations of eval and bench ({', '.join(_mpcache_names())}; "
                   "knobs: mpcache+field=value)")
    p.add_argument("--budget", type=_budget, default=None,
                   help="mpcache only: tokens attended per decode step, a fraction of the "
                   "context (0.05) or a count (128); default: no cap, the variant's "
                   "level ratios")
    p.add_argument("--check", action="store_true",
                   help="also run plaintext greedy generation and compare")
    p.add_argument("--no-premask", action="store_true",
                   help="re-open fixed operands at every product (baseline for benchmarks)")
    p.add_argument("--no-chat-template", action="store_true",
                   help="feed the prompt as plain text instead of a chat turn")
    p.add_argument("--json", default=None, metavar="PATH", help="write the result as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_run_generate)


def _mpcache_names() -> tuple[str, ...]:
    from crypten_mpcache.config import mpcache_variants

    return tuple(mpcache_variants())


def _run_generate(args: argparse.Namespace) -> int:
    from crypten_mpcache.private import private_generate
    from crypten_mpcache.runtime.report import format_cost

    if args.json is not None:
        _check_writable(args.json)
    result = private_generate(
        args.prompt, max_new_tokens=args.max_new_tokens, model_path=args.model,
        parties=args.parties, dealer=args.dealer, comparison=args.comparison,
        cache=args.cache, check=args.check,
        premask=not args.no_premask, progress=not args.quiet,
        chat_template=not args.no_chat_template, budget=args.budget)
    print(f"prompt tokens: {result.prompt_tokens}   parties: {result.parties}   "
          f"dealer: {result.dealer}   comparison: {result.comparison}   "
          f"cache: {args.cache}")
    print(f"generated: {result.text!r}")
    if args.check:
        verdict = "MATCH" if result.match else "MISMATCH"
        print(f"plaintext check: {verdict}   max |logit error|: "
              f"{result.max_abs_logit_error:.4f}")
    print()
    print(format_cost(result.cost))
    if args.json is not None:
        Path(args.json).write_text(result.to_json())
        print(f"\nwrote {args.json}")
    return 0 if (not args.check or result.match) else 1


def _add_eval(sub: argparse._SubParsersAction) -> None:
    from crypten_mpcache.eval import cli as eval_cli

    p = sub.add_parser("eval", help="plaintext accuracy vs budget on the embedded model")
    eval_cli.add_arguments(p)
    p.set_defaults(handler=eval_cli.run)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    from crypten_mpcache.bench import cli as bench_cli

    p = sub.add_parser("bench", help="MPC cost of a decode step: full cache vs MPCache",
                       description="Bytes, rounds and seconds of one decode step under MPC "
                       "for Llama-shaped decoders (random weights), side by side.")
    bench_cli.add_arguments(p)
    p.set_defaults(handler=bench_cli.run)


def _check_writable(path: str) -> None:
    parent = Path(path).expanduser().resolve().parent
    if not parent.is_dir():
        raise CLIError(f"cannot write {path}: folder {parent} does not exist")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Private LLM inference under MPC (CrypTen) with MPCache "
        "KV-cache eviction.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


_SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_generate, _add_eval, _add_bench]


def _user_errors() -> tuple[type[BaseException], ...]:
    from crypten_mpcache.assets import AssetError
    from crypten_mpcache.runtime.launcher import PartyError

    return (CLIError, ValueError, FileNotFoundError, AssetError, PartyError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except _user_errors() as error:
        if args.debug:
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
