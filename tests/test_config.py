"""MPCacheConfig: defaults, validation, presets, lowering to a MethodPlan."""

from __future__ import annotations

import pytest

from crypten_mpcache.algorithm.plan import budget_tokens, resolve_tokens
from crypten_mpcache.config import MPCacheConfig


def test_paper_defaults() -> None:
    cfg = MPCacheConfig.paper()
    assert cfg.static_keep == 0.3 and cfg.window_ratio == 0.2 and cfg.long_window_ratio == 0.1
    assert cfg.cluster_sizes == (32, 16) and cfg.keep_ratios == (0.5, 0.2)
    assert cfg.alpha == 0.6 and cfg.similarity == "linear" and cfg.index_sharing
    assert (cfg.alone_head, cfg.alone_tail) == (2, 2) and cfg.budget is None
    assert MPCacheConfig() == cfg


@pytest.mark.parametrize("kwargs, match", [
    ({"static_keep": 1.5}, "static_keep"),
    ({"static_keep": 0.1}, "observation window"),
    ({"static_keep": -3}, "static_keep"),
    ({"budget": 0.0}, "budget"),
    ({"window_ratio": 0.0}, "window_ratio"),
    ({"cluster_sizes": (32, 12)}, "multiple"),
    ({"cluster_sizes": (32,)}, "one entry per level"),
    ({"keep_ratios": (0.5, 0.0)}, "keep ratios"),
    ({"alpha": 1.2}, "alpha"),
    ({"similarity": "cosine"}, "similarity"),
    ({"static_scope": "head"}, "static_scope"),
    ({"recent_tokens": 0}, "recent_tokens"),
    ({"sink_tokens": -1}, "sink_tokens"),
    ({"coarse_floor": 0.0}, "coarse_floor"),
    ({"coarse_floor": 1.5}, "coarse_floor"),
])
def test_validation_errors(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        MPCacheConfig(**kwargs)


def test_frozen() -> None:
    with pytest.raises(AttributeError):
        MPCacheConfig().alpha = 0.5  # type: ignore[misc]


def test_from_budget_derivation() -> None:
    paperish = MPCacheConfig.from_budget(0.05)
    assert paperish.static_keep == pytest.approx(0.3)
    assert paperish.budget == 0.05
    assert paperish.keep_ratios[-1] == pytest.approx(0.05 / 0.3, abs=1e-5)
    assert paperish.keep_ratios[0] == 0.5
    wide = MPCacheConfig.from_budget(0.3)
    assert wide.static_keep == pytest.approx(0.8) and wide.keep_ratios[0] == pytest.approx(0.75)
    assert MPCacheConfig.from_budget(1.0).static_keep == 1.0
    counted = MPCacheConfig.from_budget(256, similarity="maxbound")
    assert counted.budget == 256 and counted.similarity == "maxbound"
    with pytest.raises(ValueError):
        MPCacheConfig.from_budget(0.0)
    # coarse_floor: each coarser level keeps max(floor, 2 x the next ratio)
    lean = MPCacheConfig.from_budget(0.05, static=False, coarse_floor=0.25)
    assert lean.keep_ratios == (0.25, 0.05)
    assert MPCacheConfig.from_budget(0.2, static=False, coarse_floor=0.25).keep_ratios == \
        (0.4, 0.2)
    three = MPCacheConfig.from_budget(0.05, static=False, cluster_sizes=(64, 32, 8),
                                      keep_ratios=(1.0, 1.0, 1.0), coarse_floor=0.1)
    assert three.keep_ratios == (0.2, 0.1, 0.05)


def test_plan_lowering_switches() -> None:
    plan = MPCacheConfig().plan()
    assert plan.decode == "select" and plan.static is not None and plan.share_layers
    assert plan.dynamic.cluster_sizes == (32, 16)
    flat = MPCacheConfig(hierarchy=False).plan()
    assert flat.dynamic.cluster_sizes == (16,) and flat.dynamic.keep_ratios == (0.2,)
    assert MPCacheConfig(dynamic=False).plan().decode == "full"
    assert MPCacheConfig(static=False).plan().static is None
    assert not MPCacheConfig(index_sharing=False).plan().share_layers


def test_amounts() -> None:
    assert resolve_tokens(0.2, 1000) == 200
    assert resolve_tokens(0.25, 10) == 3
    assert resolve_tokens(64, 1000) == 64
    # a decode budget is "at most": rounded down, never above the ratio
    assert budget_tokens(0.05, 2048) == 102 and budget_tokens(0.05, 2064) == 103
    assert budget_tokens(0.2, 1000) == 200 and budget_tokens(0.01, 10) == 1
    assert budget_tokens(64, 1000) == 64
    for seen in range(20, 3000, 37):
        assert budget_tokens(0.05, seen) <= 0.05 * seen


# --- one name + one budget = one config, at every entry point ---------------------------

KNOBBED = ("mpcache+cluster_sizes=16/8", "mpcache:paper+index_sharing=false",
           "mpcache+selection_scope=kv_head+coarse_floor=0.3")


@pytest.mark.parametrize("budget", [0.05, 0.2, 1.0, 64, 1])
def test_every_entry_point_gives_the_same_config(budget) -> None:
    """eval, bench, generate (CLI and Python API) and the presets agree with
    ``resolve_method`` for every name, ratio and count budgets and knobs included."""
    from crypten_mpcache.bench.variants import resolve as bench_variant
    from crypten_mpcache.cli import build_parser
    from crypten_mpcache.config import is_mpcache_variant
    from crypten_mpcache.eval import methods as eval_methods
    from crypten_mpcache.methods import known_methods, resolve_method
    from crypten_mpcache.private import PrivateGenerationConfig

    for name in (*known_methods(), *KNOBBED):
        expected = resolve_method(name, budget)
        assert expected.plan() is not None
        if name != "full":
            assert eval_methods.resolve(name, budget).config == expected, name
        if not is_mpcache_variant(name):
            continue
        policy = bench_variant(name).create(budget, n_layers=30)
        assert policy.plan == expected.plan(), name  # the policy runs the resolved plan
        assert PrivateGenerationConfig(cache=name, budget=budget).method_config() == \
            expected, name
        args = build_parser().parse_args(["generate", "--cache", name, "--budget", str(budget)])
        assert PrivateGenerationConfig(cache=args.cache, budget=args.budget).method_config() \
            == expected, name
    assert MPCacheConfig.default(budget=budget) == resolve_method("mpcache", budget)
    assert MPCacheConfig.from_budget(budget) == resolve_method("mpcache:paper", budget)
    assert MPCacheConfig.default(budget=budget, cluster_sizes=(16, 8)) == \
        resolve_method("mpcache+cluster_sizes=16/8", budget)
    paper = PrivateGenerationConfig(cache="mpcache", budget=budget,
                                    mpcache=MPCacheConfig.paper()).method_config()
    assert paper == resolve_method("mpcache:paper", budget)


def test_resolve_method_without_budget_and_errors() -> None:
    from crypten_mpcache.algorithm.baselines import FullCacheConfig, StreamingLLMConfig
    from crypten_mpcache.methods import resolve_method
    from crypten_mpcache.private import PrivateGenerationConfig

    assert resolve_method("full") == resolve_method("full", 0.1) == FullCacheConfig()
    assert resolve_method("mpcache") == MPCacheConfig.default()  # level ratios, no cap
    assert resolve_method("mpcache:paper") == MPCacheConfig.paper()
    assert PrivateGenerationConfig(cache="mpcache").method_config() == MPCacheConfig.default()
    assert resolve_method("streaming", 0.1) == StreamingLLMConfig(budget=0.1)
    assert resolve_method("streaming", 0.1).plan().name == "streaming"
    # an int count only sets the cap: the variant's level ratios stay
    assert resolve_method("mpcache", 64).keep_ratios == MPCacheConfig.default().keep_ratios
    with pytest.raises(ValueError, match=r"unknown method 'streamingllm'; known: full, "):
        resolve_method("streamingllm", 0.1)
    with pytest.raises(ValueError, match="needs a budget"):
        resolve_method("snapkv")
    with pytest.raises(ValueError, match="budget"):
        resolve_method("mpcache", 1.5)
    with pytest.raises(ValueError, match="bad knob"):
        resolve_method("mpcache+nope=1", 0.1)
    assert PrivateGenerationConfig(cache="streaming", budget=0.1).method_config() == \
        resolve_method("streaming", 0.1)
    with pytest.raises(ValueError, match="accumulated at every decode step"):
        PrivateGenerationConfig(cache="h2o", budget=0.1)
    with pytest.raises(ValueError, match="needs a budget"):
        PrivateGenerationConfig(cache="quest")
    with pytest.raises(ValueError, match="unknown cache policy 'nope'; generate runs full, "
                       "mpcache"):
        PrivateGenerationConfig(cache="nope")
    with pytest.raises(ValueError, match="names its own"):
        PrivateGenerationConfig(cache="mpcache:paper", mpcache=MPCacheConfig.paper())
    with pytest.raises(ValueError, match="bad knob"):
        PrivateGenerationConfig(cache="mpcache+nope=1")
