"""The `crypten-mpcache bench` runs behind the tables of results/bench/README.md.

Two sets, each a list of `crypten-mpcache bench` commands run one after the other (one
bench process tree at a time: a Llama-7B/8B-shaped layer peaks at ~11-14 GB over the two
parties and the dealer, so two at once do not fit a 24 GB machine):

- ``pairs TAG``: full cache vs the default ``mpcache``, budget 5%, TTP dealer, averaged
  over whole cluster cycles (16 decode steps; 8 at 4096 and for Llama-3-8B / SmolLM2),
  Llama-2-7B shape at 512-4096 tokens, Llama-3-8B and SmolLM2 (8 layers) at 2048, plus
  the Llama-2-7B 2048 pair with the TFP dealer. Writes ``<run>-TAG.json`` / ``.md``. The
  TAG names the code state measured (the README's tables use ``masked``,
  ``silu-lookup`` and ``norm-lookup``).
- ``variants``: one decode step of every cache variant (``full``, ``mpcache``,
  ``mpcache:paper``, ``mpcache:layer-scope-one-level``) at 512-4096 tokens (Llama-2-7B,
  with a plot), Llama-3-8B and SmolLM2 at 2048, the authors'-configuration ablations at
  2048, and a 3-step run of the default (its first step is its cheapest: see the README).

Outputs go to ``--out-dir`` (default ``runs/bench``, ignored by git); pass
``--out-dir results/bench`` to replace the committed files. ``--dry-run`` prints the
commands only. Ratios of the resulting JSONs: ``python benchmarks/bench_ratios.py``.

    OMP_NUM_THREADS=1 python benchmarks/bench_tables.py pairs norm-lookup
    python benchmarks/bench_tables.py variants --dry-run
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

# (run name, bench arguments) of the ``pairs`` set; the tag is appended to the name.
PAIRS: list[tuple[str, list[str]]] = [
    ("llama2-7b-2048-16steps", ["--shape", "llama2-7b", "--layers", "1", "--context", "2048",
                                "--dealer", "ttp", "--steps", "16"]),
    ("llama2-7b-4096-8steps", ["--shape", "llama2-7b", "--layers", "1", "--context", "4096",
                               "--dealer", "ttp", "--steps", "8"]),
    ("llama2-7b-512-1024-16steps", ["--shape", "llama2-7b", "--layers", "1", "--context",
                                    "512,1024", "--dealer", "ttp", "--steps", "16"]),
    ("llama3-8b-2048-8steps", ["--shape", "llama3-8b", "--layers", "1", "--context", "2048",
                               "--dealer", "ttp", "--steps", "8"]),
    ("smollm2-2048-8steps", ["--shape", "smollm2", "--layers", "8", "--context", "2048",
                             "--dealer", "ttp", "--steps", "8"]),
]
PAIRS_TFP = ("llama2-7b-2048-16steps", ["--shape", "llama2-7b", "--layers", "1", "--context",
                                        "2048", "--dealer", "tfp", "--steps", "16"])

VARIANT_CACHES = "full,mpcache,mpcache:paper,mpcache:layer-scope-one-level"
ABLATION_CACHES = ("full,mpcache:paper,mpcache:no-dynamic,mpcache:no-static,"
                   "mpcache:maxbound,mpcache:no-hierarchy")
ONE_STEP = ["--budget", "0.05", "--dealer", "ttp", "--steps", "1"]


def _outputs(out: Path, name: str, plot: bool = False) -> list[str]:
    args = ["--json", str(out / f"{name}.json"), "--markdown", str(out / f"{name}.md")]
    return args + (["--plot", str(out / f"{name}.png")] if plot else [])


def pairs(tag: str, out: Path) -> list[list[str]]:
    """Full vs default MPCache over whole cluster cycles, one command per shape/context."""
    common = ["--quiet", "--budget", "0.05", "--cache", "full,mpcache"]
    runs = [(f"{name}-{tag}", args) for name, args in PAIRS]
    runs.append((f"{PAIRS_TFP[0]}-{tag}-tfp", PAIRS_TFP[1]))
    return [common + args + _outputs(out, name) for name, args in runs]


def variants(out: Path) -> list[list[str]]:
    """One step of every variant; the ablations; the default over 3 steps."""
    llama2 = ["--shape", "llama2-7b", "--layers", "1"]
    return [
        llama2 + ["--context", "512,1024,2048,4096", "--cache", VARIANT_CACHES] + ONE_STEP
        + _outputs(out, "llama2-7b", plot=True),
        ["--shape", "llama3-8b", "--layers", "1", "--context", "2048", "--cache",
         VARIANT_CACHES] + ONE_STEP + _outputs(out, "llama3-8b-2048"),
        ["--shape", "smollm2", "--layers", "8", "--context", "2048", "--cache",
         "full,mpcache,mpcache:paper"] + ONE_STEP + _outputs(out, "smollm2-2048"),
        ["--report-only", str(out / "smollm2-2048.json"), "--plot",
         str(out / "smollm2-2048.png")],
        llama2 + ["--context", "2048", "--cache", ABLATION_CACHES] + ONE_STEP
        + _outputs(out, "llama2-7b-ablations-2048"),
        llama2 + ["--context", "2048", "--cache", "mpcache", "--budget", "0.05", "--dealer",
                  "ttp", "--steps", "3"] + _outputs(out, "llama2-7b-2048-mpcache-3steps"),
    ]


def _bench_command() -> list[str]:
    found = shutil.which("crypten-mpcache") or str(Path(sys.executable).parent
                                                  / "crypten-mpcache")
    return [found, "bench"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("set", choices=("pairs", "variants"))
    parser.add_argument("tag", nargs="?", default="",
                        help="pairs only: suffix of the output names, e.g. norm-lookup")
    parser.add_argument("--out-dir", type=Path, default=Path("runs/bench"))
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    if args.set == "pairs" and not args.tag:
        parser.error("pairs needs a TAG (the suffix of the output names)")
    if args.set == "variants" and args.tag:
        parser.error("variants takes no TAG")
    commands = pairs(args.tag, args.out_dir) if args.set == "pairs" else variants(args.out_dir)
    bench = _bench_command()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if not args.dry_run:
        args.out_dir.mkdir(parents=True, exist_ok=True)
    for command in commands:
        print("crypten-mpcache bench " + shlex.join(command), flush=True)
        if not args.dry_run:
            subprocess.run(bench + command, check=True, env=env)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
