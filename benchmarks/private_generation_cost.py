"""What private generation with the embedded SmolLM2 costs, with and without premasking.

Runs real private generation (all 30 layers, vocabulary 49,152) on real essay text cut to
exact prompt lengths, and reports bytes (summed over parties), rounds and seconds (max
over parties) for the one-time setup, the prefill and the mean decode step. Premasking
on/off is compared in the same run, so the ratio is trustworthy on a noisy machine;
CrypTen's bytes and rounds are exact.

    python benchmarks/private_generation_cost.py --prompt-tokens 32,128 --dealer ttp,tfp \
        --new-tokens 3 --json results/private_generation_cost.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from crypten_mpcache.assets import essay_texts, smollm2_folder
from crypten_mpcache.private import PrivateGenerationConfig, generate_ids
from crypten_mpcache.runtime.report import MIB


def essay_prompt(tokens: int) -> list[int]:
    """The first ``tokens`` token ids of the first essay (real text, exact length)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_folder()))
    ids = tokenizer(essay_texts()[0])["input_ids"]
    return [int(t) for t in ids[:tokens]]


def measure(prompt_tokens: int, dealer: str, premask: bool, new_tokens: int) -> dict:
    config = PrivateGenerationConfig(max_new_tokens=new_tokens, dealer=dealer,
                                     premask=premask, progress=False)
    start = time.perf_counter()
    result = generate_ids(essay_prompt(prompt_tokens), config)
    decode = result.cost["decode"]
    mean = {k: sum(s[k] for s in decode) / len(decode) for k in ("bytes", "rounds", "seconds")}
    return {"prompt_tokens": prompt_tokens, "dealer": dealer, "premask": premask,
            "new_tokens": new_tokens, "setup": result.cost["setup"],
            "prefill": result.cost["prefill"], "decode_mean": mean, "decode": decode,
            "operators": result.cost["operators"], "wall_seconds": time.perf_counter() - start,
            "generated_ids": result.generated_ids}


def _print_row(row: dict) -> None:
    d, p = row["decode_mean"], row["prefill"]
    print(f"{row['prompt_tokens']:>6} {row['dealer']:>5} {str(row['premask']):>7} "
          f"{p['bytes'] / MIB:>12.1f} {p['rounds']:>7} {p['seconds']:>8.1f} "
          f"{d['bytes'] / MIB:>12.1f} {d['rounds']:>7.0f} {d['seconds']:>8.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt-tokens", default="32,128")
    parser.add_argument("--dealer", default="ttp,tfp")
    parser.add_argument("--new-tokens", type=int, default=3,
                        help="generated tokens (decode steps = new tokens - 1)")
    parser.add_argument("--json", default="results/private_generation_cost.json")
    args = parser.parse_args()
    if args.new_tokens < 2:
        parser.error("--new-tokens must be >= 2 (the first token comes from the prefill)")
    rows = []
    print(f"{'prompt':>6} {'dealer':>5} {'premask':>7} {'prefill MiB':>12} {'rounds':>7} "
          f"{'s':>8} {'decode MiB':>12} {'rounds':>7} {'s':>8}")
    for tokens in [int(t) for t in args.prompt_tokens.split(",")]:
        for dealer in args.dealer.split(","):
            for premask in (True, False):
                rows.append(measure(tokens, dealer, premask, args.new_tokens))
                _print_row(rows[-1])
    ratios = []
    for on in (r for r in rows if r["premask"]):
        off = next(r for r in rows if not r["premask"] and r["dealer"] == on["dealer"]
                   and r["prompt_tokens"] == on["prompt_tokens"])
        ratio = off["decode_mean"]["bytes"] / on["decode_mean"]["bytes"]
        ratios.append({"prompt_tokens": on["prompt_tokens"], "dealer": on["dealer"],
                       "decode_bytes_ratio_without_over_with_premask": ratio})
        print(f"decode bytes without/with premasking, {on['prompt_tokens']} tokens, "
              f"{on['dealer']}: {ratio:.1f}x")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"rows": rows, "ratios": ratios}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
