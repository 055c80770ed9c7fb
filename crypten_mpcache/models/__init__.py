"""CrypTen-aware model families and the registry of supported architectures.

One place lists what can run privately: an architecture name (``config.architectures``
/ the model class name) maps to the module that patches it (``patches.<family>``).
"""

from __future__ import annotations

ARCHITECTURES: tuple[tuple[str, str], ...] = (
    ("LlamaForCausalLM", "crypten_mpcache.patches.transformers_llama"),
)


class UnsupportedArchitectureError(ValueError):
    """The model's architecture has no CrypTen adapter; the message lists those that do."""


def supported_architectures() -> tuple[str, ...]:
    """Architecture names that private generation supports, LlamaForCausalLM first."""
    return tuple(name for name, _ in ARCHITECTURES)


def check_architecture(name: str) -> str:
    """``name`` if supported, else an error naming the supported architectures."""
    if name not in supported_architectures():
        raise UnsupportedArchitectureError(
            f"architecture {name!r} is not supported for private inference; "
            f"supported: {', '.join(supported_architectures())}")
    return name


def adapter_module(name: str) -> str:
    """The module (with ``patch``) that makes architecture ``name`` CrypTen-aware."""
    check_architecture(name)
    return dict(ARCHITECTURES)[name]
