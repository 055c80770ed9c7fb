"""Every decryption of a secret, in one place.

Why: the threat model says what may be opened (the generated tokens, to the client) and
nothing else. Keeping each reveal a named function here, registered in ``REVEALS`` and
counted by a ``RevealLedger``, lets a test assert that a whole private generation opened
exactly the named secrets, so a stray ``get_plain_text`` elsewhere is caught.

    with RevealLedger() as ledger:
        token = reveal_generated_token(onehot, to=1)
    ledger.counts  # {"reveal_generated_token": 1}

(The masked openings inside CrypTen's protocols, Beaver triples and premasked operands
reveal uniformly random values, not secrets; they are not listed here.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from crypten_mpcache.runtime.cost import operator_scope

REVEALS: dict[str, str] = {
    "reveal_generated_token": "the index of a generated token, to the client only",
    "debug_reveal_logits": "the next-token logits, to the client; only with --check",
    "debug_reveal_selection": "which tokens / clusters a cache policy kept, to every party; "
                              "test-only debug mode of the mpcache policy",
}


@dataclass
class RevealLedger:
    """Counts the reveals made in one party while it is active (a context manager)."""

    counts: dict[str, int] = field(default_factory=dict)
    elements: dict[str, int] = field(default_factory=dict)
    _active: ClassVar[RevealLedger | None] = None
    _previous: RevealLedger | None = None

    def __enter__(self) -> RevealLedger:
        self._previous, RevealLedger._active = RevealLedger._active, self
        return self

    def __exit__(self, *exc: Any) -> None:
        RevealLedger._active = self._previous
        self._previous = None

    def record(self, name: str, numel: int) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1
        self.elements[name] = self.elements.get(name, 0) + int(numel)

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {"counts": dict(self.counts), "elements": dict(self.elements)}


def registered_reveals() -> tuple[str, ...]:
    """The names of every function allowed to decrypt a secret."""
    return tuple(REVEALS)


def _record(name: str, secret: Any) -> None:
    if name not in REVEALS:  # a reveal that is not declared above is a bug
        raise KeyError(f"undeclared reveal {name!r}; declared: {tuple(REVEALS)}")
    ledger = RevealLedger._active
    if ledger is not None:
        ledger.record(name, secret.numel())


def _open(secret: Any, to: int | None) -> torch.Tensor | None:
    with operator_scope("reveal"):
        return secret.get_plain_text(dst=to)


def reveal_generated_token(onehot: Any, to: int = 1) -> int | None:
    """Open the index of an encrypted one-hot token (last dim = vocabulary) to party ``to``.

    The index is computed locally as <onehot, arange> so only one number is opened,
    whatever the encoder scale of the one-hot. Returns the token id on ``to``, else None.
    """
    vocab = onehot.shape[-1]
    flat = onehot.reshape(-1, vocab)[-1]
    index = (flat * torch.arange(vocab, dtype=torch.float32)).sum()
    _record("reveal_generated_token", index)
    plain = _open(index, to)
    if plain is None:
        return None
    return int(torch.round(plain.float()).item())


def debug_reveal_logits(logits: Any, to: int = 1) -> torch.Tensor | None:
    """Open the logits of the last position to party ``to`` (accuracy checks only)."""
    last = logits.reshape(-1, logits.shape[-1])[-1]
    _record("debug_reveal_logits", last)
    return _open(last, to)


def debug_reveal_selection(onehot: Any, to: int | None = None) -> torch.Tensor | None:
    """Open a secret selection one-hot (TEST ONLY: it leaks which tokens were kept)."""
    _record("debug_reveal_selection", onehot)
    return _open(onehot, to)


def reveal_functions() -> dict[str, Callable[..., Any]]:
    """Name -> function, for tests that check every declared reveal exists."""
    return {"reveal_generated_token": reveal_generated_token,
            "debug_reveal_logits": debug_reveal_logits,
            "debug_reveal_selection": debug_reveal_selection}
