"""Plaintext accuracy (``crypten-mpcache eval``) of the MPCache selection-scope options
that ``bench_scopes.py`` measures under MPC, until the eval registers them itself.

The eval's ablation table (``crypten_mpcache.eval.methods.ABLATIONS``) is extended in
this process only. Usage: the eval's own arguments, e.g. ``python
results/bench/eval_scopes.py --task passkey,needle --context 1024 --method
full,mpcache,mpcache:layer-scope,mpcache:layer-scope-one-level --budget 0.05 ...``.
"""

from __future__ import annotations

import sys

import crypten_mpcache  # noqa: F401
from crypten_mpcache.cli import main
from crypten_mpcache.eval import methods

EXTRA = {
    "layer-scope": {"selection_scope": "layer"},
    "layer-scope-one-level": {"selection_scope": "layer", "hierarchy": False},
}

if __name__ == "__main__":
    methods.ABLATIONS.update(EXTRA)
    sys.exit(main(["eval", *sys.argv[1:]]))
