"""The engine's secret choices as premasked operands, so products open only the other side.

- ``compaction_matrix``: a static choice as one token-level selection ``(keep, L)``, so
  K and V are compacted by ONE product with the premasked cache.
- ``absolute_onehot``: a step's per-level one-hots composed into one one-hot over the
  finest clusters, masked and opened once per step.
- ``selection_operands``: the step's selection as premasked one-hots for
  ``attended.ClusterSelection``: the absolute one-hot, or (at long contexts, where it is
  cheaper) the absolute one-hot of the next-to-last level and the last level's local one.
- ``RepOperands``: the cluster representatives, masked once when their cluster fills,
  so each step's scores open only the summed query.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from crypten_mpcache.algorithm import dynamic
from crypten_mpcache.algorithm.clusters import ClusterState
from crypten_mpcache.algorithm.static import StaticCounts
from crypten_mpcache.secure.primitives.openings import Pending
from crypten_mpcache.secure.primitives.premask import fixed_operands


def compaction_matrix(backend: Any, onehot: Any, counts: StaticCounts) -> Any:
    """Token-level selection ``(B, H', keep, L)``: rows e_i of the sinks, the one-hot of
    the kept middle tokens, rows of the window. Equals ``static.compact(onehot, I_L)``,
    built without a product."""
    length, sink, window = counts.prompt_len, counts.sink, counts.window
    lead = tuple(onehot.shape[:-2])
    eye = torch.eye(length, dtype=torch.float64).expand(*lead, length, length)
    middle = backend.cat([torch.zeros(*lead, counts.n_select, sink, dtype=torch.float64),
                          onehot,
                          torch.zeros(*lead, counts.n_select, window, dtype=torch.float64)],
                         dim=-1)
    return backend.cat([eye[..., :sink, :], middle, eye[..., length - window:, :]], dim=-2)


def absolute_onehot(backend: Any, onehots: list[Any], counts: dynamic.StepCounts) -> Any:
    """Compose the per-level local one-hots into ``(B, H, k_last, G_last)`` over all
    finest clusters of the competing region (``dynamic.descend`` on the identity).

    Level l's one-hot ``(k_l, k_(l-1) f)`` picks children of the clusters kept so far;
    for each child slot t its columns ``(k_l, k_(l-1))`` times the absolute one-hot so
    far ``(k_(l-1), G_(l-1))`` give the absolute columns ``c f + t``. Under MPC each
    composition is one Beaver product that opens these two small one-hots only, not the
    ``k_(l-1) f x G_last`` expansion (``(O_(l-1) (x) I_f) @ I``) of a product with the
    identity."""
    absolute = onehots[0]
    for level in range(1, len(onehots)):
        fan = counts.sizes[level - 1] // counts.sizes[level]
        absolute = _compose(backend, onehots[level], absolute, fan)
    return absolute


def chain_last_level(counts: dynamic.StepCounts, query_rows: int) -> bool:
    """Whether picking through two one-hots opens fewer elements than through one.

    One absolute one-hot over the finest clusters opens k_L x G_L when premasked (G_L
    grows with the context). Two (the next-to-last level's absolute one-hot, k_(L-1) x
    G_(L-1), and the last level's local one over its k_(L-1) f candidates) open far less
    one-hot, but the pick and the scatter each open the ``query_rows`` x k_(L-1) s_(L-1)
    intermediate scores once more. Public counts only: the same for every party."""
    levels = len(counts.ks)
    if levels < 2 or counts.dense or counts.ks[-1] == 0:
        return False
    ks, totals, sizes = counts.ks, counts.totals, counts.sizes
    one = ks[-1] * totals[-1] + dynamic.composition_elements(counts, levels)
    fan = sizes[-2] // sizes[-1]
    two = (ks[-2] * totals[-2] + dynamic.composition_elements(counts, levels - 1)
           + ks[-1] * ks[-2] * fan + 2 * query_rows * ks[-2] * sizes[-2])
    return two < one


@dataclass(frozen=True)
class PickOperands:
    """A step's selection, premasked: ``fine`` over the finest clusters (``coarse`` is
    None), or ``coarse`` over the next-to-last level's clusters and ``fine`` over the
    children of the clusters it keeps (``chain_last_level``). Their D opens beside the
    step's first pick (``deferred_opening``)."""

    fine: Any
    coarse: Any | None = None


def selection_operands(backend: Any, onehots: list[Any], counts: dynamic.StepCounts,
                       query_rows: int, premask: bool, name: str,
                       chain: bool | None = None) -> PickOperands:
    """Premask the step's selection (opened with the first pick) in the cheaper of the
    two forms (``chain`` forces one: tests)."""
    if chain is None:
        chain = chain_last_level(counts, query_rows)
    if chain:
        coarse = absolute_onehot(backend, onehots[:-1], counts)
        masked = fixed_operands([coarse, onehots[-1]], names=[f"{name}/coarse", f"{name}/fine"],
                                premask=premask, deferred=True)
        return PickOperands(fine=masked[1], coarse=masked[0])
    absolute = absolute_onehot(backend, onehots, counts)
    return PickOperands(fine=fixed_operands([absolute], names=[name], premask=premask,
                                            deferred=True)[0])


def _compose(backend: Any, child: Any, parent: Any, fan: int) -> Any:
    """``child (B, H, k, p f)`` over the children of ``parent (B, H, p, G)``'s rows ->
    ``(B, H, k, G f)`` over all children, column ``c f + t`` for child t of cluster c."""
    batch, heads, kept, width = child.shape
    rows = width // fan
    by_slot = child.reshape(batch, heads, kept, rows, fan).permute(0, 1, 4, 2, 3)
    slots = backend.gather(by_slot.reshape(batch, heads, fan * kept, rows), parent)
    groups = int(slots.shape[-1])
    slots = slots.reshape(batch, heads, fan, kept, groups).permute(0, 1, 3, 4, 2)
    return slots.reshape(batch, heads, kept, groups * fan)


@dataclass
class RepOperands:
    """Premasked cluster representatives, one growing operand ``(B, H, C_l, D)`` per
    level. A full cluster's representative never changes, so it is masked and opened
    ONCE (all of them at the end of prefill, then one per newly full cluster); each
    step's scores ``q . rep`` then open only the summed query."""

    levels: int
    operands: list[Any] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.operands = [None] * self.levels
        self.counts = [0] * self.levels

    def sync(self, clusters: ClusterState, premask: bool, prefix: str) -> None:
        """Premask the representatives of the clusters that became full (one opening)."""
        new, names, where = [], [], []
        for level, boxes in enumerate(clusters.levels):
            have = self.counts[level]
            if boxes.count > have:
                new.append(boxes.rep[..., have: boxes.count, :])
                names.append(f"{prefix}/rep{level}/{have}")
                where.append((level, boxes.count))
        if not new:
            return
        operands = fixed_operands(new, names=names, premask=premask)
        for (level, count), operand in zip(where, operands, strict=True):
            old = self.operands[level]
            self.operands[level] = operand if old is None else type(operand).cat(
                [old, operand], dim=-2)
            self.counts[level] = count

    def scores_pending(self, query_sum: Any, level: int) -> Pending[Any]:
        """``(B, H, C_l)`` scores of every full level-l cluster; opens ``query_sum`` only,
        in the round ``openings.open_together`` gives it (all levels share one)."""
        product = self.operands[level].transpose(-1, -2).product_pending(query_sum, "matmul")
        return Pending(product.masked, lambda opened: product.finish(opened)[..., 0, :])


__all__ = ["PickOperands", "RepOperands", "absolute_onehot", "chain_last_level",
           "compaction_matrix", "selection_operands"]
