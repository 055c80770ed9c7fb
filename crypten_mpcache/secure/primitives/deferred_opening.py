"""A premasked operand's D opened beside its first product instead of in a round of its own.

``FixedOperand.create_many(..., deferred=True)`` masks the values at once (the dealer
registers the masks) but keeps the opening of D = value - mask as a ``DeferredOpening``:
the first product with any of the operands, or with a view or concatenation of them,
takes it and opens it in the same round as its own eps = x - A (the opening finishes
first: a product reads D only in its finish). A step's new K and V rows thus open with
the attention's q K^T, a step's selection one-hots with the pick.

Until the opening, D holds zeros: ``FixedOperand.value`` opens it alone first, a
concatenation registers where its copy of D goes (``copy_to``), and a product finished
before the opening is refused. Opened words and their order per party are those of the
separate opening: only the round is shared.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from crypten_mpcache.secure.primitives.openings import Pending, charged


@dataclass(eq=False)
class DeferredOpening:
    """D's opening for the operands created together; ``pending`` until one takes it."""

    pending: Pending[None] | None = None
    done: bool = False
    copies: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    @classmethod
    def of(cls, d_views: list[torch.Tensor], masked: list[torch.Tensor]) -> DeferredOpening:
        """The opening of the ``masked`` shares (value - mask) into the ``d_views`` (the
        operands' D, zeros until then): its words charged to "premask", the round it
        shares to the product's operator."""
        opening = cls()

        def finish(opened: torch.Tensor) -> None:
            for d, part in zip(d_views, opened.split([m.numel() for m in masked]),
                               strict=True):
                d.copy_(part.reshape(d.shape))
            for target, source in opening.copies:
                target.copy_(source)
            opening.copies.clear()      # keep no views of buffers a later cat replaces
            opening.done = True

        flat = torch.cat([m.reshape(-1) for m in masked])
        opening.pending = charged(Pending(flat, finish), "premask", leads=False)
        return opening

    def take(self) -> Pending[None] | None:
        """The opening to run, once (None when taken already)."""
        pending, self.pending = self.pending, None
        return pending

    def copy_to(self, target: torch.Tensor, source: torch.Tensor) -> None:
        """After the opening, copy ``source`` (a view of an operand's D) to ``target`` (its
        place in a concatenation made before the opening)."""
        self.copies.append((target, source))


def still_pending(openings: tuple[DeferredOpening, ...]) -> tuple[DeferredOpening, ...]:
    return tuple(o for o in openings if not o.done)


__all__ = ["DeferredOpening", "still_pending"]
