"""``crypten-mpcache generate``: private greedy generation under MPC on this machine."""

from __future__ import annotations

import argparse
from pathlib import Path

from crypten_mpcache.cli.common import budget, check_writable, positive_int
from crypten_mpcache.config import mpcache_variants
from crypten_mpcache.methods import BASELINE_NAMES
from crypten_mpcache.runtime.launcher import COMPARISONS, DEALERS, LaunchConfig
from crypten_mpcache.runtime.offline import DEALINGS
from crypten_mpcache.runtime.report import format_cost

NAME = "generate"
HELP = "private greedy generation under MPC"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The generate command's options."""
    p.description = ("Private greedy generation: party 0 holds the weights, party 1 the "
                     "prompt; only the generated tokens are revealed, to party 1.")
    p.add_argument("--prompt", default=None,
                   help="the client's prompt (default: a short built-in question)")
    p.add_argument("--max-new-tokens", type=positive_int, default=16)
    p.add_argument("--model", default=None, metavar="PATH",
                   help="a local Llama- or Qwen2-family checkpoint folder (default: the embedded "
                   "SmolLM2-135M-Instruct)")
    p.add_argument("--parties", type=int, default=2, help="2 or 3 computing parties")
    p.add_argument("--dealer", default="ttp", choices=DEALERS,
                   help="ttp: separate trusted dealer (secure); tfp: party 0 deals "
                   "(tests and cost measurement only)")
    p.add_argument("--comparison", default="hybrid", choices=COMPARISONS,
                   help="secure comparison protocol: hybrid (default: dcf for calls of at "
                   "most --dcf-max-elements elements, masked above), masked (the dealer "
                   "deals the mask's bits; ~7x fewer bytes than crypten, 8 rounds), dcf "
                   "(one round: dealt DCF keys, 1.5-3 KiB of keys per compared element) or "
                   "crypten "
                   "(CrypTen's own)")
    p.add_argument("--dcf-max-elements", type=positive_int,
                   default=LaunchConfig.dcf_max_elements,
                   help="hybrid only: comparison calls of at most this many elements take "
                   f"DCF keys, larger ones the masked comparison (default "
                   f"{LaunchConfig.dcf_max_elements})")
    p.add_argument("--dealing", default="ahead", choices=DEALINGS,
                   help="ttp only: ahead (default: each phase's material is dealt before "
                   "the phase, so no online round waits on the dealer) or on-demand "
                   "(each piece fetched when needed: three dealer messages per request)")
    p.add_argument("--cache", default="full", metavar="CACHE",
                   help="KV cache: full, an MPCache variant with the names and "
                   f"configurations of eval and bench ({', '.join(mpcache_variants())}; "
                   "knobs: mpcache+field=value), or a baseline of eval "
                   f"({', '.join(BASELINE_NAMES)}; needs --budget; h2o evicts by "
                   "accumulated attention, which the secure cache does not compute)")
    p.add_argument("--budget", type=budget, default=None,
                   help="evicting caches only: tokens attended per decode step, a fraction "
                   "of the context (0.05) or a count (128); default: no cap, the "
                   "variant's level ratios (baselines need one)")
    p.add_argument("--check", action="store_true",
                   help="also run plaintext greedy generation (of the same method) and "
                   "compare")
    p.add_argument("--no-premask", action="store_true",
                   help="re-open fixed operands at every product (baseline for benchmarks)")
    p.add_argument("--no-chat-template", action="store_true",
                   help="feed the prompt as plain text instead of a chat turn")
    p.add_argument("--json", default=None, metavar="PATH", help="write the result as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Generate (the config is validated before any party starts), print the text and
    the cost table; 1 when --check mismatches."""
    # Late: private generation loads transformers and the secure model (seconds), which
    # `--help` and the other commands do not need.
    from crypten_mpcache.private import private_generate

    check_writable(args.json)
    result = private_generate(
        args.prompt, max_new_tokens=args.max_new_tokens, model_path=args.model,
        parties=args.parties, dealer=args.dealer, comparison=args.comparison,
        dealing=args.dealing, cache=args.cache, check=args.check,
        premask=not args.no_premask, progress=not args.quiet,
        chat_template=not args.no_chat_template, budget=args.budget,
        dcf_max_elements=args.dcf_max_elements)
    print(f"prompt tokens: {result.prompt_tokens}   parties: {result.parties}   "
          f"dealer: {result.dealer} (dealing: {result.dealing})   "
          f"comparison: {result.comparison}   "
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
