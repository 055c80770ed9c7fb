"""The one engine that runs a method's plan: per-layer state, sharing, choices, records.

Every method (MPCache and the baselines) is a ``MethodPlan``; this engine drives it for
one sequence over any ``Backend``, so the plaintext ``apply`` and the secure cache policy
are thin hosts that only move tensors (a ``DynamicCache`` or premasked operands):

- ``prefill(layer, ...)`` at the end of a layer's prefill: the static choice (this
  layer's own or its selector's, index sharing) is handed to the host's ``compact``; the
  layer that selects dynamically builds its cluster boxes on what was kept.
- ``decode(layer, ...)`` at every decode step: a ``StepChoice`` says what the query
  attends to: everything, a public window (sliding methods), the survivors of a
  heavy-hitter eviction, or the clusters of a query-aware selection (computed by the
  selector layer, reused by the layers that share it).
- ``observe(layer, probs)`` after a decode attention, for methods that accumulate
  attention (H2O).

Every count is a function of public values (lengths, step, plan). With ``record=True``
the engine reveals each choice through ``Backend.reveal`` (identity in plaintext, the
named debug reveal under MPC: TESTS ONLY) and appends one ``SelectionRecord`` per
(phase, step, layer), the same schema on both backends.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from crypten_mpcache.algorithm import dynamic, static
from crypten_mpcache.algorithm.backend import Backend, Value
from crypten_mpcache.algorithm.choices import (
    LayerState,
    LevelScores,
    Phase,
    SelectionRecord,
    StaticChoice,
    StepChoice,
    compact_rows,
    zero_columns,
)
from crypten_mpcache.algorithm.clusters import ClusterState
from crypten_mpcache.algorithm.plan import MethodPlan, budget_tokens
from crypten_mpcache.algorithm.sharing import sharing_schedule
from crypten_mpcache.algorithm.static import StaticCounts
from crypten_mpcache.algorithm.torch_backend import TorchBackend

PLAIN = TorchBackend()


class Engine:
    """Runs ``plan`` on ``backend`` for one sequence of an ``n_layers`` model."""

    def __init__(self, plan: MethodPlan, backend: Backend, n_layers: int,
                 record: bool = False) -> None:
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        self.plan = plan
        self.backend = backend
        self.n_layers = n_layers
        self.record = record
        dense = tuple(d for d in plan.dense_layers if d < n_layers)
        self.schedule = sharing_schedule(n_layers, plan.share_layers, plan.alone_head,
                                         plan.alone_tail, dense)
        self.layers: dict[int, LayerState] = {}
        self.records: list[SelectionRecord] = []
        self._static: dict[int, tuple[StaticChoice, torch.Tensor | None]] = {}
        self._steps: dict[int, StepChoice] = {}

    # -- public counts ----------------------------------------------------------------
    def selector(self, layer: int) -> int:
        """The layer whose choices ``layer`` applies (itself unless index sharing)."""
        return self.schedule[layer]

    def budget(self, seen: int) -> int | None:
        """Tokens a decode step may attend after ``seen`` tokens (None: no cap)."""
        return None if self.plan.budget is None else budget_tokens(self.plan.budget, seen)

    def static_counts(self, prompt_len: int) -> StaticCounts | None:
        """Counts of the static stage for this prompt length (None: no static stage)."""
        if self.plan.static is None:
            return None
        return static.static_counts(self.plan.static, prompt_len, self.budget(prompt_len))

    def prefill_rows(self, prompt_len: int) -> int:
        """How many last prefill query rows of attention probabilities the static stage
        reads (0: none): the observation window, or every row for accumulated scores."""
        counts = self.static_counts(prompt_len)
        if counts is None:
            return 0
        if self.plan.static.score == "accumulated":
            return prompt_len
        if self.plan.static.score == "window" and counts.evicts:
            return counts.window
        return 0

    def selects(self, layer: int) -> bool:
        """Whether ``layer`` selects clusters per step (dense layers never do)."""
        return self.plan.decode == "select" and layer not in self.plan.dense_layers

    # -- prefill ------------------------------------------------------------------------
    def prefill(self, layer: int, keys: Value, probs: Callable[[int], Value] | None,
                compact: Callable[[StaticChoice], Value]) -> LayerState:
        """End of ``layer``'s prefill over ``keys (B, Hkv, L, D)``.

        ``probs(rows)`` returns the attention probabilities ``(B, Hq, rows, L)`` of the
        last ``rows`` prompt queries (called only when the static stage reads them);
        ``compact(choice)`` compacts the host's cache and returns the kept keys.
        """
        batch, n_kv, length, _ = keys.shape
        state = LayerState(prompt_len=length, seen=length, rows=length)
        if self.record:
            state.positions = torch.arange(length).view(1, 1, -1).expand(batch, n_kv, -1)
        self.layers[layer] = state
        counts = self.static_counts(length)
        if counts is not None:
            spec = self.plan.static
            if spec.score == "accumulated":
                state.scores = static.head_importance(self.backend, probs(length), n_kv,
                                                      spec.scope)
            if counts.evicts:
                choice, kept = self._static_choice(layer, probs, n_kv, counts, state)
                keys = compact(choice)
                state.rows = counts.keep
                if self.record:
                    state.positions = kept.expand(batch, n_kv, -1) if kept.shape[1] == 1 \
                        else kept
                if state.scores is not None:
                    state.scores = self._compact_scores(choice, state.scores)
            state.frozen = counts.sink + counts.n_select
            state.recent = counts.window
        if self.selects(layer) and self.selector(layer) == layer:
            spec = state.spec = dynamic.hierarchy(self.plan.dynamic, state.rows,
                                                  self.budget(state.seen))
            state.clusters = ClusterState(self.backend, spec.cluster_sizes, spec.sink,
                                          spec.alpha, spec.similarity)
            state.clusters.build(keys)
        self._log(layer, "prefill", state, state.rows, state.positions)
        return state

    def _static_choice(self, layer: int, probs: Callable[[int], Value] | None, n_kv: int,
                       counts: StaticCounts, state: LayerState
                       ) -> tuple[StaticChoice, torch.Tensor | None]:
        """This layer's static choice, or its selector's (index sharing)."""
        selector = self.selector(layer)
        if selector != layer and selector in self._static:
            return self._static[selector]
        choice = StaticChoice(counts, self._static_onehot(probs, n_kv, counts, state))
        kept = self._kept_positions(choice) if self.record else None
        self._static[layer] = (choice, kept)
        return choice, kept

    def _static_onehot(self, probs: Callable[[int], Value] | None, n_kv: int,
                       counts: StaticCounts, state: LayerState) -> Value | None:
        spec = self.plan.static
        if counts.n_select == 0:
            return None
        if spec.score == "accumulated":
            importance = state.scores
        elif spec.score == "window":
            if probs is None:
                raise ValueError("static eviction needs the prefill's window probabilities")
            importance = static.head_importance(self.backend, probs(counts.window), n_kv,
                                                spec.scope)
            importance = static.max_pool(self.backend, importance, spec.pool_kernel)
        else:
            raise ValueError(f"static score {spec.score!r} keeps no middle tokens")
        return static.select_static(self.backend, importance, counts)

    def _kept_positions(self, choice: StaticChoice) -> torch.Tensor:
        """Revealed original positions of the kept rows ``(B, H', keep)`` (records)."""
        counts = choice.counts
        onehot = None if choice.onehot is None else self.backend.reveal(choice.onehot).double()
        lead = (1, 1) if onehot is None else tuple(onehot.shape[:-2])
        positions = torch.arange(counts.prompt_len, dtype=torch.float64)
        positions = positions.expand(*lead, -1).unsqueeze(-1)
        return compact_rows(PLAIN, onehot, positions, counts)[..., 0].round().long()

    def _compact_scores(self, choice: StaticChoice, scores: Value) -> Value:
        return compact_rows(self.backend, choice.onehot, scores.unsqueeze(-1),
                            choice.counts)[..., 0]

    # -- decode -------------------------------------------------------------------------
    def decode(self, layer: int, query: Value, latest_key: Callable[[], Value],
               level_scores: Callable[[LayerState], LevelScores | None] | None = None
               ) -> StepChoice:
        """One decode step of ``layer`` after its new row was stored.

        ``latest_key()`` returns the new key ``(B, Hkv, 1, D)`` (read only by a layer
        that selects); ``level_scores(state)``, when given, returns the scores of all
        full clusters per level (see ``dynamic.select``), e.g. from premasked
        representatives, after the new key entered the boxes.
        """
        state = self.layers[layer]
        state.step += 1
        state.seen += 1
        state.rows += 1
        if state.positions is not None:
            new = state.positions.new_full((*state.positions.shape[:2], 1), state.seen - 1)
            state.positions = torch.cat([state.positions, new], dim=-1)
        if state.scores is not None:
            state.scores = self.backend.cat([state.scores, zero_columns(state.scores, 1)],
                                            dim=-1)
        mode = "full" if layer in self.plan.dense_layers else self.plan.decode
        if mode == "window":
            choice = self._slide(state)
        elif mode == "heavy":
            choice = self._evict_lightest(state)
        elif mode == "select":
            choice = self._select(layer, state, query, latest_key, level_scores)
        else:
            choice = StepChoice("full")
        self._log_decode(layer, state, choice)
        return choice

    def _slide(self, state: LayerState) -> StepChoice:
        """Keep the frozen prefix and the most recent rows, ``budget`` rows in all."""
        budget = self.budget(state.seen)
        if state.rows <= budget:
            return StepChoice("full")
        tail = budget - state.frozen
        if state.positions is not None:
            state.positions = torch.cat([state.positions[..., : state.frozen],
                                         state.positions[..., state.rows - tail:]], dim=-1)
        state.rows = budget
        return StepChoice("window", frozen=state.frozen, tail=tail)

    def _evict_lightest(self, state: LayerState) -> StepChoice:
        """H2O: drop the lowest accumulated-score rows outside the recent window."""
        budget = self.budget(state.seen)
        if state.rows <= budget:
            return StepChoice("full")
        recent = min(state.recent, budget)
        counts = StaticCounts(prompt_len=state.rows, sink=0, window=recent,
                              n_select=budget - recent)
        choice = StaticChoice(counts, static.select_static(self.backend, state.scores, counts))
        if state.positions is not None:
            onehot = self.backend.reveal(choice.onehot).double()
            moved = compact_rows(PLAIN, onehot, state.positions.double().unsqueeze(-1), counts)
            state.positions = moved[..., 0].round().long()
        state.scores = self._compact_scores(choice, state.scores)
        state.rows = counts.keep
        return StepChoice("heavy", evict=choice)

    def _select(self, layer: int, state: LayerState, query: Value,
                latest_key: Callable[[], Value],
                level_scores: Callable[[LayerState], LevelScores | None] | None
                ) -> StepChoice:
        """This step's cluster selection: computed by a selecting layer, reused by the
        layers that share its indices."""
        selector = self.selector(layer)
        if selector != layer:
            shared = self._steps[selector]
            if shared.counts.n_tokens != state.rows:
                raise RuntimeError(f"layer {layer} cannot reuse layer {selector}'s selection: "
                                   f"{state.rows} rows here, {shared.counts.n_tokens} there")
            choice = StepChoice("select", shared.counts, shared.onehots, fresh=False,
                                payload=shared.payload, revealed=shared.revealed,
                                clusters=shared.clusters)
            self._steps[layer] = choice
            return choice
        spec = state.spec
        state.clusters.append(latest_key())
        counts = dynamic.step_counts(spec, state.rows, self.budget(state.seen))
        scores = None if level_scores is None else level_scores(state)
        onehots = dynamic.select(self.backend, query, state.clusters, counts,
                                 spec.similarity, scores)
        choice = StepChoice("select", counts, onehots)
        if self.record and not counts.dense:
            choice.revealed = [self.backend.reveal(o).double() for o in onehots]
            choice.clusters = dynamic.finest_clusters(PLAIN, choice.revealed, counts)
        self._steps[layer] = choice
        return choice

    def observe(self, layer: int, probs: Value) -> None:
        """Add a decode step's attention ``(B, Hq, 1, rows)`` to the accumulated scores."""
        state = self.layers[layer]
        if state.scores is None:
            return
        scope = "layer" if state.scores.shape[1] == 1 else "kv_head"
        heads = static.head_importance(self.backend, probs, int(state.scores.shape[1])
                                       if scope == "kv_head" else 1, scope)
        state.scores = self.backend.add(state.scores, heads)

    def extend(self, layer: int, keys: Value, new: int) -> LayerState:
        """``new`` tokens entered the cache at once (attended densely by the host)."""
        state = self.layers[layer]
        if state.positions is not None:
            extra = torch.arange(state.seen, state.seen + new).view(1, 1, -1)
            state.positions = torch.cat(
                [state.positions, extra.expand(*state.positions.shape[:2], -1)], dim=-1)
        state.seen += new
        state.rows += new
        if state.scores is not None:
            state.scores = self.backend.cat([state.scores, zero_columns(state.scores, new)],
                                            dim=-1)
        if state.clusters is not None:
            length = keys.shape[-2]
            for i in range(length - new, length):
                state.clusters.append(keys[..., i: i + 1, :])
        self._log(layer, "extend", state, state.rows, state.positions)
        return state

    # -- records ------------------------------------------------------------------------
    def _log_decode(self, layer: int, state: LayerState, choice: StepChoice) -> None:
        if not self.record:
            return
        attended, positions = state.rows, state.positions
        if choice.selects:
            attended = choice.counts.attended
            positions = dynamic.gather_tokens(PLAIN, positions.double().unsqueeze(-1),
                                              choice.revealed, choice.counts)
            # a set: the one-hots' row order is the top-k protocol's business
            positions = positions[..., 0].round().long().sort(dim=-1).values
        self._log(layer, "decode", state, attended, positions, choice.clusters)

    def _log(self, layer: int, phase: Phase, state: LayerState, attended: int,
             positions: torch.Tensor | None, clusters: torch.Tensor | None = None) -> None:
        if not self.record:
            return
        self.records.append(SelectionRecord(
            step=state.step, layer=layer, phase=phase, selector=self.selector(layer),
            cache=state.rows, attended=attended,
            positions=None if positions is None else positions.clone(), clusters=clusters))


__all__ = ["Engine"]
