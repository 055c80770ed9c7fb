"""Run the accuracy-vs-budget grid and write one folder per run.

A run folder holds ``config.json`` (the EvalConfig), ``predictions.jsonl`` (one line per
sample x method x budget, appended as it goes, so an interrupted run resumes where it
stopped when started again with the same run name) and ``metrics.json`` (the rows of this
command, and ``folder_rows``: of every cell in the folder). N processes can share a folder
(``--shard I/N``, e.g. one per GPU stream or CPU core): shard I runs every N-th unit and
writes ``predictions-I-of-N.jsonl`` / ``metrics-I-of-N.json``; every reader takes all
prediction files of the folder.

Decoding is greedy with a manual loop so that the question can be fed after prefill,
where static eviction cannot see it. Three placements (``QUERY_AT``):

- ``prefill``: the question is part of the prompt (the papers' LongBench setting).
- ``chunk``: the question is fed after prefill as ONE multi-token forward, like a new chat
  turn: it attends to the whole (statically evicted) cache, as prompt processing does in
  every method; per-step selection applies to the generated tokens. The realistic
  query-agnostic setting (context cached and compressed before the question is known).
- ``decode``: the question is fed one token at a time, each token attending only to the
  per-step budget. A stress test: on SmolLM2-135M the per-layer selection errors of ~28
  question tokens x 30 layers compound and retrieval breaks even at budget 0.5, although
  each selection keeps >90% of the attention mass the best clusters would (NOTES.md).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from crypten_mpcache import assets
from crypten_mpcache.eval import methods as registry
from crypten_mpcache.eval.decoding import TASK_METRIC, Unit, run_unit
from crypten_mpcache.eval.metrics import summarize
from crypten_mpcache.eval.tasks import (
    PROMPT_STYLES,
    TASKS,
    Haystack,
    TaskConfig,
    build_samples,
)

QUERY_AT = ("prefill", "chunk", "decode")
DEVICES = ("cpu", "cuda", "auto")
NO_QUERY = "none"  # ppl has no question: its rows carry query_at="none"


@dataclass(frozen=True)
class EvalConfig:
    """Everything that defines an evaluation; saved as the run's config.json."""

    tasks: tuple[str, ...] = ("passkey", "needle", "kv-retrieval", "ppl")
    contexts: tuple[int, ...] = (1024,)
    methods: tuple[str, ...] = registry.METHODS
    budgets: tuple[float, ...] = (0.05, 0.1, 0.2)
    query_at: tuple[str, ...] = ("prefill", "chunk")
    samples: int = 2
    fraction: float = 1.0
    seed: int = 0
    style: str = "chat"
    ppl_tokens: int = 64
    out_dir: str = "runs"  # raw run folders stay out of the tracked tree (.gitignore)
    run_name: str = ""
    model_folder: str = ""
    device: str = "cpu"
    shard_index: int = 0
    shard_count: int = 1

    def __post_init__(self) -> None:
        bad = [t for t in self.tasks if t not in TASKS]
        if bad or not self.tasks:
            raise ValueError(f"unknown task(s) {bad}; choose from {sorted(TASKS)}")
        if not self.contexts or any(c < 64 for c in self.contexts):
            raise ValueError(f"contexts must be >= 64 tokens, got {self.contexts}")
        if not self.methods:
            raise ValueError("at least one method is needed")
        if any(not 0 < b <= 1 for b in self.budgets):
            raise ValueError(f"budgets must be in (0, 1], got {self.budgets}")
        if not self.query_at or any(q not in QUERY_AT for q in self.query_at):
            raise ValueError(f"query_at must be among {QUERY_AT}, got {self.query_at}")
        if self.samples < 1:
            raise ValueError("samples must be >= 1")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.style not in PROMPT_STYLES:
            raise ValueError(f"style must be one of {PROMPT_STYLES}, got {self.style!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if not 0 <= self.shard_index < self.shard_count:
            raise ValueError(f"shard must be I/N with 0 <= I < N, got "
                             f"{self.shard_index}/{self.shard_count}")

    @property
    def n_run(self) -> int:
        """How many of the ``samples`` are run (the first ones: a ``fraction`` subset)."""
        return max(1, math.ceil(self.samples * self.fraction))


@dataclass
class Plan:
    units: list[Unit] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)


def _specs(cfg: EvalConfig, unavailable: dict[str, str]) -> list[registry.MethodSpec]:
    specs = []
    for name in cfg.methods:
        budgets: Iterable[float | None] = [None] if name == registry.FULL else cfg.budgets
        for budget in budgets:
            try:
                specs.append(registry.resolve(name, budget))
            except registry.MethodUnavailable as exc:
                unavailable.setdefault(name, str(exc))
    return specs


def plan(cfg: EvalConfig, hay: Haystack) -> Plan:
    """Build the samples (deterministic from the seed) and every unit to run."""
    out = Plan()
    specs = _specs(cfg, out.unavailable)
    task_cfg = TaskConfig(style=cfg.style, ppl_tokens=cfg.ppl_tokens)
    for task in cfg.tasks:
        modes = (NO_QUERY,) if task == "ppl" else cfg.query_at
        for context in cfg.contexts:
            samples = build_samples(task, hay, task_cfg, context, cfg.n_run, cfg.seed)
            # Method-major order: an interrupted run has whole (method, budget) cells done.
            out.units += [Unit(sample, context, q, s)
                          for q in modes for s in specs for sample in samples]
    # Shards interleave, so that every shard of a parallel run gets a share of each cell.
    out.units = out.units[cfg.shard_index::cfg.shard_count]
    return out


def aggregate(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, method, budget, context, query_at) with its score and 95% CI."""
    groups: dict[tuple[Any, ...], list[float]] = {}
    for r in records:
        key = (r["task"], r["method"], r["budget"], r["context"], r["query_at"])
        groups.setdefault(key, []).append(r["value"])
    rows = []
    for (task, method, budget, context, query_at), values in sorted(
            groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        s = summarize(TASK_METRIC[task], values)
        row = {"task": task, "method": method, "budget": 1.0 if budget is None else budget,
               "context": context, "query_at": query_at, "metric": s.metric,
               "score": s.score, "ci_low": s.ci_low, "ci_high": s.ci_high, "n": s.n}
        if s.perplexity is not None:
            row["perplexity"] = s.perplexity
        rows.append(row)
    return rows


def prediction_files(folder: Path) -> list[Path]:
    """``predictions.jsonl`` and the per-shard ``predictions-I-of-N.jsonl`` of a run."""
    return sorted(folder.glob("predictions*.jsonl"))


def read_predictions(folder: Path) -> dict[str, dict[str, Any]]:
    """Every finished unit of a run folder (all shards), by unit key."""
    done = {}
    for path in prediction_files(folder):
        for line in path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                done[rec["key"]] = rec
    return done


def resolve_device(name: str) -> str:
    """``auto`` -> cuda when a GPU is visible, else cpu; ``cuda`` without one is an error."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible to torch")
    return name


def load_tokenizer(folder: str = "") -> Any:
    """The tokenizer of the embedded SmolLM2 (converted once) or of ``folder``."""
    return AutoTokenizer.from_pretrained(folder or str(assets.smollm2_folder()))


def load_model(folder: str = "", device: str = "cpu") -> tuple[Any, Any]:
    """The embedded SmolLM2 (or the checkpoint in ``folder``) in float32, eval mode."""
    path = folder or str(assets.smollm2_folder())
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model.to(resolve_device(device)), load_tokenizer(path)


def _stop_ids(tokenizer: Any) -> set[int]:
    ids = {tokenizer.eos_token_id} - {None}
    for text in ("<|im_end|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(text)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id:
            ids.add(tid)
    return ids


def _write_config(path: Path, cfg: EvalConfig) -> None:
    """This command's config, with the earlier commands of a resumed folder under
    ``history`` (oldest first), so the folder says how every cell in it was made."""
    history: list[dict[str, Any]] = []
    if path.is_file():
        previous = json.loads(path.read_text())
        history = previous.pop("history", []) + [previous]
    path.write_text(json.dumps({**asdict(cfg), "history": history}, indent=2))


def run_folder(cfg: EvalConfig) -> Path:
    name = cfg.run_name or time.strftime("run-%Y%m%d-%H%M%S")
    return Path(cfg.out_dir) / name


def _progress(units: list[Unit], show: bool) -> Iterator[Unit]:
    yield from tqdm(units, desc="eval", unit="run", disable=not show)


def run_eval(cfg: EvalConfig, model: Any = None, tokenizer: Any = None,
             texts: list[str] | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the grid; returns {config, rows, unavailable, run_dir, seconds}."""
    t0 = time.perf_counter()
    if tokenizer is None:
        tokenizer = load_tokenizer(cfg.model_folder)
    hay = Haystack(tokenizer, texts if texts is not None else assets.essay_texts())
    the_plan = plan(cfg, hay)
    folder = run_folder(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    if cfg.shard_index == 0:  # one config per folder; shards differ only in their index
        _write_config(folder / "config.json", cfg)
    sharded = cfg.shard_count > 1
    suffix = f"-{cfg.shard_index}-of-{cfg.shard_count}" if sharded else ""
    pred_path = folder / f"predictions{suffix}.jsonl"
    done = read_predictions(folder)
    stop = _stop_ids(tokenizer)
    records = []
    for unit in _progress(the_plan.units, progress):
        rec = done.get(unit.key)
        if rec is None:
            if model is None:  # loaded only when something is left to run
                model, _ = load_model(cfg.model_folder, cfg.device)
            rec = run_unit(model, tokenizer, unit, stop)
            with pred_path.open("a") as sink:  # one line per unit: a kill loses one unit
                sink.write(json.dumps(rec) + "\n")
        records.append(rec)
    result = {"config": asdict(cfg), "rows": aggregate(records),
              "unavailable": the_plan.unavailable, "run_dir": str(folder),
              "seconds": round(time.perf_counter() - t0, 1)}
    # A resumed folder may hold cells of earlier commands too: their rows, all together.
    result["folder_rows"] = aggregate(read_predictions(folder).values())
    (folder / f"metrics{suffix}.json").write_text(json.dumps(result, indent=2))
    return result
