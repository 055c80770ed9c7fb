"""The evaluation harness: metric definitions, task construction, a tiny end-to-end run.

The tiny run uses a Llama built from a config (random weights) and the real SmolLM2
tokenizer on short contexts; it checks the JSON schema and the run folder, not accuracy.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import crypten_mpcache  # noqa: F401  (CrypTen patches first)
from crypten_mpcache import assets
from crypten_mpcache.cli import build_parser, main
from crypten_mpcache.cli import eval as eval_cli
from crypten_mpcache.eval import methods, metrics, report, tasks
from crypten_mpcache.eval.runner import EvalConfig, aggregate, run_eval

# --- metrics -------------------------------------------------------------------------


def test_normalize_and_f1_known_values() -> None:
    assert metrics.normalize_answer("The  Cat, sat!") == "cat sat"
    assert metrics.token_f1("the cat sat", "a cat sat") == pytest.approx(1.0)
    # prediction "cat sat on mat" vs reference "cat sat": P = 2/4, R = 1 -> F1 = 2/3
    assert metrics.token_f1("cat sat on the mat", "The cat sat.") == pytest.approx(2 / 3)
    assert metrics.token_f1("dog", "cat") == 0.0
    assert metrics.token_f1("", "cat") == 0.0


def test_wilson_interval_known_values() -> None:
    low, high = metrics.wilson_interval(5, 10)
    assert (low, high) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    low, high = metrics.wilson_interval(10, 10)
    assert high == 1.0 and low == pytest.approx(0.7225, abs=1e-4)
    assert metrics.wilson_interval(0, 10)[0] == 0.0


def test_summaries() -> None:
    s = metrics.summarize("exact_match", [1, 1, 0, 1])
    assert s.score == 0.75 and s.n == 4 and s.ci_low < 0.75 < s.ci_high
    p = metrics.summarize("perplexity", [2.0, 2.0, 2.0])
    assert p.perplexity == pytest.approx(math.exp(2.0)) and p.score == pytest.approx(
        math.exp(-2.0))
    f = metrics.summarize("f1", [0.5])
    assert (f.ci_low, f.ci_high) == (0.5, 0.5)


# --- tasks ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(assets.smollm2_folder())


@pytest.fixture(scope="module")
def hay(tokenizer) -> tasks.Haystack:
    return tasks.Haystack(tokenizer, assets.essay_texts()[:4])


@pytest.mark.parametrize("style", tasks.PROMPT_STYLES)
@pytest.mark.parametrize("task", ["passkey", "needle", "kv-retrieval"])
def test_fact_inside_context_at_depth(hay, tokenizer, task, style) -> None:
    cfg = tasks.TaskConfig(style=style)
    for sample in tasks.build_samples(task, hay, cfg, 512, 5, seed=3):
        assert abs(sample.length - 512) <= 32
        start, n = sample.meta["fact_start"], sample.meta["fact_len"]
        fact = tokenizer.decode(list(sample.context_ids[start:start + n]))
        assert sample.answer in fact
        assert sample.answer not in tokenizer.decode(list(sample.query_ids))
        assert abs(sample.meta["fact_depth"] - sample.meta["depth"]) < 0.1


def test_samples_are_deterministic(hay) -> None:
    cfg = tasks.TaskConfig()
    a = tasks.build_samples("passkey", hay, cfg, 256, 3, seed=1)
    b = tasks.build_samples("passkey", hay, cfg, 256, 3, seed=1)
    c = tasks.build_samples("passkey", hay, cfg, 256, 3, seed=2)
    assert a == b and a != c
    assert len({s.answer for s in a}) == 3


def test_ppl_sample_is_real_continuation(hay) -> None:
    (s,) = tasks.build_samples("ppl", hay, tasks.TaskConfig(ppl_tokens=16), 300, 1, seed=0)
    assert len(s.context_ids) == 300 and len(s.target_ids) == 16 and not s.query_ids
    joined = s.context_ids + s.target_ids
    text = "".join(str(t) + "," for t in hay.ids)
    assert "".join(str(t) + "," for t in joined) in text


# --- registry and CLI ----------------------------------------------------------------


def test_registry_names_and_errors() -> None:
    assert methods.resolve("full", None).is_full
    with pytest.raises(ValueError):
        methods.resolve("nope", 0.1)
    with pytest.raises(ValueError):
        methods.resolve("mpcache", 1.5)


def test_cli_bad_input_is_one_line_error(capsys) -> None:
    assert main(["eval", "--task", "bogus"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("crypten-mpcache eval: error:") and "\n" not in err
    assert main(["eval", "--method", "full,magic"]) == 2
    assert main(["eval", "--budget", "0,0.1"]) == 2


def test_cli_default_out_dir_is_the_ignored_runs_folder() -> None:
    # Raw predictions are large and per-machine: by default they go to the git-ignored
    # top-level runs/, never into the tracked results/ tree.
    args = build_parser().parse_args(["eval"])
    out_dir = EvalConfig(**eval_cli.config_options(args)).out_dir
    assert out_dir == EvalConfig().out_dir == "runs"
    gitignore = (Path(__file__).resolve().parents[1] / ".gitignore").read_text().split()
    assert "/runs/" in gitignore


# --- tiny end-to-end -----------------------------------------------------------------


def _tiny_llama(vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=1024)
    return LlamaForCausalLM(cfg).eval()


ROW_KEYS = {"task", "method", "budget", "context", "query_at", "metric", "score", "n",
            "ci_low", "ci_high"}


def test_tiny_eval_end_to_end(tokenizer, tmp_path) -> None:
    model = _tiny_llama(len(tokenizer))
    cfg = EvalConfig(tasks=("passkey", "ppl"), contexts=(192,),
                     methods=("full", "mpcache", "streaming"),
                     budgets=(0.5,), samples=1, ppl_tokens=4, out_dir=str(tmp_path),
                     run_name="tiny")
    result = run_eval(cfg, model, tokenizer, texts=assets.essay_texts()[:2], progress=False)
    rows = result["rows"]
    assert rows and all(ROW_KEYS <= set(r) for r in rows)
    assert all(0.0 <= r["score"] <= 1.0 for r in rows if r["metric"] != "perplexity")
    assert all(r["perplexity"] > 1.0 for r in rows if r["task"] == "ppl")
    assert {r["query_at"] for r in rows} == {"prefill", "chunk", "none"}
    available = {r["method"] for r in rows}
    assert "full" in available and available | set(result["unavailable"]) == {
        "full", "mpcache", "streaming"}
    folder = tmp_path / "tiny"
    assert json.loads((folder / "config.json").read_text())["contexts"] == [192]
    preds = [json.loads(x) for x in (folder / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == sum(r["n"] for r in rows)
    assert json.loads((folder / "metrics.json").read_text())["rows"] == rows
    assert report.load_rows([folder]) == rows  # an unfinished run folder aggregates too
    # Resuming the same run name re-runs nothing and gives the same rows.
    again = run_eval(cfg, model, tokenizer, texts=assets.essay_texts()[:2], progress=False)
    assert again["rows"] == rows
    assert len((folder / "predictions.jsonl").read_text().splitlines()) == len(preds)
    # Another command in the same folder: its own rows, every cell under folder_rows, and
    # the earlier commands' configs under history.
    more = run_eval(replace(cfg, tasks=("passkey",), methods=("full",)), model, tokenizer,
                    texts=assets.essay_texts()[:2], progress=False)
    assert {r["method"] for r in more["rows"]} == {"full"}
    assert more["folder_rows"] == rows
    saved = json.loads((folder / "config.json").read_text())
    assert saved["methods"] == ["full"] and len(saved["history"]) == 2
    assert saved["history"][0]["methods"] == ["full", "mpcache", "streaming"]
    assert json.loads((folder / "metrics.json").read_text())["folder_rows"] == rows
    # Report and plots from the JSON.
    path = tmp_path / "r.json"
    path.write_text(json.dumps(result))
    md = report.markdown(report.load_rows([path]), "cmd")
    assert "Budget-to-parity" in md and "| mpcache |" in md
    from crypten_mpcache.eval.plots import plot_all

    pngs = plot_all(rows, tmp_path / "plot.png")
    assert len(pngs) == 2 and all(p.stat().st_size > 1000 for p in pngs)


def test_full_cache_same_logits_in_both_query_modes(tokenizer, hay) -> None:
    """With no eviction, feeding the question after prefill changes nothing."""
    from crypten_mpcache.eval.decoding import Unit, _feed

    model = _tiny_llama(len(tokenizer))
    (s,) = tasks.build_samples("passkey", hay, tasks.TaskConfig(), 160, 1, seed=0)
    spec = methods.resolve("full", None)
    with torch.inference_mode():
        a, _, pa = _feed(model, Unit(s, 160, "prefill", spec))
        b, _, pb = _feed(model, Unit(s, 160, "decode", spec))
        c, _, pc = _feed(model, Unit(s, 160, "chunk", spec))
    assert pa == pb == pc == s.length
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-4)


def test_chunk_query_is_attended_densely_after_static_eviction(tokenizer, hay) -> None:
    """``chunk``: the question enters as one extend forward (dense over the evicted cache),
    then each generated token selects; ``decode``: every question token selects."""
    from crypten_mpcache import plaintext
    from crypten_mpcache.eval.decoding import Unit, _feed

    model = _tiny_llama(len(tokenizer))
    (s,) = tasks.build_samples("passkey", hay, tasks.TaskConfig(), 400, 1, seed=0)
    spec = methods.resolve("mpcache", 0.2)
    n_ctx, n_q = len(s.context_ids), len(s.query_ids)
    phases = {}
    for mode in ("chunk", "decode"):
        with torch.inference_mode(), plaintext.apply(model, spec.config) as session:
            _, cache, pos = _feed(model, Unit(s, 400, mode, spec))
        assert pos == s.length and cache.get_seq_length() == s.length
        phases[mode] = [r["phase"] for r in session.records if r["layer"] == 0]
        last = session.records[-1]["positions"]
        assert int(last.max()) == s.length - 1  # the question keeps its true positions
    assert phases["chunk"] == ["prefill", "extend"]
    assert phases["decode"] == ["prefill"] + ["decode"] * n_q
    assert n_ctx + n_q == s.length


def test_registry_mpcache_is_tuned_default_and_paper_preset() -> None:
    from crypten_mpcache.config import MPCacheConfig

    tuned = methods.resolve("mpcache", 0.2).config
    paper = methods.resolve("mpcache:paper", 0.2).config
    assert tuned == MPCacheConfig.from_budget(0.2, **MPCacheConfig.default_overrides())
    assert paper == MPCacheConfig.from_budget(0.2)
    assert MPCacheConfig() == MPCacheConfig.paper()  # dataclass defaults = the authors'
    assert not tuned.static and not tuned.index_sharing and tuned.selection_scope == "layer"
    assert paper.static and paper.index_sharing and paper.selection_scope == "kv_head"
    assert MPCacheConfig.default(budget=0.1).budget == 0.1
    # without the static stage the level ratios are of the whole cache; the tuned coarse
    # level keeps max(0.25, 2 x budget), the authors' max(0.5, 2 x budget)
    assert tuned.keep_ratios == (0.4, 0.2) and paper.keep_ratios == (0.666666, 0.333333)
    assert tuned.cluster_sizes == (32, 8) and paper.cluster_sizes == (32, 16)
    with pytest.raises(ValueError):
        MPCacheConfig.default(alpha=2.0)


def test_variant_names_mean_the_same_config_in_eval_and_bench() -> None:
    from crypten_mpcache.bench.variants import resolve as bench_resolve
    from crypten_mpcache.config import MPCacheConfig

    for name in ("mpcache", "mpcache:paper", "mpcache:no-sharing", "mpcache:maxbound"):
        bench_config = MPCacheConfig.from_budget(0.05, **bench_resolve(name).overrides)
        assert methods.resolve(name, 0.05).config == bench_config, name


def test_budget_to_parity() -> None:
    rows = [dict(task="t", context=1, query_at="q", method="full", budget=1.0, score=1.0),
            dict(task="t", context=1, query_at="q", method="a", budget=0.1, score=0.5),
            dict(task="t", context=1, query_at="q", method="a", budget=0.2, score=0.96),
            dict(task="t", context=1, query_at="q", method="a", budget=0.5, score=1.0),
            dict(task="t", context=1, query_at="q", method="b", budget=0.5, score=0.9)]
    btp = report.budget_to_parity(rows)
    assert btp[("t", 1, "q", "a")] == 0.2 and btp[("t", 1, "q", "b")] is None


def test_aggregate_groups_full_once() -> None:
    recs = [dict(task="passkey", method="full", budget=None, context=8, query_at="prefill",
                 value=v) for v in (1.0, 0.0)]
    (row,) = aggregate(recs)
    assert row["budget"] == 1.0 and row["score"] == 0.5 and row["n"] == 2


def test_sharded_run_equals_one_run(tokenizer, tmp_path) -> None:
    """Two shards in one folder run every unit exactly once and report like one run."""
    model = _tiny_llama(len(tokenizer))
    base = EvalConfig(tasks=("passkey",), contexts=(160,), methods=("full", "mpcache"),
                      budgets=(0.5,), query_at=("prefill",), samples=3, out_dir=str(tmp_path))
    texts = assets.essay_texts()[:2]
    whole = run_eval(replace(base, run_name="whole"), model, tokenizer, texts=texts,
                     progress=False)
    for index in (0, 1):
        run_eval(replace(base, run_name="split", shard_index=index, shard_count=2), model,
                 tokenizer, texts=texts, progress=False)
    folder = tmp_path / "split"
    files = sorted(p.name for p in folder.glob("predictions*.jsonl"))
    assert files == ["predictions-0-of-2.jsonl", "predictions-1-of-2.jsonl"]
    counts = [len(p.read_text().splitlines()) for p in sorted(folder.glob("predictions*"))]
    assert counts == [3, 3]  # 6 units: 3 samples x (full, mpcache at 0.5), interleaved
    split_rows = report.load_rows([folder])
    assert sorted(split_rows, key=str) == sorted(whole["rows"], key=str)
    with pytest.raises(ValueError):
        replace(base, shard_index=2, shard_count=2)


def test_mpcache_knobs_in_a_method_name() -> None:
    """``mpcache+field=value`` evaluates a candidate config without new code."""
    from crypten_mpcache.config import MPCacheConfig

    spec = methods.resolve("mpcache+selection_scope=kv_head+cluster_sizes=16/8", 0.2)
    assert spec.config == MPCacheConfig.from_budget(
        0.2, **{**MPCacheConfig.default_overrides(), "selection_scope": "kv_head",
                "cluster_sizes": (16, 8)})
    assert methods.resolve("mpcache:paper+index_sharing=false", 0.1).config.index_sharing \
        is False
    for bad in ("mpcache+nope=1", "mpcache+alpha", "mpcache+static=maybe",
                "mpcache+budget=0.1", "mpcache+alpha=7"):
        with pytest.raises((ValueError, methods.MethodUnavailable)):
            methods.resolve(bad, 0.2)


def test_cli_shard_device_and_knob_errors(capsys) -> None:
    assert main(["eval", "--shard", "3"]) == 2
    assert main(["eval", "--shard", "2/2"]) == 2
    assert main(["eval", "--device", "tpu"]) == 2
    assert main(["eval", "--method", "mpcache+alpha=x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(e.startswith("crypten-mpcache eval: error:") for e in err)


def test_device_resolution() -> None:
    from crypten_mpcache.eval.runner import resolve_device

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")


def test_workers_share_one_run_folder(tokenizer, tmp_path) -> None:
    """``--workers 2`` runs two shard processes; the parent reports every unit once."""
    from crypten_mpcache.testing import save_tiny_llama

    folder = save_tiny_llama(tmp_path / "tiny", seed=0, vocab=len(tokenizer), max_positions=512)
    tokenizer.save_pretrained(folder)
    out = tmp_path / "runs"
    argv = ["--task", "passkey", "--context", "160", "--method", "full,streaming",
            "--budget", "0.5", "--query-at", "prefill", "--samples", "2", "--out-dir",
            str(out), "--run-name", "w", "--model-folder", folder, "--workers", "2",
            "--no-progress", "--json", str(tmp_path / "w.json")]
    assert main(["eval", *argv]) == 0
    files = sorted(p.name for p in (out / "w").glob("predictions*.jsonl"))
    assert files == ["predictions-0-of-2.jsonl", "predictions-1-of-2.jsonl"]
    rows = json.loads((tmp_path / "w.json").read_text())["rows"]
    assert {(r["method"], r["n"]) for r in rows} == {("full", 2), ("streaming", 2)}
    # Everything is done: a second identical command runs no worker unit again.
    before = [p.read_text() for p in sorted((out / "w").glob("predictions*.jsonl"))]
    assert main(["eval", *argv]) == 0
    assert [p.read_text() for p in sorted((out / "w").glob("predictions*.jsonl"))] == before


def test_parallel_progress_counts_only_this_commands_units(tmp_path) -> None:
    """A resumed folder holds other commands' units: the progress bar must not count them
    (it showed 200/200 at the start of a new command in a used folder)."""
    import json

    from crypten_mpcache.eval.parallel import finished

    lines = [json.dumps({"key": k}) for k in ("a", "b", "other")]
    (tmp_path / "predictions-0-of-2.jsonl").write_text("\n".join(lines[:2]) + "\n")
    (tmp_path / "predictions-1-of-2.jsonl").write_text(lines[2] + "\n")
    assert finished(tmp_path, ["a", "b", "c"]) == 2
    assert finished(tmp_path, ["c"]) == 0
    assert finished(tmp_path / "missing", ["a"]) == 0
