"""MPCache under MPC: the ``mpcache`` policy selects what the plaintext algorithm selects.

Tiny config-built Llamas (MHA and GQA) with query/key weights scaled up so that every
plaintext top-k decision has a margin far above CrypTen's fixed-point noise (asserted:
otherwise a comparison with the plaintext would test rounding, not the algorithm).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

import crypten_mpcache  # noqa: F401
from crypten_mpcache.algorithm import dynamic, static
from crypten_mpcache.algorithm.clusters import ClusterState
from crypten_mpcache.algorithm.plan import StaticSpec, budget_tokens
from crypten_mpcache.algorithm.torch_backend import TorchBackend
from crypten_mpcache.config import MPCacheConfig
from crypten_mpcache.fidelity import compare_selections, secure_records
from crypten_mpcache.methods import resolve_method
from crypten_mpcache.private import PrivateGenerationConfig, generate_ids
from crypten_mpcache.runtime.launcher import LaunchConfig, launch
from crypten_mpcache.secure.cache.method_policy import MethodPolicy, default_policies
from crypten_mpcache.secure.cache.selection_operands import absolute_onehot, compaction_matrix
from crypten_mpcache.testing import (
    AttentionInputs,
    assert_same_transcript,
    reference_clusters,
    reference_static_positions,
    save_tiny_llama,
    topk_margins,
)

PLAIN = TorchBackend()
TFP = LaunchConfig(parties=2, dealer="tfp", timeout_s=600)
VOCAB, PROMPT, STEPS = 40, 48, 5
MARGIN = 1e-2  # smallest plaintext top-k margin (CrypTen exp: a few % error on probs)
LOGIT_TIE = 0.2  # above the secure run's logit error on these models (fixed point, 3 layers)
RATIO = MPCacheConfig(static_keep=0.6, window_ratio=0.2, sink_tokens=4, recent_tokens=4,
                      cluster_sizes=(8, 4), keep_ratios=(0.5, 0.5), alone_head=0, alone_tail=1)
BUDGET = 20  # tokens per decode step (GQA case)
# RATIO's knobs at a count budget, with the authors' static keep and level ratios
BUDGETED = replace(RATIO, static_keep=0.3, keep_ratios=(0.5, 0.2), budget=BUDGET)
# The shipped default (sink 16, recent 16, clusters 32 then 8) needs a prompt with full
# 32-token clusters beyond sink + recent, and a budget above sink + recent (32) so that
# the top-k really chooses: at 160 tokens and 64 tokens a step it keeps 3 clusters of 8
# out of the children of its best coarse clusters at every step.
DEFAULT_PROMPT, DEFAULT_BUDGET = 160, 64
# The per-context hierarchy at a size a tiny model can run: 16/2-token clusters with at
# most 4 candidates per level become 64/16/2 at 224 tokens (the shipped default does the
# same past ~4.1k tokens: 128/32/8), and the secure pick goes through two one-hots
# (``selection_operands.chain_last_level``, as the default from ~12k tokens).
DEEP = MPCacheConfig.default(budget=0.25, cluster_sizes=(16, 2), max_candidates=4,
                             level_cost=0.0)


def save_llama(folder: Path, seed: int, kv_heads: int) -> str:
    """Three layers, peaky attention (q/k weights x10) and wide logit gaps."""
    return save_tiny_llama(folder, seed, kv_heads=kv_heads, layers=3, vocab=VOCAB,
                           qk_gain=10.0, lm_head_gain=4.0, max_positions=256)


def prompt(seed: int, length: int = PROMPT) -> list[int]:
    return torch.randint(0, VOCAB, (length,), generator=torch.Generator().manual_seed(seed)
                         ).tolist()


def expected_selections(inputs: AttentionInputs, config: MPCacheConfig, prompt_len: int,
                        records: list[dict]) -> int:
    """Check every selecting layer's record against ``reference_static_positions`` /
    ``reference_clusters`` computed from the run's own q and k rows (no code of
    ``crypten_mpcache.algorithm`` decides anything here; only the public counts come from
    it). Returns how many decode records really chose clusters (k >= 1 of more)."""
    spec, chose = config.dynamic_spec(), 0
    for record in records:
        layer, step = record["layer"], record["step"]
        if record["selector"] != layer:
            continue
        query0, keys0 = inputs.calls[layer][0]
        kept = None
        if config.static:
            budget = budget_tokens(config.budget, prompt_len) if config.budget else None
            counts = static.static_counts(config.static_spec(), prompt_len, budget)
            if counts.evicts:
                kept = reference_static_positions(query0, keys0, sink=counts.sink,
                                                  window=counts.window,
                                                  n_select=counts.n_select,
                                                  scope=config.static_scope)
        if record["phase"] == "prefill":
            if kept is not None:
                assert torch.equal(record["positions"], kept.expand_as(record["positions"])), \
                    (layer, record["positions"], kept)
            continue
        keys = inputs.keys(layer, step + 1)
        if kept is not None:
            index = kept.expand(-1, keys0.shape[1], -1).unsqueeze(-1).expand(
                -1, -1, -1, keys0.shape[-1])
            keys = torch.cat([keys0.gather(2, index), keys[..., prompt_len:, :]], dim=-2)
        budget = budget_tokens(config.budget, prompt_len + step) if config.budget else None
        rows = prompt_len if kept is None else int(kept.shape[-1])
        prefill_budget = budget_tokens(config.budget, prompt_len) if config.budget else None
        counts = dynamic.step_counts(dynamic.hierarchy(spec, rows, prefill_budget),
                                     int(keys.shape[-2]), budget)
        if counts.dense or counts.ks[-1] == 0:
            assert record["clusters"] is None or record["clusters"].numel() == 0, (layer, step)
            continue
        want = reference_clusters(inputs.queries(layer)[step], keys, sink=counts.sink,
                                  sizes=counts.sizes, ks=counts.ks, n_top=counts.n_top,
                                  alpha=spec.alpha, per_layer=counts.shared_heads)
        assert record["clusters"] is not None and torch.equal(record["clusters"], want), \
            (layer, step, record["clusters"], want)
        chose += 1
    return chose


def plaintext_run(folder: str, ids: list[int], feed: list[int], config: MPCacheConfig
                  ) -> tuple[torch.Tensor, list[dict], float]:
    """The plaintext MPCache run fed with ``feed`` (the private tokens) so both runs see
    the same inputs: its (steps, vocab) logits, its debug records, and the smallest top-k
    margin of the plaintext GREEDY run (a property of the case, whatever the private run
    chose at a near-tie). Its selections are checked against the first-principles
    reference (``expected_selections``): a comparison of MPC with plaintext alone cannot
    see a selection that is wrong in both."""
    from transformers import LlamaForCausalLM

    from crypten_mpcache.plaintext import generate_fed

    model = LlamaForCausalLM.from_pretrained(folder).eval()
    with topk_margins() as margins:
        generate_fed(model, config, ids, len(feed))
    with AttentionInputs(model) as inputs:
        _, logits, records = generate_fed(model, config, ids, len(feed), feed=feed,
                                          record=True)
    assert expected_selections(inputs, config, len(ids), records) > 0
    return logits, records, min(margins)


def assert_greedy_up_to_ties(tokens: list[int], logits: torch.Tensor) -> None:
    """Each private token is the argmax of the plaintext logits for the same inputs; at a
    near-tie (the best two plaintext logits closer than LOGIT_TIE, the secure run's logit
    error) it may be either: which one wins there is decided by rounding, not by the
    algorithm (seen at 224 tokens, where tiny models' logit gaps fall to ~0.02)."""
    assert len(tokens) == len(logits)
    for step, (token, row) in enumerate(zip(tokens, logits, strict=True)):
        best, second = row.topk(2).values.tolist()
        if best - second >= LOGIT_TIE:
            assert token == int(row.argmax()), (step, token, int(row.argmax()))
        else:
            assert float(row[token]) >= best - LOGIT_TIE, (step, token, best, float(row[token]))


def secure_run(folder: str, ids: list[int], config: MPCacheConfig) -> dict:
    return secure_records(folder, ids, STEPS, config, TFP)


# --- plaintext checks of the one-hot constructions ----------------------------------------


def test_compaction_matrix_is_compact_of_identity():
    torch.manual_seed(0)
    spec = StaticSpec(keep=0.5, window=0.25, sink=3)
    counts = static.static_counts(spec, 20)
    onehot = static.select_static(PLAIN, torch.rand(1, 2, 20), counts)
    eye = torch.eye(20).expand(1, 2, 20, 20)
    expected = static.compact(PLAIN, onehot, eye, counts)
    assert torch.equal(compaction_matrix(PLAIN, onehot, counts).float(), expected)


@pytest.mark.parametrize("sizes,ratios", [((8, 4), (0.5, 0.5)), ((4,), (0.3,)),
                                          ((8, 4, 2), (0.6, 0.5, 0.4))])
def test_absolute_onehot_gathers_what_gather_tokens_gathers(sizes, ratios):
    torch.manual_seed(1)
    config = MPCacheConfig(sink_tokens=2, recent_tokens=3, cluster_sizes=sizes,
                           keep_ratios=ratios, static=False)
    spec = config.dynamic_spec()
    keys = torch.randn(1, 2, 45, 4, dtype=torch.float64)
    state = ClusterState(PLAIN, spec.cluster_sizes, spec.sink, spec.alpha, spec.similarity)
    state.build(keys)
    counts = dynamic.step_counts(spec, 45, None)
    onehots = dynamic.select(PLAIN, torch.randn(1, 4, 1, 4, dtype=torch.float64), state,
                             counts, spec.similarity)
    picked = absolute_onehot(PLAIN, onehots, counts)
    size = sizes[-1]
    region = keys[..., counts.sink: counts.sink + counts.totals[-1] * size, :]
    blocks = region.reshape(1, 2, counts.totals[-1], size * 4)
    gathered = (picked @ blocks).reshape(1, 2, -1, 4)
    expected = dynamic.gather_tokens(PLAIN, keys, onehots, counts)
    selected = expected[..., counts.sink: counts.sink + counts.ks[-1] * size, :]
    assert torch.equal(gathered, selected)


def _random_onehot(rows: int, cols: int, seed: int) -> torch.Tensor:
    pick = torch.randperm(cols, generator=torch.Generator().manual_seed(seed))[:rows]
    return torch.nn.functional.one_hot(pick, cols).double().expand(1, 2, rows, cols).contiguous()


def test_secure_absolute_onehot_opens_only_the_level_onehots():
    """Under MPC the composition is exact for 2 and 3 levels and each level opens only
    the two small one-hots it multiplies (``(k_l, k_(l-1) f)`` and ``(k_(l-1),
    G_(l-1))``), never the ``k_(l-1) f x G_last`` expansion that a product with the
    identity over all finest clusters would open."""
    from crypten_mpcache.secure.backend import CryptenBackend

    shapes = {2: [(3, 12), (4, 3 * 4)], 3: [(3, 12), (4, 3 * 4), (2, 4 * 2)]}
    sizes = {2: (16, 4), 3: (16, 4, 2)}

    def counts_for(levels: int, dims: list[tuple[int, int]]) -> dynamic.StepCounts:
        return dynamic.StepCounts(200, 0, sizes[levels], 12, tuple(r for r, _ in dims), False)

    def run():
        import crypten
        import crypten.communicator as comm

        backend, out = CryptenBackend(), {}
        for levels, dims in shapes.items():
            plain = [_random_onehot(r, c, seed=10 * levels + i) for i, (r, c) in enumerate(dims)]
            secrets = [crypten.cryptensor(o) for o in plain]
            before = comm.get().comm_bytes
            absolute = absolute_onehot(backend, secrets, counts_for(levels, dims))
            spent = comm.get().comm_bytes - before
            out[levels] = (plain, absolute.get_plain_text(), spent)
        return out

    for levels, (plain, absolute, spent) in launch(run, config=TFP)[0].items():
        counts = counts_for(levels, [tuple(o.shape[-2:]) for o in plain])
        assert torch.equal(absolute.round().double(), absolute_onehot(PLAIN, plain, counts))
        # level 1: O_2 and O_1; level 2: O_3 and the (4, 48) absolute so far; both heads
        opened = 2 * (4 * 12 + 3 * 12 + (2 * 8 + 4 * 48 if levels == 3 else 0))
        expansion = 2 * 3 * 4 * 12 * 4  # (O_1 (x) I_4) @ I_48: what was opened before
        # CrypTen counts an opened 64-bit word at both ends: 16 bytes per party
        assert spent == 16 * opened < 16 * expansion, (spent, opened)


@pytest.mark.parametrize("sizes,ratios", [((8, 4), (0.5, 0.5)), ((8, 4, 2), (0.6, 0.5, 0.4))])
def test_scoring_all_clusters_then_descending_selects_the_same(sizes, ratios):
    """``level_scores`` (scores of all full clusters, e.g. against premasked
    representatives) picks exactly the clusters that scoring the gathered boxes picks."""
    torch.manual_seed(2)
    config = MPCacheConfig(sink_tokens=2, recent_tokens=3, cluster_sizes=sizes,
                           keep_ratios=ratios, static=False)
    spec = config.dynamic_spec()
    keys = torch.randn(1, 2, 61, 4, dtype=torch.float64)
    state = ClusterState(PLAIN, spec.cluster_sizes, spec.sink, spec.alpha, spec.similarity)
    state.build(keys)
    query = torch.randn(1, 4, 1, 4, dtype=torch.float64)
    counts = dynamic.step_counts(spec, 61, None)
    q_sum = query.reshape(1, 2, 2, 4).sum(2, keepdim=True)

    def level_scores(level):
        return (q_sum @ state.levels[level].rep.transpose(-1, -2))[..., 0, :]

    assert state.finest.count >= counts.totals[-1]
    expected = dynamic.select(PLAIN, query, state, counts, spec.similarity)
    got = dynamic.select(PLAIN, query, state, counts, spec.similarity, level_scores)
    for a, b in zip(expected, got, strict=True):
        assert torch.equal(a, b)


def test_layer_scope_selects_the_top_clusters_of_the_head_summed_scores():
    torch.manual_seed(3)
    config = MPCacheConfig(sink_tokens=2, recent_tokens=3, cluster_sizes=(4,),
                           keep_ratios=(0.3,), static=False, selection_scope="layer")
    spec = config.dynamic_spec()
    keys = torch.randn(1, 2, 45, 4, dtype=torch.float64)
    state = ClusterState(PLAIN, spec.cluster_sizes, spec.sink, spec.alpha, spec.similarity)
    state.build(keys)
    query = torch.randn(1, 4, 1, 4, dtype=torch.float64)
    counts = dynamic.step_counts(spec, 45, None)
    assert counts.shared_heads
    (onehot,) = dynamic.select(PLAIN, query, state, counts, spec.similarity)
    assert onehot.shape == (1, 1, counts.ks[0], counts.totals[0])
    q_sum = query.reshape(1, 2, 2, 4).sum(2, keepdim=True)
    scores = (q_sum @ state.finest.rep[..., : counts.totals[0], :].transpose(-1, -2)).sum(1)
    best = scores[0, 0].topk(counts.ks[0]).indices  # rank order, as the selection rows
    assert torch.equal(onehot[0, 0].argmax(-1), best)
    with pytest.raises(ValueError, match="selection_scope"):
        MPCacheConfig(selection_scope="head")


def test_box_is_exact_and_cheaper_than_max_and_min_apart():
    """``CryptenBackend.box`` = (amax, amin) exactly, for odd and even n, with fewer bytes
    and rounds than the two tournaments it replaces (what each cluster box costs)."""
    from crypten_mpcache.secure.backend import CryptenBackend

    def run():
        import crypten
        import crypten.communicator as comm

        backend, out = CryptenBackend(), []
        for n in (8, 7, 1):
            x = torch.randn(2, 3, n, 4, generator=torch.Generator().manual_seed(n))
            enc = crypten.cryptensor(x)
            c0 = comm.get()
            b0, r0 = c0.comm_bytes, c0.comm_rounds
            top, low = backend.box(enc, dim=2)
            b1, r1 = c0.comm_bytes, c0.comm_rounds
            apart = (backend.max(enc, dim=2), backend.min(enc, dim=2))
            b2, r2 = c0.comm_bytes, c0.comm_rounds
            merged = backend.max_min(enc, enc * 2, dim=2)  # child boxes -> a coarser box
            b3, r3 = c0.comm_bytes, c0.comm_rounds
            out.append((x, top.get_plain_text(), low.get_plain_text(),
                        apart[0].get_plain_text(), (b1 - b0, r1 - r0), (b2 - b1, r2 - r1),
                        [m.get_plain_text() for m in merged], (b3 - b2, r3 - r2)))
        return out

    for x, top, low, apart_max, box_cost, apart_cost, merged, merge_cost in launch(
            run, config=TFP)[0]:
        assert torch.allclose(top, x.amax(2), atol=1e-4)
        assert torch.allclose(low, x.amin(2), atol=1e-4)
        assert torch.allclose(apart_max, x.amax(2), atol=1e-4)
        assert torch.allclose(merged[0], x.amax(2), atol=1e-4)
        assert torch.allclose(merged[1], 2 * x.amin(2), atol=1e-4)
        if x.shape[2] > 2:
            assert box_cost[0] < 0.85 * apart_cost[0], (box_cost, apart_cost)
            assert box_cost[1] < apart_cost[1], (box_cost, apart_cost)
            # one batched tournament: the same bytes as max and min apart, half the rounds
            assert merge_cost[0] <= apart_cost[0] and 2 * merge_cost[1] <= apart_cost[1] + 2


def test_registry_config_and_validation():
    assert default_policies().names() == ("full", "mpcache")
    config = resolve_method("mpcache", 0.1)
    policy = default_policies().create("mpcache", config=config, n_layers=30)
    assert isinstance(policy, MethodPolicy) and policy.plan == config.plan()
    assert [policy.selector(i) for i in range(30)] == list(range(30))  # no index sharing
    policy = default_policies().create("mpcache", config=resolve_method("mpcache:paper", 0.1),
                                       n_layers=30)
    assert policy.plan == MPCacheConfig.from_budget(0.1).plan()
    schedule = [policy.selector(i) for i in range(30)]
    assert schedule[:4] == [0, 1, 2, 2] and schedule[-2:] == [28, 29]
    with pytest.raises(ValueError, match="n_layers"):
        default_policies().create("mpcache", config=MPCacheConfig())
    with pytest.raises(ValueError, match="mpcache"):
        PrivateGenerationConfig(cache="full", budget=0.1)
    with pytest.raises(ValueError, match="budget"):
        PrivateGenerationConfig(cache="mpcache", budget=1.5)


# --- MPC fidelity -----------------------------------------------------------------------


def _same_records(secure: list[dict], plain: list[dict], layers: int, exact: bool) -> None:
    """Every (phase, step, layer) record equal; with ``exact=False`` a quarter of the
    selection decisions (at least one) may flip on fixed-point near-ties: the differing
    records must all be decode-time cluster choices (a decision = one step of one selector
    layer, with the layers reusing it). A real bug, e.g. a first-k top-k, flips nearly all."""
    assert len(secure) == layers * (1 + STEPS - 1)
    report = compare_selections(secure, plain)
    if exact:
        assert report.all_equal, report.mismatches
        return
    # a flipped cluster choice changes the attended positions with it
    assert all(field in ("clusters", "positions") for _, field in report.mismatches), \
        report.mismatches
    by_key = {(r["phase"], r["step"], r["layer"]): r for r in secure}
    decisions = {(where[0], where[1], by_key[where]["selector"])
                 for where, _ in report.mismatches}
    made = {(r["step"], r["layer"]) for r in secure
            if r["phase"] == "decode" and r["selector"] == r["layer"]}
    assert len(decisions) <= max(1, len(made) // 4), report.mismatches
    assert all(where[0] == "decode" for where, _ in report.mismatches), report.mismatches


# Fixed-point noise (CrypTen's exp is a few % off on attention probabilities) can flip a
# decode-time cluster choice whose plaintext top-k margin is small but above MARGIN: seen
# in ~1 run of 10 for the MHA case (decode step 4, layer 2) and in 2 runs of ~45 for the
# GQA one-level case (decode step 2, layer 0 and its reuser layer 1). The shipped default
# and the authors' configuration flip more: with plaintext margins of 4% (default, seed 0)
# and 1-2% (paper) of the largest score, one or two of their 12 decisions flip under MPC
# in some runs (the secure run's queries and keys carry the whole network's fixed-point
# error, ~0.1-0.3 on the logits here, and q/k are scaled x10). Every case tolerates a
# quarter of its decisions (at least one); tokens must still be equal, and the first-k
# sabotage flips nearly all. Their plaintext selections
# are checked EXACTLY against the first-principles reference (``expected_selections``).
# The authors' case runs at a 45% budget: their static stage then keeps the whole prompt
# (keep = window + 2 x budget), because at a few hundred tokens static importances differ
# by ~1e-4 at the cut (softmax sums), below CrypTen's exp error; the static stage is
# checked against the reference in plaintext (``test_plaintext_selections_...``).
@pytest.mark.parametrize("seed,kv_heads,config,length,exact", [
    (27, 4, RATIO, PROMPT, False),                                               # MHA, ratio
    (6, 2, BUDGETED, PROMPT, False),                                             # GQA, budget
    (6, 2, replace(BUDGETED, selection_scope="layer", hierarchy=False), PROMPT, False),
    (0, 2, MPCacheConfig.default(budget=DEFAULT_BUDGET), DEFAULT_PROMPT, False),
    (14, 2, MPCacheConfig.paper().at_budget(0.45), 224, False),
    (4, 2, DEEP, 224, False),
], ids=["mha-ratio", "gqa-budget", "gqa-layer-scope-one-level", "default", "paper",
        "deepened"])
def test_secure_selections_and_tokens_equal_plaintext(tmp_path, seed, kv_heads, config,
                                                      length, exact):
    folder = save_llama(tmp_path / "m", seed, kv_heads)
    ids = prompt(100 + seed, length)
    client = secure_run(folder, ids, config)
    tokens = client["tokens"]
    logits, records, margin = plaintext_run(folder, ids, tokens, config)
    assert margin > MARGIN  # the case is decided by the algorithm, not by rounding
    assert_greedy_up_to_ties(tokens, logits)
    _same_records(client["selections"], records, layers=3, exact=exact)
    decode = [r for r in client["selections"] if r["phase"] == "decode"]
    selecting = [r for r in decode if r["selector"] == r["layer"]]
    # selection really happened: every selecting layer chose k >= 1 clusters at every step
    # (a budget below sink + recent gives k = 0 and nothing to test), fewer than all
    spec = dynamic.hierarchy(config.dynamic_spec(), length,
                             budget_tokens(config.budget, length) if config.budget else None)
    for record in selecting:
        assert record["clusters"] is not None and record["clusters"].numel() > 0, record
        assert record["attended"] < record["step"] + length, record
    assert client["cost"]["operators"]["topk"]["bytes"] > 0
    if config.budget is not None:
        limit = budget_tokens(config.budget, length + STEPS)
        assert max(r["attended"] for r in decode) <= limit
    if config.index_sharing and config.alone_head == 0:
        # layer 1 applies layer 0's selection and reveals nothing of its own
        assert all(r["selector"] == 0 for r in client["selections"] if r["layer"] == 1)
    by_key = {(r["step"], r["layer"]): r for r in decode}
    for record in decode:  # a reusing layer attends exactly its selector's clusters
        chosen = by_key[(record["step"], record["selector"])]["clusters"]
        assert record["clusters"] is None or torch.equal(record["clusters"], chosen)
    expected = sum(len(spec.cluster_sizes) for r in selecting)
    expected += sum(1 for r in client["selections"]  # static eviction's choice, if any
                    if r["phase"] == "prefill" and r["selector"] == r["layer"]
                    and r["cache"] < length)
    assert client["reveals"]["counts"]["debug_reveal_selection"] == expected


@pytest.mark.parametrize("config,length", [
    (MPCacheConfig.default(budget=DEFAULT_BUDGET), DEFAULT_PROMPT),
    (MPCacheConfig.paper().at_budget(96), 256),
    (DEEP, 224),
], ids=["default", "paper-static", "deepened"])
def test_plaintext_selections_equal_the_reference(tmp_path, config, length):
    """The plaintext algorithm (what MPC is compared with) keeps exactly what the
    first-principles reference keeps: the authors' static eviction (28 of 188 middle
    tokens at 256 tokens, budget 96) and the decode-time top-k of both configurations.
    Plaintext only (no fixed-point noise), so it is exact where MPC cannot be."""
    from transformers import LlamaForCausalLM

    from crypten_mpcache.plaintext import generate_fed

    model = LlamaForCausalLM.from_pretrained(save_llama(tmp_path / "m", 2, 2)).eval()
    ids = prompt(5, length)
    with AttentionInputs(model) as inputs:
        _, _, records = generate_fed(model, config, ids, STEPS, record=True)
    chose = expected_selections(inputs, config, length, records)
    assert chose == 3 * (STEPS - 1)  # every layer chose clusters at every decode step
    if config.static:
        prefill = [r for r in records if r["phase"] == "prefill"]
        assert all(r["positions"].shape[-1] < length for r in prefill)  # it evicted


def test_check_compares_with_plaintext_mpcache(tmp_path):
    folder = save_llama(tmp_path / "m", 6, 2)
    config = PrivateGenerationConfig(max_new_tokens=4, model_path=folder, dealer="tfp",
                                     progress=False, cache="mpcache", check=True,
                                     mpcache=BUDGETED)
    result = generate_ids(prompt(106), config)
    assert result.match, (result.generated_ids, result.plaintext_ids)
    assert result.max_abs_logit_error < 0.1
    for kind in ("similarity", "topk", "gather"):
        assert result.cost["operators"][kind]["bytes"] > 0, kind
    assert result.reveals["party1"] == {"reveal_generated_token": 4, "debug_reveal_logits": 4}


def test_transcript_does_not_depend_on_the_prompt(tmp_path):
    folder = save_llama(tmp_path / "m", 6, 2)
    config = PrivateGenerationConfig(max_new_tokens=4, model_path=folder, dealer="tfp",
                                     progress=False, cache="mpcache", mpcache=BUDGETED)
    first, second = (generate_ids(prompt(seed), config) for seed in (7, 8))
    assert prompt(7) != prompt(8)
    assert_same_transcript(first.cost, second.cost)


def test_chained_pick_and_scatter_equal_the_absolute_one_hot():
    """Picking the attended scores through the next-to-last level's absolute one-hot and
    the last level's local one (long contexts) gives exactly what one absolute one-hot
    gives, and scatter puts the probabilities back in the same columns; the cost rule
    chooses the chain at 16k (Llama-3-8B, 5%) and not at 4k."""
    from crypten_mpcache.secure.backend import CryptenBackend
    from crypten_mpcache.secure.cache.attended import ClusterSelection
    from crypten_mpcache.secure.cache.selection_operands import (
        chain_last_level,
        selection_operands,
    )

    dims = [(3, 12), (4, 3 * 4), (5, 4 * 2)]  # local one-hots of levels 16 / 4 / 2
    counts = dynamic.StepCounts(2 + 12 * 16 + 3, 2, (16, 4, 2), 12, (3, 4, 5), False)
    assert counts.totals == (12, 48, 96)
    scores = torch.randn(1, 2, 3, counts.n_tokens, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(4))
    plain = [_random_onehot(r, c, seed=30 + i) for i, (r, c) in enumerate(dims)]

    def run():
        import crypten

        backend, out = CryptenBackend(), {}
        secret_scores = crypten.cryptensor(scores)
        for chain in (False, True):
            secrets = [crypten.cryptensor(o) for o in plain]
            operands = selection_operands(backend, secrets, counts, 3, True, f"t{chain}",
                                          chain=chain)
            selection = ClusterSelection(counts, operands)
            picked = selection.pick(secret_scores)
            out[chain] = (picked.get_plain_text(),
                          selection.scatter(picked).get_plain_text())
        return out

    out = launch(run, config=TFP)[0]
    absolute = absolute_onehot(PLAIN, plain, counts)  # (1, 2, 5, 96) over 2-token clusters
    region = scores[..., 2: 194].reshape(1, 2, 3, 96, 2)
    want = torch.einsum("bhkg,bhrgs->bhrks", absolute, region).reshape(1, 2, 3, 10)
    want = torch.cat([scores[..., :2], want, scores[..., 194:]], dim=-1)
    back = scores.clone()
    back[..., 2:194] *= absolute.sum(-2).repeat_interleave(2, -1)[:, :, None]
    for chain in (False, True):
        picked, scattered = (x.double() for x in out[chain])
        assert torch.allclose(picked, want, atol=1e-3), chain
        assert torch.allclose(scattered, back, atol=1e-3), chain
    deep = dynamic.hierarchy(DEEP.dynamic_spec(), 224, budget_tokens(0.25, 224))
    for n in range(225, 224 + STEPS):  # the deepened MPC case above runs the chain
        step = dynamic.step_counts(deep, n, budget_tokens(0.25, n))
        assert len(step.sizes) == 3 and chain_last_level(step, 4), step
    llama3 = resolve_method("mpcache", 0.05).plan().dynamic
    for n, chained in ((4096, False), (16384, True)):
        budget = budget_tokens(0.05, n)
        step = dynamic.step_counts(dynamic.hierarchy(llama3, n, budget), n, budget)
        assert chain_last_level(step, 32) is chained


def test_query_scores_serve_only_the_same_shares_of_the_query():
    """The keys take the policy's precomputed q K^T only for the very shares it was
    computed from: another secret (even of the same values), another encoding or
    another shape computes its own scores."""
    from crypten_mpcache.secure.cache.attended import QueryScores

    def run():
        import crypten

        q = crypten.cryptensor(torch.ones(1, 2, 3, 4))
        held = QueryScores(q, "scores")
        same_values = crypten.cryptensor(torch.ones(1, 2, 3, 4))
        rescaled = q.clone()
        rescaled._tensor.encoder = crypten.encoder.FixedPointEncoder(precision_bits=0)
        return (held.for_query(q), held.for_query(q.clone()), held.for_query(same_values),
                held.for_query(rescaled), held.for_query(q.reshape(1, 2, 4, 3)))

    assert launch(run, config=TFP)[0] == ("scores", "scores", None, None, None)
