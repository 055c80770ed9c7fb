"""Run the benchmark: one MPC launch per (context, cache) row, summarized per decode step.

Why one launch per row: each row gets a fresh MPC session (fresh masks, an empty dealer
store), so memory never accumulates across rows and no row can disturb another's
counters. Bytes are summed over the parties (``runtime.cost.combine``); latency uses
the bytes ONE party sends (``runtime.network``); rounds and seconds are the max over
parties.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from crypten_mpcache.bench.party import RowTask, run_row
from crypten_mpcache.bench.shapes import get_shape
from crypten_mpcache.bench.variants import default_caches, resolve
from crypten_mpcache.runtime.cost import FIELDS, combine, online
from crypten_mpcache.runtime.launcher import LaunchConfig, launch
from crypten_mpcache.runtime.network import LAN, WAN
from crypten_mpcache.secure.functions.activation import SILU_METHODS

BYTES_PER_ELEMENT = 8  # int64 ring elements


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run; validated on construction."""

    shape: str = "llama2-7b"
    layers: int = 1
    contexts: tuple[int, ...] = (512, 1024, 2048, 4096)
    caches: tuple[str, ...] = field(default_factory=default_caches)
    budget: float = 0.05
    dealer: str = "ttp"
    comparison: str = "hybrid"
    dcf_max_elements: int = LaunchConfig.dcf_max_elements  # hybrid: calls up to it by DCF
    dealing: str = "ahead"
    activation: str = "lookup"
    steps: int = 2
    share_weights: bool = True
    seed: int = 0
    parties: int = 2
    timeout_s: float = 3600.0
    max_memory_gb: float | None = None  # refuse rows estimated above this (None: no check)

    def __post_init__(self) -> None:
        get_shape(self.shape)
        if self.layers < 1:
            raise ValueError(f"layers must be >= 1, got {self.layers}")
        if not self.contexts or any(c < 1 for c in self.contexts):
            raise ValueError(f"contexts must be positive token counts, got {self.contexts}")
        if len(set(self.contexts)) != len(self.contexts):
            raise ValueError(f"contexts repeat: {self.contexts}")
        if not self.caches or len(set(self.caches)) != len(self.caches):
            raise ValueError(f"caches must be distinct and non-empty, got {self.caches}")
        for cache in self.caches:
            resolve(cache)
        if not 0.0 < self.budget <= 1.0:
            raise ValueError(f"budget must be a ratio in (0, 1], got {self.budget}")
        self.launch_config()  # parties, dealer, comparison and timeout: validated there
        if self.activation not in SILU_METHODS:
            raise ValueError(f"activation must be one of {SILU_METHODS}, got "
                             f"{self.activation!r}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")

    def launch_config(self) -> LaunchConfig:
        """How the parties of every row run (``LaunchConfig`` validates these fields)."""
        return LaunchConfig(parties=self.parties, dealer=self.dealer,  # type: ignore[arg-type]
                            comparison=self.comparison, dealing=self.dealing,
                            timeout_s=self.timeout_s,
                            dcf_max_elements=self.dcf_max_elements)

    def tasks(self) -> list[RowTask]:
        return [RowTask(self.shape, self.layers, context, cache, self.budget, self.steps,
                        self.share_weights, self.seed, self.activation)
                for context in self.contexts for cache in self.caches]


def memory_estimate_gb(config: BenchConfig, context: int) -> float:
    """Rough peak memory of one row over all processes (parties + dealer), in GB.

    A premasked operand holds D and a mask share (2 ring elements per element) in every
    party; the dealer (TTP process, or party 0 under TFP) keeps the plaintext mask (one
    more). Weights count once with ``share_weights``. The KV cache counts per layer and
    twice over: the first decode step appends a row, and the in-place append
    (``AppendCat``) allocates a buffer of twice the rows, in the parties and the dealer.
    Add the transient of encrypting the largest matrix (~4 copies in one party) or the
    static stage's window probabilities (window ~20% of the context, all heads).
    Measured: one Llama-2-7B layer at 512 tokens peaks at ~11 GB (2 parties + TTP).
    """
    shape = get_shape(config.shape)
    per_element = (2 * config.parties + 1) * BYTES_PER_ELEMENT
    weight_sets = 1 if config.share_weights else config.layers
    weights = weight_sets * shape.layer_weight_elements() * per_element
    kv_per_element = (4 * config.parties + 3) * BYTES_PER_ELEMENT
    kv = config.layers * shape.kv_elements(context) * kv_per_element
    transient = 4 * shape.hidden * shape.mlp * BYTES_PER_ELEMENT
    window = 3 * shape.heads * int(0.2 * context) * context * BYTES_PER_ELEMENT
    return (weights + kv + max(transient, window)) / 1e9


def _sum_phases(report: dict[str, Any], prefix: str) -> dict[str, float]:
    total = dict.fromkeys(FIELDS, 0.0)
    for phase in report["phases"]:
        if phase["phase"] == prefix or phase["phase"].startswith(prefix + "/"):
            for key in total:
                total[key] += phase[key]
    return total


def _operators(report: dict[str, Any], prefix: str, steps: int) -> dict[str, dict[str, float]]:
    """Per-operator cost per step, summed over the phases named ``prefix/<i>``."""
    out: dict[str, dict[str, float]] = {}
    for phase, kinds in report["phase_operators"].items():
        if not phase.startswith(prefix + "/"):
            continue
        for kind, cost in kinds.items():
            slot = out.setdefault(kind, dict.fromkeys(FIELDS, 0.0))
            for key in slot:
                slot[key] += cost.get(key, 0.0) / steps
    return dict(sorted(out.items()))


def _per_step(total: dict[str, float], steps: int) -> dict[str, float]:
    return {key: value / steps for key, value in total.items()}


def summarize(task: RowTask, config: BenchConfig, outputs: list[dict[str, Any]],
              wall_s: float) -> dict[str, Any]:
    """One JSON row from the parties' outputs (see the module docstring for merging)."""
    reports = [o["cost"] for o in outputs]
    merged = combine(reports)
    decode = _per_step(_sum_phases(merged, "decode"), task.steps)
    # per-party bytes: what one party sends per step (the larger of the parties)
    party_bytes = max(_sum_phases(r, "decode")["bytes"] for r in reports) / task.steps
    party_online_bytes = max(online(_sum_phases(r, "decode"))["bytes"]
                             for r in reports) / task.steps
    step_online = online(decode)
    static = _sum_phases(merged, "static")
    setup = _sum_phases(merged, "setup")
    shape = get_shape(task.shape)
    per_layer = {k: v / task.layers for k, v in decode.items()}
    model = {k: v * shape.depth for k, v in per_layer.items()}
    model_party_bytes = party_bytes / task.layers * shape.depth
    attended = outputs[0]["attended"]
    return {
        "shape": task.shape, "layers": task.layers, "context": task.context,
        "cache": task.cache, "budget": task.budget, "dealer": config.dealer,
        "comparison": config.comparison, "dcf_max_elements": config.dcf_max_elements,
        "dealing": config.dealing,
        "activation": config.activation,
        "parties": config.parties, "steps": task.steps,
        "bytes": int(decode["bytes"]), "bytes_per_party": int(party_bytes),
        "rounds": decode["rounds"], "seconds": decode["seconds"],
        "lan_seconds": LAN.latency(decode["seconds"], decode["rounds"], party_bytes),
        "wan_seconds": WAN.latency(decode["seconds"], decode["rounds"], party_bytes),
        "online_bytes": int(step_online["bytes"]),
        "online_bytes_per_party": int(party_online_bytes),
        "online_rounds": step_online["rounds"], "online_seconds": step_online["seconds"],
        "online_lan_seconds": LAN.latency(step_online["seconds"], step_online["rounds"],
                                          party_online_bytes),
        "online_wan_seconds": WAN.latency(step_online["seconds"], step_online["rounds"],
                                          party_online_bytes),
        "dealer_bytes": int(decode["dealer_bytes"]), "dealer_rounds": decode["dealer_rounds"],
        "dealer_seconds": decode["dealer_seconds"],
        "per_layer": per_layer,
        "model_estimate": {"layers": shape.depth, **model,
                           "lan_seconds": LAN.latency(model["seconds"], model["rounds"],
                                                      model_party_bytes),
                           "wan_seconds": WAN.latency(model["seconds"], model["rounds"],
                                                      model_party_bytes)},
        "static_bytes": int(static["bytes"]), "static_rounds": static["rounds"],
        "static_seconds": static["seconds"],
        "setup_bytes": int(setup["bytes"]), "setup_seconds": setup["seconds"],
        "operators": _operators(merged, "decode", task.steps),
        "static_operators": _operators(merged, "static", 1),
        "attended_max": max(attended) if attended else task.context + 1,
        "attended_per_step": attended[: task.layers],
        "topk_last_step": outputs[0].get("topk", []),
        "static_window": outputs[0]["window"],
        "cache_lengths": outputs[0]["cache_lengths"],
        "wall_seconds": wall_s,
    }


@dataclass
class BenchResult:
    """Everything one run produced (JSON-ready with ``as_dict``)."""

    config: BenchConfig
    rows: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        config = asdict(self.config)
        config["contexts"], config["caches"] = list(self.config.contexts), list(
            self.config.caches)
        return {"config": config, "networks": {p.name: {"bandwidth_bps": p.bandwidth_bps,
                                                        "rtt_s": p.rtt_s} for p in (LAN, WAN)},
                "rows": self.rows}


def check_memory(config: BenchConfig) -> None:
    """Refuse (ValueError) a run whose largest row is estimated above the limit."""
    if config.max_memory_gb is None:
        return
    worst = max(memory_estimate_gb(config, c) for c in config.contexts)
    if worst > config.max_memory_gb:
        raise ValueError(f"estimated peak memory {worst:.1f} GB exceeds the limit of "
                         f"{config.max_memory_gb:.1f} GB: use fewer --layers or shorter "
                         "--context")


def run_bench(config: BenchConfig,
              on_row: Callable[[RowTask, dict[str, Any] | None], None] | None = None
              ) -> BenchResult:
    """Measure every (context, cache) row; ``on_row`` is called before (None) and after
    each row (progress reporting)."""
    check_memory(config)
    launch_config = config.launch_config()
    result = BenchResult(config)
    for task in config.tasks():
        if on_row is not None:
            on_row(task, None)
        start = time.perf_counter()
        outputs = launch(run_row, task, config=launch_config)
        row = summarize(task, config, outputs, time.perf_counter() - start)
        result.rows.append(row)
        if on_row is not None:
            on_row(task, row)
    return result
