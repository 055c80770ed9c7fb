"""Independent openings in ONE round: a comparison's masked input beside a table's index.

A protocol whose online part starts by opening a masked value (the DCF and masked
comparisons open x + r, the dealt one-hot opens v + r) can be split into that value and
what follows it. ``open_together`` opens the values of several such protocols as one
tensor, so two protocols that do not depend on each other share their first round (the
SiLU's gates and its table index). The opened words are those of the separate openings.

Protocols of several rounds are chains of stages: a ``finish`` may return the next
``Pending`` (``then`` builds such chains), and ``run_together`` runs several chains in
lockstep, one opening per round for all of them (the values product of attention
beside the softmax reciprocal's table reads).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch

from crypten_mpcache.runtime.cost import operator_scope, shared_opening
from crypten_mpcache.secure.primitives.party import open_sum

T = TypeVar("T")


@dataclass(frozen=True)
class Charge:
    """Part of an opening: ``elements`` words charged to ``kind`` (None: the operator that
    runs the opening); the round goes to the first part that ``leads`` (else the first)."""

    kind: str | None
    elements: int
    leads: bool = True


@dataclass
class Pending(Generic[T]):
    """This party's share of a masked value to open (flat, uniform once masked) and what
    the protocol does with the opened value. ``masked`` may be empty (a protocol without
    a first opening runs entirely in ``finish``)."""

    masked: torch.Tensor
    finish: Callable[[torch.Tensor], T]
    charges: tuple[Charge, ...] = ()  # see charged

    @property
    def parts(self) -> tuple[Charge, ...]:
        """Who the opened elements are charged to, in order (None: the running scope)."""
        return self.charges or (Charge(None, self.masked.numel()),)


def together(*pending: Pending[Any]) -> Pending[list[Any]]:
    """Several protocols' first openings as one stage (one opened tensor)."""
    sizes = [p.masked.numel() for p in pending]
    flat = torch.cat([p.masked.reshape(-1) for p in pending])

    def finish(opened: torch.Tensor) -> list[Any]:
        return [p.finish(c) for p, c in zip(pending, opened.split(sizes), strict=True)]

    return Pending(flat, finish, tuple(part for p in pending for part in p.parts))


def charged(pending: Pending[T], kind: str, leads: bool = True) -> Pending[T]:
    """``pending`` (and every later stage of its chain) on ``kind``'s account: its opened
    elements' bytes (``cost.shared_opening``) and whatever its ``finish`` runs, whichever
    operator runs the opening. ``leads=False``: a shared round is not counted as
    ``kind``'s (an opening that rides along with another's, e.g. a deferred premask)."""
    def finish(opened: torch.Tensor) -> T:
        with operator_scope(kind):
            out = pending.finish(opened)
        return charged(out, kind, leads) if isinstance(out, Pending) else out

    return Pending(pending.masked, finish, (Charge(kind, pending.masked.numel(), leads),))


def open_together(*pending: Pending[Any]) -> list[Any]:
    """Open every pending value in one round, then finish each protocol in order."""
    stage = together(*pending)
    if not stage.masked.numel():
        return stage.finish(stage.masked)
    with shared_opening([(c.kind, c.elements, c.leads) for c in stage.parts]):
        opened = open_sum(stage.masked)
    return stage.finish(opened)


def run_together(*pending: Pending[Any]) -> list[Any]:
    """Run chains of stages in lockstep: each round opens the current stage of every
    unfinished chain at once; a stage whose ``finish`` returns a ``Pending`` continues in
    the next round. As many rounds as the longest chain has stages that open something."""
    current: list[Any] = list(pending)
    while live := [i for i, p in enumerate(current) if isinstance(p, Pending)]:
        done = open_together(*(current[i] for i in live))
        for i, value in zip(live, done, strict=True):
            current[i] = value
    return current


def then(first: Pending[Any], step: Callable[[Any], Any]) -> Pending[Any]:
    """``first`` (a whole chain: ``step`` waits for its last stage), then ``step`` on its
    result (``step`` may return the next stage). A stage that opens nothing is finished
    at once, so it costs no round of its own."""
    if first.masked.numel() == 0:
        done = first.finish(first.masked)
        if isinstance(done, Pending):
            return then(done, step)
        following = step(done)
        return following if isinstance(following, Pending) else ready(following)

    def finish(opened: torch.Tensor) -> Any:
        done = first.finish(opened)
        return then(done, step) if isinstance(done, Pending) else step(done)

    return Pending(first.masked, finish, first.charges)


def ready(value: T) -> Pending[T]:
    """A stage that opens nothing and is already done (a local step in a chain)."""
    return Pending(torch.zeros(0, dtype=torch.long), lambda _: value)


def open_alone(pending: Pending[T]) -> T:
    """One protocol: one round per stage of its chain (one for a single opening)."""
    return run_together(pending)[0]


def nothing_to_open(run: Callable[[], T]) -> Pending[T]:
    """A protocol that opens nothing first (it runs whole after the others' opening)."""
    return Pending(torch.zeros(0, dtype=torch.long), lambda _: run())


__all__ = ["Charge", "Pending", "charged", "nothing_to_open", "open_alone", "open_together",
           "ready", "run_together", "then", "together"]
