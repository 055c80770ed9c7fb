"""Run ``crypten-mpcache bench`` with extra MPCache config variants (selection scope and
one-level selection) until the bench registers them as ablations itself.

Why a script: the bench's variant table (``crypten_mpcache.bench.variants.ABLATIONS``)
belongs to the bench; here the extra rows are added to it in this process only, before
the parties are forked, so every party resolves them. Usage: the bench's own arguments,
e.g. ``python results/bench/bench_scopes.py --shape llama2-7b --layers 1 --context 2048
--cache full,mpcache,mpcache:layer-scope,mpcache:layer-scope-one-level --budget 0.05
--dealer ttp --steps 1 --json ... --markdown ...``.
"""

from __future__ import annotations

import sys

import crypten_mpcache  # noqa: F401  (CrypTen patches first)
from crypten_mpcache.bench import variants
from crypten_mpcache.bench.cli import main

EXTRA = {
    "mpcache:layer-scope": ({"selection_scope": "layer"},
                            "one selection per layer (scores summed over KV heads)"),
    "mpcache:layer-scope-one-level": ({"selection_scope": "layer", "hierarchy": False},
                                      "one selection per layer, one level of 16-token "
                                      "clusters"),
}

if __name__ == "__main__":
    variants.ABLATIONS.update(EXTRA)
    sys.exit(main(sys.argv[1:]))
