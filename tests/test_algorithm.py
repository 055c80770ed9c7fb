"""The backend-agnostic algorithm on TorchBackend: top-k, static, clusters, selection."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch

from crypten_mpcache.algorithm import dynamic, static
from crypten_mpcache.algorithm.backend import Backend, onehot_to_indices
from crypten_mpcache.algorithm.clusters import (
    ClusterState,
    group_queries,
    score_dot,
    score_maxbound,
)
from crypten_mpcache.algorithm.plan import DynamicSpec, StaticSpec, budget_tokens
from crypten_mpcache.algorithm.sharing import sharing_schedule
from crypten_mpcache.algorithm.torch_backend import TorchBackend
from crypten_mpcache.methods import resolve_method

B = TorchBackend()


class CountingBackend(TorchBackend):
    """Records every backend call (name, input shapes) to check op budgets."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple]] = []

    def __getattribute__(self, name: str):
        attr = super().__getattribute__(name)
        if callable(attr) and not name.startswith("_") and name in Backend.__dict__:
            def wrapped(*args, **kwargs):
                shapes = tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))
                self.calls.append((name, shapes))
                return attr(*args, **kwargs)
            return wrapped
        return attr


def test_torch_backend_satisfies_protocol() -> None:
    assert isinstance(B, Backend)


def test_topk_onehot_ascending_order_ties_and_empty() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.9, 0.0]])
    onehot = B.topk_onehot(scores, 3)
    assert onehot.shape == (1, 3, 5)
    assert onehot_to_indices(onehot).tolist() == [[1, 2, 3]]
    tie = B.topk_onehot(torch.tensor([1.0, 1.0, 1.0]), 2)
    assert onehot_to_indices(tie).tolist() == [0, 1]
    assert B.topk_onehot(scores, 0).shape == (1, 0, 5)
    assert torch.equal(onehot.sum(-1), torch.ones(1, 3))
    with pytest.raises(ValueError):
        B.topk_onehot(scores, 6)


def test_static_counts_and_forced_tokens() -> None:
    spec = StaticSpec(keep=0.5, window=0.2, sink=4)
    counts = static.static_counts(spec, 100)
    assert (counts.sink, counts.window, counts.n_select, counts.keep) == (4, 20, 26, 50)
    assert static.static_counts(spec, 100, budget=80).keep == 80
    long = StaticSpec(keep=0.5, window=0.2, long_window=0.1, long_context_tokens=50, sink=4)
    assert static.static_counts(long, 100).window == 10
    assert not static.static_counts(StaticSpec(keep=1.0), 64).evicts


def test_static_selection_keeps_most_important_in_order() -> None:
    length, heads, dim = 40, 2, 4
    counts = static.StaticCounts(prompt_len=length, sink=2, window=5, n_select=4)
    importance = torch.zeros(1, 1, length)
    chosen = [30, 7, 12, 20]
    importance[0, 0, chosen] = torch.tensor([4.0, 3.0, 2.0, 1.0])
    onehot = static.select_static(B, importance, counts)
    keys = torch.arange(length).float().view(1, 1, length, 1).expand(1, heads, length, dim)
    kept = static.compact(B, onehot, keys, counts)[0, 0, :, 0].long().tolist()
    assert kept == [0, 1, 7, 12, 20, 30, 35, 36, 37, 38, 39]


def test_head_importance_scopes() -> None:
    probs = torch.rand(1, 4, 3, 10)
    layer = static.head_importance(B, probs, 2, "layer")
    per_kv = static.head_importance(B, probs, 2, "kv_head")
    assert layer.shape == (1, 1, 10) and per_kv.shape == (1, 2, 10)
    assert torch.allclose(layer[0, 0], probs.sum(2).mean(1)[0])
    assert torch.allclose(per_kv[0, 1], probs[0, 2:].sum(1).mean(0))


def _keys(n: int, heads: int = 2, dim: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, heads, n, dim, generator=torch.Generator().manual_seed(seed))


def test_cluster_boxes_incremental_equals_batch() -> None:
    keys = _keys(150)
    whole = ClusterState(B, (32, 16), start=16, alpha=0.6, similarity="linear")
    whole.build(keys)
    grown = ClusterState(B, (32, 16), start=16, alpha=0.6, similarity="linear")
    grown.build(keys[..., :37, :])
    for pos in range(37, 150):
        grown.append(keys[..., pos: pos + 1, :])
    for a, b in zip(whole.levels, grown.levels, strict=True):
        assert a.count == b.count
        assert torch.allclose(a.rmax, b.rmax) and torch.allclose(a.rmin, b.rmin)
        assert torch.allclose(a.rep, b.rep)
    fine = whole.levels[1]
    assert fine.count == (150 - 16) // 16
    first = keys[..., 16:32, :]
    assert torch.equal(fine.rmax[..., 0, :], first.amax(-2))
    assert torch.allclose(fine.rep[..., 0, :], 0.6 * first.amax(-2) + 0.4 * first.amin(-2))
    assert torch.equal(whole.levels[0].rmax[..., 0, :], keys[..., 16:48, :].amax(-2))


def test_linear_score_is_one_inner_product_per_cluster() -> None:
    query = torch.randn(1, 4, 1, 8)
    rep = torch.randn(1, 2, 5, 8)
    counting = CountingBackend()
    scores = score_dot(counting, group_queries(query, 2), rep)
    names = [name for name, _ in counting.calls]
    assert names == ["sum", "matmul"]  # sum the query heads, then one product per cluster
    assert counting.calls[1][1] == ((1, 2, 1, 8), (1, 2, 8, 5))
    expected = torch.einsum("hgd,hcd->hc", query[0, :, 0].view(2, 2, 8), rep[0])
    assert torch.allclose(scores[0], expected, atol=1e-5)


def test_maxbound_equals_true_max_over_box_corners() -> None:
    dim = 4
    query = torch.randn(1, 2, 1, dim)
    lo = torch.randn(1, 1, 3, dim)
    hi = lo + torch.rand(1, 1, 3, dim)
    scores = score_maxbound(B, group_queries(query, 1), hi, lo)
    for cluster in range(3):
        total = 0.0
        for head in range(2):
            corners = [torch.where(torch.tensor(bits, dtype=torch.bool), hi[0, 0, cluster],
                                   lo[0, 0, cluster])
                       for bits in itertools.product([0, 1], repeat=dim)]
            total += max(float(query[0, head, 0] @ c) for c in corners)
        assert scores[0, 0, cluster].item() == pytest.approx(total, abs=1e-5)


def test_step_counts_budget_and_ratio_modes() -> None:
    spec = DynamicSpec()
    for n in range(40, 400, 7):
        for budget in (50, 80, 120):
            counts = dynamic.step_counts(spec, n, budget)
            assert counts.attended <= max(budget, spec.sink + 1)
            if n <= budget:
                assert counts.dense
    counts = dynamic.step_counts(spec, 16 + 10 * 32 + 20, None)
    assert counts.n_top == 10 and counts.ks == (5, 4)
    assert counts.attended == 16 + 4 * 16 + 20
    assert dynamic.step_counts(spec, 40, None).dense


def _select(n: int, spec: DynamicSpec, budget: int | None, seed: int = 0):
    keys = _keys(n, seed=seed)
    query = torch.randn(1, 4, 1, 8, generator=torch.Generator().manual_seed(seed + 1))
    state = ClusterState(B, spec.cluster_sizes, spec.sink, spec.alpha, spec.similarity)
    state.build(keys)
    counts = dynamic.step_counts(spec, n, budget)
    return keys, query, state, counts, dynamic.select(B, query, state, counts, spec.similarity)


def test_hierarchy_only_children_of_kept_parents_compete() -> None:
    spec = DynamicSpec()
    counting = CountingBackend()
    keys = _keys(400)
    query = torch.randn(1, 4, 1, 8)
    state = ClusterState(B, spec.cluster_sizes, spec.sink, spec.alpha, spec.similarity)
    state.build(keys)
    counts = dynamic.step_counts(spec, 400, None)
    onehots = dynamic.select(counting, query, state, counts, "linear")
    topk_shapes = [shapes[0] for name, shapes in counting.calls if name == "topk_onehot"]
    assert topk_shapes == [(1, 2, counts.n_top), (1, 2, counts.ks[0] * 2)]
    parents = onehot_to_indices(onehots[0])
    finest = dynamic.finest_clusters(B, onehots, counts)
    for head in range(2):
        kept = set(parents[0, head].tolist())
        assert all(c // 2 in kept for c in finest[0, head].tolist())
    # level-2 winners are the best children among the kept parents only
    grouped = group_queries(query, 2)
    child_scores = score_dot(B, grouped, state.levels[1].rep[..., : counts.totals[1], :])
    for head in range(2):
        cands = [c for p in parents[0, head].tolist() for c in (2 * p, 2 * p + 1)]
        best = sorted(cands, key=lambda c: -child_scores[0, head, c].item())[: counts.ks[1]]
        assert sorted(best) == finest[0, head].tolist()


def test_gather_tokens_keeps_sink_recent_and_whole_clusters() -> None:
    """Sinks first, recent tokens last, in between whole finest clusters (each in token
    order; the clusters come in the top-k's rank order), no token twice."""
    spec = DynamicSpec()
    keys, _, _, counts, onehots = _select(300, spec, 100)
    index = torch.arange(300).float().view(1, 1, -1, 1).expand(1, 2, -1, 1)
    picked = dynamic.gather_tokens(B, index, onehots, counts)[..., 0].long()
    assert picked.shape[-1] == counts.attended <= 100
    size = spec.cluster_sizes[-1]
    for head in range(2):
        row = picked[0, head].tolist()
        assert row[: spec.sink] == list(range(spec.sink))
        assert row[-(300 - counts.recent_start):] == list(range(counts.recent_start, 300))
        middle = row[spec.sink: len(row) - (300 - counts.recent_start)]
        assert len(middle) == counts.ks[-1] * size and len(set(row)) == len(row)
        for start in range(0, len(middle), size):
            cluster = middle[start: start + size]
            assert cluster == list(range(cluster[0], cluster[0] + size))
            assert (cluster[0] - spec.sink) % size == 0
    gathered = dynamic.gather_tokens(B, keys, onehots, counts)
    assert torch.equal(gathered, torch.gather(keys, 2, picked.unsqueeze(-1).expand(-1, -1, -1, 8)))


def test_flat_maxbound_and_mean_selection_run() -> None:
    for similarity in ("maxbound", "mean"):
        spec = DynamicSpec(cluster_sizes=(16,), keep_ratios=(0.3,), similarity=similarity)
        _, _, _, counts, onehots = _select(250, spec, None)
        assert len(onehots) == 1 and onehots[0].shape[-2] == counts.ks[0]


def test_sharing_schedule_authors_pattern() -> None:
    schedule = sharing_schedule(30)
    assert schedule[:2] == (0, 1) and schedule[-2:] == (28, 29)
    assert all(schedule[i] == i and schedule[i + 1] == i for i in range(2, 28, 2))
    assert sharing_schedule(8, share=False) == tuple(range(8))
    assert sharing_schedule(8, dense_layers=(2,))[3] == 3


@pytest.mark.parametrize("method", ["mpcache", "mpcache:paper"])
def test_per_context_hierarchy_changes_nothing_up_to_4k(method: str) -> None:
    """Up to ~4.1k tokens the shipped configurations select exactly as with their
    configured levels (the retention measured at 2k and 4k stays valid)."""
    for budget in (0.05, 0.2, 0.5):
        spec = resolve_method(method, budget).plan().dynamic
        fixed = replace(spec, max_candidates=None)
        for n in range(40, 4160, 13):
            cap = budget_tokens(budget, n)
            chosen = dynamic.hierarchy(spec, n, cap)
            assert chosen.cluster_sizes == fixed.cluster_sizes
            assert dynamic.step_counts(chosen, n, cap) == \
                dynamic.step_counts(fixed, n, cap), (budget, n)


def test_per_context_hierarchy_bounds_every_top_k_at_16k() -> None:
    """At 16k (5%) the cost model puts a coarser level on top: every top-k competes over
    ~128 candidates (the configured two levels: 511 and 512), the budget still holds."""
    spec = resolve_method("mpcache", 0.05).plan().dynamic
    n, cap = 16384, budget_tokens(0.05, 16384)
    deep = dynamic.step_counts(dynamic.hierarchy(spec, n, cap), n, cap)
    flat = dynamic.step_counts(replace(spec, max_candidates=None), n, cap)
    assert deep.sizes == (128, 32, 8) and flat.sizes == (32, 8)
    assert max(dynamic.candidates(deep)) <= 132 and min(dynamic.candidates(flat)) >= 511
    assert flat.attended >= deep.attended >= 0.95 * flat.attended
    # every level keeps a real choice: fewer than its candidates
    assert all(k < c for k, c in zip(deep.ks, dynamic.candidates(deep), strict=True))
    assert dynamic.selection_cost(deep, spec.level_cost) < \
        dynamic.selection_cost(flat, spec.level_cost) / 1.5


def test_hierarchy_cost_model_weighs_rounds_against_comparisons() -> None:
    """At 8k a level's rounds priced for the LAN buy a coarser top, priced for the WAN
    they do not; priced too high they keep two levels even at 16k. At 4.2k a 128-token
    top would force up to 127 more recent tokens (under 2/3 of the chosen ones left)."""
    spec = resolve_method("mpcache", 0.05).plan().dynamic
    at = lambda s, n: dynamic.hierarchy(s, n, budget_tokens(0.05, n)).cluster_sizes  # noqa: E731
    assert at(spec, 8192) == (128, 32, 8)
    assert at(replace(spec, level_cost=173_000.0), 8192) == (32, 8)
    assert at(replace(spec, level_cost=1e6), 16384) == (32, 8)
    assert at(replace(spec, level_cost=0.0), 4200) == (32, 8)
    assert dynamic.hierarchy(spec, 16384, None).cluster_sizes == (32, 8)  # ratio mode


def test_cluster_boxes_built_in_batches_equal_one_batch(monkeypatch) -> None:
    """Long caches build their end-of-prefill boxes in batches (memory); same boxes."""
    from crypten_mpcache.algorithm import clusters

    keys = torch.randn(1, 2, 300, 4, generator=torch.Generator().manual_seed(3))
    whole = ClusterState(B, (32, 8), 16, 0.6, "linear")
    whole.build(keys)
    monkeypatch.setattr(clusters, "BUILD_CHUNK_TOKENS", 40)  # 5 finest clusters a batch
    batched = ClusterState(B, (32, 8), 16, 0.6, "linear")
    batched.build(keys)
    for a, b in zip(whole.levels, batched.levels, strict=True):
        assert a.count == b.count > 0
        assert torch.equal(a.rmax, b.rmax) and torch.equal(a.rmin, b.rmin)
        assert torch.equal(a.rep, b.rep)
