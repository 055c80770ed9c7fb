"""What the engine decides and keeps: per-layer state, static and step choices, records.

These are the public-shaped values that pass between the engine (``algorithm.engine``)
and its hosts (the plaintext ``apply`` and the secure cache policy); secret parts (the
one-hots) are backend values, everything else is a public count.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

import torch

from crypten_mpcache.algorithm import dynamic, static
from crypten_mpcache.algorithm.backend import Backend, Value
from crypten_mpcache.algorithm.clusters import ClusterState
from crypten_mpcache.algorithm.plan import DynamicSpec
from crypten_mpcache.algorithm.static import StaticCounts

Phase = Literal["prefill", "decode", "extend"]
LevelScores = Callable[[int], Value]


class SelectionRecord(TypedDict):
    """One (phase, step, layer) of a run, identical in plaintext and under MPC.

    step: 0 = prefill, t = t-th decode step; selector: the layer whose choice was
    applied; cache: rows stored after the step; attended: tokens the decode query
    attended (prefill: rows kept); positions: original positions of the rows kept
    (prefill) or attended (decode), ``(B, H', n)``; clusters: finest-level cluster
    indices a query-aware step selected, sorted, ``(B, H', k)``, else None.
    """

    step: int
    layer: int
    phase: Phase
    selector: int
    cache: int
    attended: int
    positions: torch.Tensor | None
    clusters: torch.Tensor | None


@dataclass
class LayerState:
    """What the engine keeps per layer of one sequence (reset at every prefill)."""

    prompt_len: int
    seen: int  # tokens seen (stored or evicted)
    rows: int  # rows the method keeps (public)
    step: int = 0
    frozen: int = 0  # statically kept prefix that sliding methods never drop
    recent: int = 0  # statically kept window (H2O's recent share)
    clusters: ClusterState | None = None
    spec: DynamicSpec | None = None  # the hierarchy for this sequence (``for_context``)
    scores: Value | None = None  # accumulated attention per row (H2O), (B, H', rows)
    positions: torch.Tensor | None = None  # original position per kept row (records)


@dataclass(frozen=True)
class StaticChoice:
    """One static eviction: public counts and the secret one-hot of the kept middle
    tokens ``(B, H', n_select, candidates)`` (None when nothing is selected)."""

    counts: StaticCounts
    onehot: Value | None


@dataclass
class StepChoice:
    """What a decode query attends to.

    mode "full": every stored row. "window": the first ``frozen`` and the last ``tail``
    rows (public positions). "heavy": the host first compacts by ``evict`` (H2O), then
    attends every remaining row. "select": sinks, the clusters chosen by ``onehots``
    (local one-hots per level, see ``dynamic.select``) and the recent tokens, by
    ``counts``. ``fresh`` is True in the layer that computed the choice (False where a
    layer reuses its selector's); ``payload`` is the host's per-choice data (e.g. a
    premasked one-hot) shared along with it.
    """

    mode: Literal["full", "window", "heavy", "select"]
    counts: dynamic.StepCounts | None = None
    onehots: list[Value] = field(default_factory=list)
    frozen: int = 0
    tail: int = 0
    evict: StaticChoice | None = None
    fresh: bool = True
    payload: Any = None
    revealed: list[torch.Tensor] | None = None  # revealed one-hots (records only)
    clusters: torch.Tensor | None = None  # revealed finest clusters (records only)

    @property
    def selects(self) -> bool:
        """Whether a secret selection restricts the attended tokens this step."""
        return self.mode == "select" and not self.counts.dense


def zero_columns(scores: Value, n: int) -> torch.Tensor:
    """Public zero scores for ``n`` new rows (plaintext scores keep their dtype)."""
    dtype = scores.dtype if isinstance(scores, torch.Tensor) else torch.float64
    return torch.zeros(*scores.shape[:2], n, dtype=dtype)


def compact_rows(backend: Backend, onehot: Value | None, x: Value,
                 counts: StaticCounts) -> Value:
    """``x (B, H, L, D)`` -> ``(B, H, keep, D)``: sinks, the rows ``onehot`` selects
    from the middle (none when ``onehot`` is None), the window."""
    if onehot is not None:
        return static.compact(backend, onehot, x, counts)
    length = counts.prompt_len
    return backend.cat([x[..., : counts.sink, :], x[..., length - counts.window:, :]], dim=-2)


__all__ = ["LayerState", "LevelScores", "Phase", "SelectionRecord", "StaticChoice", "StepChoice",
           "compact_rows", "zero_columns"]
