"""Attention over the tokens a cache policy chose: scores first, then select.

Why scores first: gathering K and V by a secret one-hot would produce fresh secrets that
q K_sel^T and p V_sel re-open (2 x H k s D elements). Instead q K^T runs on the whole
premasked cache (opens q only), the selection picks the attended columns of the scores
(public slices, and for secret clusters one product with the premasked one-hot, which
opens the H_q x region scores), the softmax runs over the attended tokens only, the
selection scatters p back (zeros elsewhere) and p V runs on the premasked V (opens
H_q x N). Opened elements per step with clusters: H_q (D + region + k s + N) + H k G,
against H_q D + 2 H k G + 2 H_kv (sink + k s + recent) D + H_q attended for gathering.

The pick's opening of the region scores (H_q x region, "pick" in the cost report) is the
floor of any selection in this premasked setting: picking columns of q K^T by a secret
one-hot is a product of three secrets (q, K, the one-hot), and the dealer cannot
pre-multiply the masks of q and of the one-hot across the opened, public K - B it must
not see, so one side of size min(H_q N, H_kv D attended) has to be opened each step
(docs/eviction_bounds.md).

``SelectedKeys`` / ``SelectedValues`` wrap the cache operands so that the secure
attention code sees ordinary (K, V) operands whose length is the attended count.
``QueryScores``: q K^T computed before the attention asks for it (the policy opens q
beside the step's cluster scores, which need only q too: one round for both); the
keys use it only for the very same shares of q.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import crypten
import torch

from crypten_mpcache.algorithm import dynamic
from crypten_mpcache.runtime.cost import operator_scope
from crypten_mpcache.secure.backend import secret
from crypten_mpcache.secure.primitives.openings import (
    Pending,
    charged,
    open_alone,
    ready,
    then,
)


class Selection(Protocol):
    """Which cache columns a decode step attends to, in original order."""

    @property
    def attended(self) -> int: ...

    def pick(self, scores: Any) -> Any:
        """``(B, H, r, N)`` -> ``(B, H, r, attended)``."""
        ...

    def scatter(self, probs: Any) -> Any:
        """``(B, H, r, attended)`` -> ``(B, H, r, N)``, zeros where nothing is attended."""
        ...

    def scatter_pending(self, probs: Any) -> Pending[Any]:
        """``scatter`` as a chain of stages for ``openings.run_together``."""
        ...


@dataclass(frozen=True)
class WindowSelection:
    """The first ``frozen`` and the last ``tail`` of ``rows`` columns (public positions:
    slices and public zeros, no traffic). Sliding-window methods keep the whole premasked
    cache and attend to this window instead of re-masking a shrunken cache."""

    rows: int
    frozen: int
    tail: int

    @property
    def attended(self) -> int:
        return self.frozen + self.tail

    def pick(self, scores: Any) -> Any:
        return _cat_columns([scores[..., : self.frozen], scores[..., self.rows - self.tail:]])

    def scatter(self, probs: Any) -> Any:
        b, h, r, _ = probs.shape
        gap = torch.zeros(b, h, r, self.rows - self.attended, dtype=torch.float64)
        return _cat_columns([probs[..., : self.frozen], gap, probs[..., self.frozen:]])

    def scatter_pending(self, probs: Any) -> Pending[Any]:
        return ready(self.scatter(probs))     # public positions: local


@dataclass(frozen=True)
class ClusterSelection:
    """The sinks and the recent tokens (public positions: plain slices) and ``k`` finest
    clusters of the competing region, chosen by secret one-hots premasked once per step
    (``selection_operands.PickOperands``: every product with them opens only the other
    side; None when no cluster is kept): ``fine`` over all finest clusters, or
    ``coarse`` over the next-to-last level's clusters and ``fine`` over the children of
    the ones it keeps (then the pick and the scatter go through both)."""

    counts: dynamic.StepCounts
    operands: Any | None

    @property
    def kept(self) -> int:
        return 0 if self.operands is None else self.counts.ks[-1]

    @property
    def recent_from(self) -> int:
        return self.counts.recent_start + self.counts.recent_drop

    @property
    def attended(self) -> int:
        c = self.counts
        return c.sink + self.kept * c.sizes[-1] + c.n_tokens - self.recent_from

    def pick(self, scores: Any) -> Any:
        c = self.counts
        parts = [scores[..., : c.sink]]
        if self.operands is not None:
            region = scores[..., c.sink: c.recent_start]
            if self.operands.coarse is None:
                picked = _pick(region, self.operands.fine, c.sizes[-1])
            else:  # the kept next-to-last clusters, whose children are the candidates
                mid = _pick(region, self.operands.coarse, c.sizes[-2])  # (b, h, r, kc sc)
                with operator_scope("gather"):  # the "pick" stays the one region opening
                    picked = _pick(mid, self.operands.fine, c.sizes[-1])
            parts.append(picked)
        parts.append(scores[..., self.recent_from:])
        return _cat_columns(parts)

    def scatter(self, probs: Any) -> Any:
        return open_alone(self.scatter_pending(probs))

    def scatter_pending(self, probs: Any) -> Pending[Any]:
        """One product with the premasked one-hot per level it goes through (one stage
        each), then the public columns around it (local)."""
        c = self.counts
        b, h, r, _ = probs.shape
        end = c.sink + self.kept * c.sizes[-1]
        lead, tail = probs[..., : c.sink], probs[..., end:]
        gap = torch.zeros(b, h, r, c.recent_drop, dtype=torch.float64)
        if self.operands is None:
            empty = torch.zeros(b, h, r, c.recent_start - c.sink, dtype=torch.float64)
            return ready(_cat_columns([lead, empty, gap, tail]))
        place = lambda region: _cat_columns([lead, region, gap, tail])  # noqa: E731
        fine = _scatter_pending(probs[..., c.sink: end], self.operands.fine, c.sizes[-1])
        if self.operands.coarse is None:
            return then(fine, place)
        return then(fine, lambda mid: then(
            _scatter_pending(mid, self.operands.coarse, c.sizes[-2]), place))


def _pick(columns: Any, onehot: Any, size: int) -> Any:
    """``columns (b, h, r, G size)`` grouped in G clusters of ``size`` -> the k clusters
    the premasked ``onehot (b, h, k, G)`` picks, ``(b, h, r, k size)`` (opens columns)."""
    b, h, r, width = columns.shape
    groups = width // size
    kept = int(onehot.shape[-2])
    x = columns.reshape(b, h, r, groups, size).transpose(-1, -2).reshape(b, h, r * size, groups)
    x = onehot.transpose(-1, -2).rmatmul(x)  # (b, h, r size, k)
    return x.reshape(b, h, r, size, kept).transpose(-1, -2).reshape(b, h, r, kept * size)


def _scatter_pending(columns: Any, onehot: Any, size: int) -> Pending[Any]:
    """The inverse placement of ``_pick``: ``(b, h, r, k size)`` -> ``(b, h, r, G size)``
    with zeros in the clusters not picked (opens columns, one stage)."""
    b, h, r, width = columns.shape
    kept, groups = int(onehot.shape[-2]), int(onehot.shape[-1])
    x = columns.reshape(b, h, r, kept, size).transpose(-1, -2).reshape(b, h, r * size, kept)
    return then(onehot.rmatmul_pending(x),  # (b, h, r size, G)
                lambda x: x.reshape(b, h, r, size, groups).transpose(-1, -2).reshape(
                    b, h, r, groups * size))


def _cat_columns(parts: list[Any]) -> Any:
    """Concatenate secret and public (zero) column blocks; empty blocks are skipped."""
    return crypten.cat([secret(p) for p in parts if p.shape[-1] > 0], dim=-1)


@dataclass(frozen=True)
class QueryScores:
    """``scores`` = q K^T over the whole cache for the grouped query ``query``."""

    query: Any
    scores: Any

    def for_query(self, x: Any) -> Any | None:
        """The scores if ``x`` is the same secret (this party's very shares of it, same
        encoding), else None. Local: a party compares its own shares only."""
        mine, theirs = self.query._tensor, x._tensor
        same = (mine.encoder.scale == theirs.encoder.scale
                and mine.share.shape == theirs.share.shape
                and torch.equal(mine.share, theirs.share))
        return self.scores if same else None


class SelectedKeys:
    """K as attention sees it this step: ``shape`` counts the attended tokens only;
    ``transpose(-1, -2).rmatmul(q)`` = q K_attended^T, computed scores first (or taken
    from ``scores`` when the policy computed them for this q)."""

    def __init__(self, keys: Any, selection: Selection,
                 scores: QueryScores | None = None) -> None:
        self._keys, self._selection, self._scores = keys, selection, scores

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self._keys.shape[:-2], self._selection.attended,
                           self._keys.shape[-1]))

    def transpose(self, dim0: int, dim1: int) -> _SelectedKeysT:
        if {dim0 % 4, dim1 % 4} != {2, 3}:
            raise ValueError("selected keys only support transpose(-1, -2)")
        return _SelectedKeysT(self._keys, self._selection, self._scores)


class _SelectedKeysT:
    def __init__(self, keys: Any, selection: Selection, scores: QueryScores | None) -> None:
        self._keys, self._selection, self._scores = keys, selection, scores

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self._keys.shape[:-2], self._keys.shape[-1],
                           self._selection.attended))

    def rmatmul(self, x: Any) -> Any:
        """``x (B, H, r, D)`` -> scores ``(B, H, r, attended)``; opens x, then (for
        secret clusters) the region scores against the premasked one-hot."""
        scores = None if self._scores is None else self._scores.for_query(x)
        if scores is None:
            scores = self._keys.transpose(-1, -2).rmatmul(x)
        with operator_scope("pick"):
            return self._selection.pick(scores)


class SelectedValues:
    """V as attention sees it this step: ``rmatmul(p)`` scatters p back over the whole
    cache (opens p for secret clusters) and multiplies with the premasked V."""

    def __init__(self, values: Any, selection: Selection) -> None:
        self._values, self._selection = values, selection

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self._values.shape[:-2], self._selection.attended,
                           self._values.shape[-1]))

    def rmatmul(self, probs: Any) -> Any:
        return open_alone(self.rmatmul_pending(probs))

    def rmatmul_pending(self, probs: Any) -> Pending[Any]:
        """p V as a chain for ``openings.run_together``: the scatter of p (charged to
        "gather"), then the product with the premasked V."""
        scattered = charged(self._selection.scatter_pending(probs), "gather")
        return then(scattered, self._values.rmatmul_pending)


__all__ = ["ClusterSelection", "QueryScores", "SelectedKeys", "SelectedValues", "Selection",
           "WindowSelection"]
