"""``crypten-mpcache bench``: shapes, config validation, JSON schema, data-independence of
the transcript, report ratios and the CLI (tiny shapes, TFP dealer, one decode step)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from crypten_mpcache.bench.report import format_report, ratios
from crypten_mpcache.bench.runner import BenchConfig, check_memory, memory_estimate_gb, run_bench
from crypten_mpcache.bench.shapes import SHAPES, get_shape
from crypten_mpcache.bench.variants import known_variants, resolve
from crypten_mpcache.cli import main
from crypten_mpcache.config import MPCacheConfig
from crypten_mpcache.runtime.network import LAN, WAN

ROW_KEYS = {"shape", "layers", "context", "cache", "budget", "dealer", "bytes", "rounds",
            "seconds", "lan_seconds", "wan_seconds", "static_bytes", "static_rounds",
            "operators", "bytes_per_party", "per_layer", "model_estimate", "online_bytes",
            "online_rounds", "online_lan_seconds", "online_wan_seconds", "dealer_bytes",
            "dealer_rounds", "activation", "comparison"}
# budget 0.2: at 512 tokens 103 tokens, above the forced sink + recent tokens (32), so
# MPCache's decode step runs a secure top-k (5% would give k = 0 and select nothing)
TINY = BenchConfig(shape="tiny", layers=2, contexts=(64, 512), caches=("full",),
                   dealer="tfp", steps=1, budget=0.2)


def _topk_bytes(row: dict) -> int:
    return row["operators"].get("topk", {}).get("bytes", 0)


def _caches() -> tuple[str, ...]:
    """The baseline, the tuned default and the authors' configuration."""
    return ("full", "mpcache", "mpcache:paper")


@pytest.fixture(scope="module")
def tiny_run() -> dict:
    return run_bench(replace(TINY, caches=_caches())).as_dict()


@pytest.fixture(scope="module")
def other_values_run() -> dict:
    """Same public shapes, different random weights/cache values, distinct weights."""
    config = replace(TINY, caches=_caches(), seed=7, share_weights=False)
    return run_bench(config).as_dict()


def test_real_shapes() -> None:
    llama2, llama3, smol = SHAPES["llama2-7b"], SHAPES["llama3-8b"], SHAPES["smollm2"]
    assert (llama2.hidden, llama2.heads, llama2.kv_heads, llama2.head_dim, llama2.mlp) == \
        (4096, 32, 32, 128, 11008)
    assert (llama3.hidden, llama3.heads, llama3.kv_heads, llama3.mlp) == (4096, 32, 8, 14336)
    assert (smol.hidden, smol.heads, smol.kv_heads, smol.head_dim, smol.mlp) == \
        (576, 9, 3, 64, 1536)
    config = llama3.llama_config(2)
    assert config.num_key_value_heads == 8 and config.num_hidden_layers == 2
    with pytest.raises(ValueError, match="unknown shape"):
        get_shape("gpt5")


@pytest.mark.parametrize("change, message", [
    ({"layers": 0}, "layers"), ({"contexts": ()}, "contexts"),
    ({"contexts": (64, 64)}, "repeat"), ({"caches": ("nope",)}, "unknown cache"),
    ({"budget": 0.0}, "budget"), ({"dealer": "x"}, "dealer"), ({"steps": 0}, "steps"),
    ({"activation": "relu"}, "activation"),
])
def test_config_rejects_bad_input(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        replace(TINY, **change)


def test_memory_estimate_and_check() -> None:
    one_layer = BenchConfig(shape="llama2-7b", layers=1, contexts=(4096,), caches=("full",))
    # measured: ~11 GB peak over 2 parties + TTP for one layer at 512 tokens
    assert 8.0 < memory_estimate_gb(one_layer, 512) < 14.0
    more = replace(one_layer, layers=4)
    assert memory_estimate_gb(more, 4096) > memory_estimate_gb(one_layer, 4096) + 3.0
    with pytest.raises(ValueError, match="exceeds the limit"):
        check_memory(replace(one_layer, max_memory_gb=4.0))


def test_json_schema(tiny_run: dict) -> None:
    rows = tiny_run["rows"]
    assert len(rows) == len(TINY.contexts) * len(_caches())
    for row in rows:
        assert ROW_KEYS <= set(row)
        assert row["bytes"] > 0 and row["rounds"] > 0 and row["seconds"] > 0
        assert row["bytes_per_party"] <= row["bytes"]
        assert row["lan_seconds"] == pytest.approx(
            LAN.latency(row["seconds"], row["rounds"], row["bytes_per_party"]))
        assert row["wan_seconds"] == pytest.approx(
            WAN.latency(row["seconds"], row["rounds"], row["bytes_per_party"]))
        for kind in ("softmax", "linear", "norm", "activation"):
            assert {"bytes", "rounds", "seconds", "dealer_bytes"} <= set(row["operators"][kind])
        assert sum(op["bytes"] for op in row["operators"].values()) == pytest.approx(
            row["bytes"], rel=1e-9)
        assert row["per_layer"]["bytes"] == pytest.approx(row["bytes"] / row["layers"])
        # TFP: party 0 deals locally; only the DCF keys it sends party 1 (the default
        # hybrid's small calls) count as dealer traffic, and online is the rest
        assert row["comparison"] == "hybrid" and row["dealer_bytes"] > 0
        assert (row["online_bytes"], row["online_rounds"]) == (
            row["bytes"] - row["dealer_bytes"], row["rounds"] - row["dealer_rounds"])
    json.dumps(tiny_run)  # JSON-ready


def test_full_cache_grows_with_context(tiny_run: dict) -> None:
    full = {r["context"]: r for r in tiny_run["rows"] if r["cache"] == "full"}
    assert full[512]["operators"]["softmax"]["bytes"] > full[64]["operators"]["softmax"]["bytes"]
    assert full[512]["attended_max"] == 513  # the whole cache plus the new token
    assert full[64]["static_bytes"] == 0  # the full cache evicts nothing


def test_fused_projections_open_the_input_once_each(tiny_run: dict) -> None:
    """q/k/v are one product and gate/up another: a layer's decode step opens a masked
    input four times (qkv, o, gate_up, down), not seven."""
    for row in tiny_run["rows"]:
        assert row["operators"]["linear"]["rounds"] == 4 * row["layers"] * row["steps"]


def test_openings_that_need_only_known_values_share_a_round(tiny_run: dict) -> None:
    """A selecting layer opens its query ONCE for every level's cluster scores and the
    attention's q K^T (all need only q): one similarity round per layer and step, none
    left for the attention scores. Premasked rows open beside their first product (the
    step's K and V with q K^T, the selection's one-hots with the pick): premasking bytes,
    no premasking round. The full cache (and a cache too short to select, 64 tokens)
    keeps its one attention-scores round."""
    for row in tiny_run["rows"]:
        per_step = row["layers"] * row["steps"]
        ops = row["operators"]
        where = (row["cache"], row["context"])
        assert ops["premask"]["bytes"] > 0 and ops["premask"]["rounds"] == 0, where
        if row["cache"] == "full" or row["context"] == 64:
            assert ops["attention_scores"]["rounds"] == per_step, where
            continue
        assert ops["similarity"]["rounds"] == per_step, where
        assert ops.get("attention_scores", {}).get("rounds", 0) == 0, where
        assert ops["pick"]["rounds"] == per_step, where


def _transcript(result: dict) -> list[tuple]:
    return [(r["context"], r["cache"], r["bytes"], r["rounds"], r["static_bytes"],
             r["static_rounds"], tuple((k, v["bytes"], v["rounds"])
                                       for k, v in sorted(r["operators"].items())))
            for r in result["rows"]]


def test_transcript_independent_of_values(tiny_run: dict, other_values_run: dict) -> None:
    """Different weights and cache values, distinct instead of shared weights: the same
    bytes and rounds per step, per operator, and for the static stage; with a top-k
    that selects clusters (different values select different clusters)."""
    assert _transcript(tiny_run) == _transcript(other_values_run)
    for run in (tiny_run, other_values_run):
        for cache in ("mpcache", "mpcache:paper"):
            row = next(r for r in run["rows"] if r["cache"] == cache and r["context"] == 512)
            assert _topk_bytes(row) > 0, cache


def test_full_vs_full_ratio_is_one(tiny_run: dict, other_values_run: dict) -> None:
    full = [r for r in tiny_run["rows"] if r["cache"] == "full"]
    copies = [dict(r, cache="full-again") for r in other_values_run["rows"]
              if r["cache"] == "full"]
    found = ratios(full + copies)
    assert len(found) == len(full)
    for q in found:
        assert q["bytes"] == 1.0 and q["rounds"] == 1.0
    assert "full-again" in format_report({"config": tiny_run["config"], "rows": full + copies})


@pytest.mark.parametrize("cache", ["mpcache", "mpcache:paper"])
def test_mpcache_respects_budget(tiny_run: dict, cache: str) -> None:
    """At 512 tokens 20% (103 tokens): the decode step selects clusters with a secure
    top-k and attends to no more, the new token included. Both pay a one-time cost at the end of
    prefill (premasking the cluster representatives); the authors' configuration adds
    static eviction (a secure top-k and the compaction) to it."""
    row = next(r for r in tiny_run["rows"] if r["cache"] == cache and r["context"] == 512)
    seen = row["context"] + row["steps"]
    assert row["budget"] == 0.2
    assert row["attended_max"] <= math.ceil(row["budget"] * seen)
    assert row["attended_max"] > 32  # more than the forced sink + recent tokens
    assert _topk_bytes(row) > 0 and row["operators"]["topk"]["rounds"] > 0
    assert row["static_bytes"] > 0 and row["static_rounds"] > 0
    if cache == "mpcache:paper":
        tuned = next(r for r in tiny_run["rows"] if r["cache"] == "mpcache" and r["context"] == 512)
        assert row["static_rounds"] > tuned["static_rounds"]
    full = next(r for r in tiny_run["rows"] if r["cache"] == "full" and r["context"] == 512)
    assert row["operators"]["softmax"]["bytes"] < full["operators"]["softmax"]["bytes"]


def test_variants_resolve() -> None:
    assert resolve("full").policy == "full"
    assert resolve("mpcache").overrides == MPCacheConfig.default_overrides()
    assert resolve("mpcache:paper").overrides == {}
    assert set(known_variants()) >= {"mpcache", "mpcache:paper", "mpcache:no-sharing"}
    with pytest.raises(ValueError, match="unknown cache"):
        resolve("mpcache:nothing")


def test_cli_errors_are_one_line(capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "--shape", "tiny", "--cache", "bogus"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("crypten-mpcache bench: error: unknown cache") and "\n" not in err
    assert main(["bench", "--shape", "tiny", "--json", "/no/such/dir/x.json"]) == 2
    assert main(["bench", "--shape", "tiny", "--plot", "/tmp/x.jpg"]) == 2
    assert main(["bench", "--context", "a,b"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(e.startswith("crypten-mpcache bench: error:") for e in err)


def test_cli_report_only(tiny_run: dict, tmp_path) -> None:
    source = tmp_path / "run.json"
    source.write_text(json.dumps(tiny_run))
    png, md = tmp_path / "out.png", tmp_path / "out.md"
    code = main(["bench", "--report-only", str(source), "--plot", str(png),
                 "--markdown", str(md)])
    assert code == 0 and png.stat().st_size > 1000
    assert "MiB/step" in md.read_text()


def test_eviction_bounds_split_the_measured_rows(tiny_run: dict) -> None:
    """The split adds up to each row's online totals, and the measured ratio lies below
    both ceilings (a free selection, then free attention as well)."""
    from crypten_mpcache.bench import bounds

    found = bounds.pairs(tiny_run["rows"])
    assert [full["context"] for full, _ in found] == [64, 512]
    for full, cache in found:
        for key in ("bytes", "rounds"):
            s = bounds.split(full, cache, key)
            assert math.isclose(s.full, full[f"online_{key}"], rel_tol=1e-9)
            assert math.isclose(s.cache, cache[f"online_{key}"], rel_tol=1e-9)
            x = s.ratios()
            assert x["measured"] <= x["free_selection"] <= x["free_attention"]
        for profile in (LAN, WAN):
            x = bounds.latency_ratios(full, cache, profile)
            assert x["measured"] <= x["free_selection"] <= x["free_attention"]
    lines = bounds.table(tiny_run["rows"])
    assert len(lines) == 2 + 4 * len(found) and "free selection" in lines[0]
    assert "\n".join(lines) in format_report(tiny_run)  # the bench report prints it
