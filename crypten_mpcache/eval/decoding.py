"""One evaluation unit: feed a sample through its method, decode greedily, score it.

Decoding is a manual greedy loop (not ``generate``) so that the question can be fed
after prefill, where static eviction cannot see it: as part of the prompt (``prefill``),
as one multi-token forward after it (``chunk``) or one token at a time (``decode``); see
``eval.runner`` for what each placement measures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from crypten_mpcache.eval import methods as registry
from crypten_mpcache.eval.metrics import exact_match, first_match, token_f1
from crypten_mpcache.eval.tasks import Sample

TASK_METRIC = {"passkey": "exact_match", "kv-retrieval": "exact_match", "needle": "f1",
               "ppl": "perplexity"}
ANSWER_PATTERN = {"passkey": r"\d{5}", "kv-retrieval": r"[0-9a-f]{4}-[0-9a-f]{4}"}


@dataclass(frozen=True)
class Unit:
    """One thing to run: a sample under one method, budget and query placement."""

    sample: Sample
    context: int
    query_at: str
    spec: registry.MethodSpec

    @property
    def key(self) -> str:
        return "|".join([self.sample.task, str(self.context), str(self.sample.index),
                         self.query_at, self.spec.name, str(self.spec.budget)])



def _step(model: Any, ids: list[int], start: int, cache: Any) -> tuple[Any, Any]:
    """One forward over ``ids`` at positions ``start``..; returns last logits and the cache."""
    x = torch.tensor([ids], dtype=torch.long, device=model.device)
    pos = torch.arange(start, start + len(ids), dtype=torch.long, device=model.device)[None]
    out = model(input_ids=x, position_ids=pos, cache=cache, use_cache=True, logits_to_keep=1)
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    return out.logits[0, -1].float(), cache


def _feed(model: Any, unit: Unit) -> tuple[Any, Any, int]:
    """Prefill (with or without the question), then the question as a chunk or token-wise."""
    sample = unit.sample
    if unit.query_at == "chunk" and sample.query_ids:
        _, cache = _step(model, list(sample.context_ids), 0, None)
        pos = len(sample.context_ids)
        logits, cache = _step(model, list(sample.query_ids), pos, cache)
        return logits, cache, pos + len(sample.query_ids)
    if unit.query_at == "decode" and sample.query_ids:
        logits, cache = _step(model, list(sample.context_ids), 0, None)
        pos = len(sample.context_ids)
        for tok in sample.query_ids:
            logits, cache = _step(model, [tok], pos, cache)
            pos += 1
        return logits, cache, pos
    ids = list(sample.context_ids) + list(sample.query_ids)
    logits, cache = _step(model, ids, 0, None)
    return logits, cache, len(ids)


def _greedy(model: Any, unit: Unit, stop_ids: set[int]) -> list[int]:
    logits, cache, pos = _feed(model, unit)
    out: list[int] = []
    for _ in range(unit.sample.max_new_tokens):
        tok = int(logits.argmax())
        if tok in stop_ids:
            break
        out.append(tok)
        logits, cache = _step(model, [tok], pos, cache)
        pos += 1
    return out


def _nll(model: Any, unit: Unit) -> list[float]:
    """Per-token NLL of the real continuation, fed one token at a time after prefill."""
    logits, cache, pos = _feed(model, unit)
    nll = []
    targets = unit.sample.target_ids
    for i, tok in enumerate(targets):
        nll.append(float(-torch.log_softmax(logits, -1)[tok]))
        if i + 1 < len(targets):
            logits, cache = _step(model, [tok], pos, cache)
            pos += 1
    return nll


def score_prediction(task: str, text: str, answer: str) -> tuple[str, float]:
    """Extract the answer from generated ``text`` and score it (EM or token F1)."""
    if task in ANSWER_PATTERN:
        pred = first_match(text, ANSWER_PATTERN[task])
        return pred, exact_match(pred, answer)
    pred = text.strip().split("\n")[0].split(".")[0]
    return pred, token_f1(pred, answer)


def run_unit(model: Any, tokenizer: Any, unit: Unit, stop_ids: set[int]) -> dict[str, Any]:
    """Run one unit under its method; return its prediction record."""
    t0, c0 = time.perf_counter(), time.process_time()
    record: dict[str, Any] = {
        "key": unit.key, "task": unit.sample.task, "index": unit.sample.index,
        "context": unit.context, "tokens": unit.sample.length, "query_at": unit.query_at,
        "method": unit.spec.name, "budget": unit.spec.budget, "meta": unit.sample.meta,
        "device": str(model.device)}
    with torch.inference_mode(), registry.method_context(model, unit.spec):
        if unit.sample.task == "ppl":
            nll = _nll(model, unit)
            record.update(value=sum(nll) / len(nll), nll=nll)
        else:
            text = tokenizer.decode(_greedy(model, unit, stop_ids), skip_special_tokens=True)
            pred, value = score_prediction(unit.sample.task, text, unit.sample.answer)
            record.update(output=text, prediction=pred, answer=unit.sample.answer, value=value)
    # Wall and CPU seconds: on a shared machine only the CPU time says what a run costs.
    record["seconds"] = round(time.perf_counter() - t0, 3)
    record["cpu_seconds"] = round(time.process_time() - c0, 3)
    return record
