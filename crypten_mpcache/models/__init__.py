"""CrypTen-aware model families and the registry of supported architectures.

One place lists what can run privately: an architecture name (``config.architectures``
/ the model class name) has a family module here (``models.<family>``) and a patch that
hooks it into the Hugging Face instance (``patches.transformers_<family>``). Qwen2 shares
the Llama family's adapter (``models.llama``, ``patches.transformers_llama``): its only
structural difference, the q/k/v biases, is an optional bias of ``SecureLinear``.
"""

from __future__ import annotations

ARCHITECTURES: tuple[str, ...] = ("LlamaForCausalLM", "Qwen2ForCausalLM")


class UnsupportedArchitectureError(ValueError):
    """The model's architecture has no CrypTen adapter; the message lists those that do."""


def supported_architectures() -> tuple[str, ...]:
    """Architecture names that private generation supports, LlamaForCausalLM first."""
    return ARCHITECTURES


def check_architecture(name: str) -> str:
    """``name`` if supported, else an error naming the supported architectures."""
    if name not in supported_architectures():
        raise UnsupportedArchitectureError(
            f"architecture {name!r} is not supported for private inference; "
            f"supported: {', '.join(supported_architectures())}")
    return name
