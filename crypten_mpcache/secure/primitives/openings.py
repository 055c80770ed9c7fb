"""Independent openings in ONE round: a comparison's masked input beside a table's index.

A protocol whose online part starts by opening a masked value (the DCF and masked
comparisons open x + r, the dealt one-hot opens v + r) can be split into that value and
what follows it. ``open_together`` opens the values of several such protocols as one
tensor, so two protocols that do not depend on each other share their first round (the
SiLU's gates and its table index). The opened words are those of the separate openings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch

from crypten_mpcache.secure.primitives.party import open_sum

T = TypeVar("T")


@dataclass
class Pending(Generic[T]):
    """This party's share of a masked value to open (flat, uniform once masked) and what
    the protocol does with the opened value. ``masked`` may be empty (a protocol without
    a first opening runs entirely in ``finish``)."""

    masked: torch.Tensor
    finish: Callable[[torch.Tensor], T]


def open_together(*pending: Pending[Any]) -> list[Any]:
    """Open every pending value in one round, then finish each protocol in order."""
    sizes = [p.masked.numel() for p in pending]
    flat = torch.cat([p.masked.reshape(-1) for p in pending])
    opened = open_sum(flat).split(sizes) if flat.numel() else [flat[:0] for _ in pending]
    return [p.finish(c) for p, c in zip(pending, opened, strict=True)]


def open_alone(pending: Pending[T]) -> T:
    """One protocol's opening (one round) and what follows it."""
    return pending.finish(open_sum(pending.masked))


def nothing_to_open(run: Callable[[], T]) -> Pending[T]:
    """A protocol that opens nothing first (it runs whole after the others' opening)."""
    return Pending(torch.zeros(0, dtype=torch.long), lambda _: run())


__all__ = ["Pending", "nothing_to_open", "open_alone", "open_together"]
