"""crypten_mpcache: private LLM inference under MPC (CrypTen) with MPCache eviction.

Importing the package applies the CrypTen compatibility patches (see
``crypten_mpcache.patches.crypten_compat``) so that ``import crypten`` works on torch 2.x
without deprecation noise, and teaches CrypTen's trusted dealer the premasking requests
(``crypten_mpcache.patches.crypten_dealer``). The heavy parts (transformers, the secure
model) load lazily on first use of the names below.
"""

from __future__ import annotations

import importlib
from typing import Any

from crypten_mpcache.patches import crypten_compat as _crypten_compat
from crypten_mpcache.patches import crypten_dealer as _crypten_dealer

_crypten_compat.apply_all()
_crypten_dealer.apply()  # premasking requests on CrypTen's trusted dealer (TTPServer)

__version__ = "0.1.0"

_LAZY = {
    "private_generate": "crypten_mpcache.private",
    "PrivateGenerationConfig": "crypten_mpcache.private",
    "GenerationResult": "crypten_mpcache.private",
    "MPCacheConfig": "crypten_mpcache.config",
    "apply": "crypten_mpcache.plaintext",
    "launch": "crypten_mpcache.runtime.launcher",
    "LaunchConfig": "crypten_mpcache.runtime.launcher",
    "run_party": "crypten_mpcache.runtime.launcher",
    "CostMeter": "crypten_mpcache.runtime.cost",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'crypten_mpcache' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
