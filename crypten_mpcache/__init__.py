"""crypten_mpcache: private LLM inference under MPC (CrypTen) with MPCache eviction.

Importing the package installs the CrypTen compatibility fixes
(``crypten_mpcache.patches.crypten_compat``), the only global change it makes: CrypTen
cannot be imported on torch 2.x without them. Everything else that hooks CrypTen (the
masked comparison, the dealer requests, the dealer-traffic tally) is installed by the
launcher inside the party processes only; a model is patched only inside ``patched()``.

The names below load their module on first use: the plaintext and private paths import
transformers, which a party process or a ``bench`` run does not need.
"""

from __future__ import annotations

import importlib
from typing import Any

from crypten_mpcache.patches import crypten_compat as _crypten_compat

_crypten_compat.install_all()

__version__ = "0.1.0"

_LAZY = {
    # private generation, end to end
    "private_generate": "crypten_mpcache.private",
    "PrivateGenerationConfig": "crypten_mpcache.private",
    "GenerationResult": "crypten_mpcache.private",
    # KV-cache methods for ordinary (plaintext) models: MPCache and the baselines
    "apply": "crypten_mpcache.plaintext",
    "MPCacheConfig": "crypten_mpcache.config",
    "FullCacheConfig": "crypten_mpcache.algorithm.baselines",
    "StreamingLLMConfig": "crypten_mpcache.algorithm.baselines",
    "SnapKVConfig": "crypten_mpcache.algorithm.baselines",
    "H2OConfig": "crypten_mpcache.algorithm.baselines",
    "QuestConfig": "crypten_mpcache.algorithm.baselines",
    "InfLLMConfig": "crypten_mpcache.algorithm.baselines",
    # a secure model of your own, run as MPC parties
    "patched": "crypten_mpcache.patches.transformers_llama",
    "SecureModelOptions": "crypten_mpcache.models.llama",
    "secure_forward": "crypten_mpcache.models.llama",
    "launch": "crypten_mpcache.runtime.launcher",
    "run_as_party": "crypten_mpcache.runtime.launcher",
    "LaunchConfig": "crypten_mpcache.runtime.launcher",
    "PartyError": "crypten_mpcache.runtime.launcher",
    # what it costs
    "CostMeter": "crypten_mpcache.runtime.cost",
    "operator_scope": "crypten_mpcache.runtime.cost",
    "combine": "crypten_mpcache.runtime.cost",
    "format_cost": "crypten_mpcache.runtime.report",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'crypten_mpcache' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
