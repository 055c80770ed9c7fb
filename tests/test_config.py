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
