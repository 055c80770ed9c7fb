"""Selection fidelity on the real SmolLM2: MPC selections vs plaintext MPCache, same tokens.

Builds a real prompt (a passkey sample: Paul Graham essays with a pass key, the question
at the end, SmolLM2's chat template) of ``--tokens`` tokens, runs private generation with
MPCache under CrypTen in the DEBUG mode that reveals every selection, runs the plaintext
MPCache (``crypten_mpcache.apply``) fed with the private tokens, and compares the records
of every (phase, step, layer): kept prompt positions, attended counts, selected clusters.
Near-ties (two clusters within fixed-point noise) may legitimately flip; the report says
how many records agree and how much the selected cluster sets overlap.

    python benchmarks/selection_fidelity.py --tokens 256 --steps 3 --budget 0.2 \
        --json results/selection_fidelity.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

import crypten_mpcache  # noqa: F401  (CrypTen compatibility patches before crypten)
from crypten_mpcache.assets import essay_texts, smollm2_folder
from crypten_mpcache.config import mpcache_variants
from crypten_mpcache.fidelity import compare_selections, secure_records
from crypten_mpcache.methods import resolve_method
from crypten_mpcache.plaintext import generate_fed
from crypten_mpcache.runtime.launcher import DEALERS, LaunchConfig


def real_prompt(tokenizer, tokens: int, seed: int) -> list[int]:
    """A passkey prompt of ``tokens`` tokens (context + question) from the real essays."""
    from crypten_mpcache.eval.tasks import Haystack, TaskConfig, build_passkey

    sample = build_passkey(0, Haystack(tokenizer, essay_texts()), TaskConfig(), tokens,
                           random.Random(f"{seed}:fidelity:{tokens}"))
    return list(sample.context_ids) + list(sample.query_ids)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=256, help="prompt tokens (>= 64)")
    parser.add_argument("--steps", type=int, default=3, help="generated tokens (>= 2)")
    parser.add_argument("--budget", type=float, default=0.2,
                        help="tokens attended per decode step, a fraction of the context")
    parser.add_argument("--variant", default="mpcache", choices=list(mpcache_variants()),
                        help="MPCache configuration (same names as bench and eval)")
    parser.add_argument("--dealer", default="tfp", choices=DEALERS,
                        help="tfp is fine here: selections do not depend on the dealer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=7200.0, help="seconds for the MPC run")
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args(argv)
    if args.tokens < 64 or args.steps < 2 or not 0 < args.budget <= 1:
        parser.error("need --tokens >= 64, --steps >= 2 and --budget in (0, 1]")

    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_folder()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    ids = real_prompt(tokenizer, args.tokens, args.seed)
    config = resolve_method(args.variant, args.budget)
    print(f"prompt {len(ids)} tokens, {args.steps} steps, {args.variant} at budget "
          f"{args.budget}, dealer {args.dealer}", flush=True)

    start = time.perf_counter()
    launch_config = LaunchConfig(parties=2, dealer=args.dealer, timeout_s=args.timeout)
    client = secure_records(folder, ids, args.steps, config, launch_config)
    seconds = time.perf_counter() - start
    tokens = [int(t) for t in client["tokens"]]
    if args.json:  # keep the expensive MPC records whatever happens next
        args.json.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"tokens": tokens, "selections": client["selections"], "ids": ids},
                   args.json.with_suffix(".records.pt"))

    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    greedy, _, plain = generate_fed(model, config, ids, len(tokens), feed=tokens, record=True)
    report = compare_selections(client["selections"], plain)
    result = {
        "model": "SmolLM2-135M-Instruct", "prompt_tokens": len(ids), "steps": args.steps,
        "variant": args.variant, "budget": args.budget, "dealer": args.dealer,
        "seed": args.seed, "secure_tokens": tokens, "plaintext_tokens": greedy,
        "tokens_match": tokens == greedy, "mpc_seconds": round(seconds, 1),
        "debug_reveals": client["reveals"]["counts"].get("debug_reveal_selection", 0),
        **report.as_dict(),
        "command": "python benchmarks/selection_fidelity.py " + " ".join(sys.argv[1:]),
    }
    print(f"records equal: {report.equal}/{report.records}; mean cluster overlap "
          f"{report.overlap:.3f}; tokens match: {tokens == greedy} "
          f"({tokens} vs {greedy}); MPC {seconds:.0f} s")
    for where, what in report.mismatches[:20]:
        print(f"  differs: {what} at {where}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
