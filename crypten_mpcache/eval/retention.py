"""Retention: how much of what the full cache gets right a method keeps.

Raw accuracy at long contexts mixes the model's own misses with the method's: the embedded
SmolLM2 finds only 15 of 20 passkeys at 4k with the full cache. Retention counts only the
samples the full cache answers correctly:

    retention(method, budget) = #(full-correct samples the method also answers correctly)
                                / #(full-correct samples the method ran)  [= n]

per (task, context, query placement), with a 95% Wilson interval on n. "Correct" is exact
match = 1 for passkey and kv-retrieval, and token F1 >= ``NEEDLE_F1`` for needle (1.0: the
whole needle sentence up to case, punctuation and articles; a partial sentence is not the
answer). ppl has no retention. A cell without a full-cache row in the same inputs has no
retention (the tables say so). Budget-to-parity on retention = the smallest budget with
retention >= ``PARITY``.

Samples are matched by identity, not by position: a sample id is its index plus a hash of
its answer, metadata and length (sample i depends only on (seed, task, context, i)), so a
full-cache run and a method run in another folder pair only when they ran the same sample.

Per-sample outcomes come from run folders (``predictions*.jsonl``) or from a small
outcomes JSON (``results/retention.json``, built by ``benchmarks/retention_summary.py``):

    {"needle_f1": 1.0, "samples": {"passkey|2048": ["<hash of sample 0>", ...]},
     "cells": [{"task", "context", "query_at", "method", "budget", "run",
                "outcomes": "1101-..."}]}   # by sample index: 1 right, 0 wrong, - not run
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from crypten_mpcache.eval.metrics import wilson_interval
from crypten_mpcache.eval.runner import read_predictions

PARITY = 0.95
NEEDLE_F1 = 1.0
FULL = "full"
NO_RETENTION = ("ppl",)  # no right or wrong answer per sample

Cell = tuple[str, int, str, str, float]  # task, context, query_at, method, budget
Setting = tuple[str, int, str]  # task, context, query_at
Outcomes = dict[Cell, dict[str, bool]]  # cell -> sample id -> answered correctly


def is_correct(task: str, value: float, needle_f1: float = NEEDLE_F1) -> bool:
    """Whether one sample's score counts as a correct answer (ppl: never asked)."""
    if task == "needle":
        return value >= needle_f1 - 1e-9
    return value >= 1.0 - 1e-9


def sample_hash(record: Mapping[str, Any]) -> str:
    """A short hash of what defines a sample: its answer, metadata and length."""
    what = [record.get("answer"), record.get("meta"), record.get("tokens")]
    return hashlib.sha1(json.dumps(what, sort_keys=True).encode()).hexdigest()[:8]


def sample_id(index: int, digest: str) -> str:
    return f"{index}:{digest}"


def cell_of(record: Mapping[str, Any]) -> Cell:
    budget = record["budget"]
    return (record["task"], record["context"], record["query_at"], record["method"],
            1.0 if budget is None else budget)


def outcomes_of_records(records: Iterable[Mapping[str, Any]],
                        needle_f1: float = NEEDLE_F1) -> Outcomes:
    """Per-sample correctness of prediction records (ppl records are skipped)."""
    out: Outcomes = {}
    for rec in records:
        if rec["task"] in NO_RETENTION:
            continue
        sid = sample_id(rec["index"], sample_hash(rec))
        out.setdefault(cell_of(rec), {})[sid] = is_correct(rec["task"], rec["value"], needle_f1)
    return out


# --- the outcomes JSON -------------------------------------------------------------------

def to_json(outcomes: Outcomes, runs: Mapping[Cell, str] | None = None,
            needle_f1: float = NEEDLE_F1) -> dict[str, Any]:
    """The compact outcomes JSON; a sample index with two different hashes is an error."""
    samples: dict[str, dict[int, str]] = {}
    for cell, done in outcomes.items():
        table = samples.setdefault(f"{cell[0]}|{cell[1]}", {})
        for sid in done:
            index, digest = sid.split(":")
            if table.setdefault(int(index), digest) != digest:
                raise ValueError(f"{cell[0]} at {cell[1]} tokens: sample {index} differs "
                                 "between the inputs (another seed or prompt style?)")
    cells = []
    for cell in sorted(outcomes, key=lambda c: tuple(str(x) for x in c)):
        table = samples[f"{cell[0]}|{cell[1]}"]
        marks = ["-"] * (max(table) + 1)
        for sid, ok in outcomes[cell].items():
            marks[int(sid.split(":")[0])] = "1" if ok else "0"
        task, context, query_at, method, budget = cell
        entry = {"task": task, "context": context, "query_at": query_at, "method": method,
                 "budget": budget, "outcomes": "".join(marks).rstrip("-")}
        if runs and cell in runs:
            entry["run"] = runs[cell]
        cells.append(entry)
    listed = {key: [table.get(i) for i in range(max(table) + 1)]
              for key, table in sorted(samples.items())}
    return {"needle_f1": needle_f1, "samples": listed, "cells": cells}


def from_json(data: Mapping[str, Any]) -> Outcomes:
    """Outcomes of a JSON written by ``to_json``."""
    out: Outcomes = {}
    for entry in data["cells"]:
        digests = data["samples"][f"{entry['task']}|{entry['context']}"]
        cell = (entry["task"], entry["context"], entry["query_at"], entry["method"],
                entry["budget"])
        out[cell] = {sample_id(i, digests[i]): mark == "1"
                     for i, mark in enumerate(entry["outcomes"]) if mark != "-"}
    return out


def is_outcomes_json(data: Any) -> bool:
    return isinstance(data, dict) and "cells" in data and "samples" in data


def load_outcomes(paths: Iterable[str | Path]) -> Outcomes:
    """Outcomes of run folders, prediction .jsonl files and outcomes JSONs (a later cell
    replaces an earlier identical one); other JSONs (aggregated rows only) add nothing."""
    merged: Outcomes = {}
    for path in map(Path, paths):
        if path.is_dir():
            merged.update(outcomes_of_records(read_predictions(path).values()))
        elif path.suffix == ".jsonl":
            lines = path.read_text().splitlines()
            merged.update(outcomes_of_records(json.loads(x) for x in lines if x.strip()))
        else:
            data = json.loads(path.read_text())
            if is_outcomes_json(data):
                merged.update(from_json(data))
    return merged


# --- retention ---------------------------------------------------------------------------

def retention_rows(outcomes: Outcomes) -> list[dict[str, Any]]:
    """One row per (task, context, query_at, method, budget) other than the full cache:
    ``kept`` of ``n`` full-correct samples, ``retention`` (None: no full-cache row, or it
    answers none of the samples the method ran: ``why`` says which) and its Wilson interval."""
    full = {cell[:3]: done for cell, done in outcomes.items() if cell[3] == FULL}
    rows = []
    for cell in sorted(outcomes, key=lambda c: tuple(str(x) for x in c)):
        task, context, query_at, method, budget = cell
        if method == FULL:
            continue
        row: dict[str, Any] = {"task": task, "context": context, "query_at": query_at,
                               "method": method, "budget": budget}
        ref = full.get(cell[:3])
        if ref is None:
            rows.append({**row, "kept": 0, "n": 0, "retention": None,
                         "why": "no full-cache row"})
            continue
        right = {sid for sid, ok in ref.items() if ok}
        ran = right & set(outcomes[cell])
        kept = sum(outcomes[cell][sid] for sid in ran)
        if not ran:
            rows.append({**row, "kept": 0, "n": 0, "retention": None,
                         "why": "the full cache answers none of these samples"})
            continue
        low, high = wilson_interval(kept, len(ran))
        rows.append({**row, "kept": kept, "n": len(ran), "retention": kept / len(ran),
                     "ci_low": low, "ci_high": high, "full_correct": len(right)})
    return rows


def retention_parity(rows: Sequence[dict[str, Any]], parity: float = PARITY,
                     ) -> dict[tuple[str, int, str, str], float | None]:
    """(task, context, query_at, method) -> smallest budget with retention >= ``parity``
    (None: none of the budgets run); settings without retention are left out."""
    out: dict[tuple[str, int, str, str], float | None] = {}
    for r in rows:
        if r["retention"] is None:
            continue
        slot = (r["task"], r["context"], r["query_at"], r["method"])
        best = out.get(slot)
        if r["retention"] >= parity - 1e-12 and (best is None or r["budget"] < best):
            out[slot] = r["budget"]
        else:
            out.setdefault(slot, None)
    return out


# --- markdown ----------------------------------------------------------------------------

def fmt(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    if row["retention"] is None:
        return "n/a"
    return (f"{row['retention']:.2f} ({row['kept']}/{row['n']}) "
            f"[{row['ci_low']:.2f}, {row['ci_high']:.2f}]")


def table(rows: Sequence[dict[str, Any]], setting: Setting,
          budgets: Sequence[float] | None = None) -> list[str]:
    """The retention table of one setting: methods x budgets, or a line saying why none."""
    here = [r for r in rows if (r["task"], r["context"], r["query_at"]) == setting]
    title = f"Retention, {setting[0]}, {setting[1]} tokens, query at {setting[2]}"
    if setting[0] in NO_RETENTION:
        return []
    if not here:
        return [f"{title}: no per-sample outcomes in these inputs.", ""]
    if all(r["retention"] is None for r in here):
        return [f"{title}: none ({here[0]['why']}).", ""]
    n_full = max(r.get("full_correct", 0) for r in here)
    budgets = sorted({r["budget"] for r in here}) if budgets is None else list(budgets)
    lines = [f"{title} (of the {n_full} samples the full cache answers correctly, the "
             "fraction the method also answers correctly (kept/n) [95% CI]):", "",
             "| method | " + " | ".join(f"{b:g}" for b in budgets) + " |",
             "|---|" + "---|" * len(budgets)]
    for method in sorted({r["method"] for r in here}):
        cells = [fmt(next((r for r in here if r["method"] == method and r["budget"] == b),
                          None)) for b in budgets]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines + [""]


def parity_table(rows: Sequence[dict[str, Any]], parity: float = PARITY) -> list[str]:
    """Budget-to-parity on retention per method (columns) and setting (rows)."""
    btp = retention_parity(rows, parity)
    missing = sorted({(r["task"], r["context"], r["query_at"]) for r in rows
                      if r["retention"] is None} - {k[:3] for k in btp})
    methods = sorted({k[3] for k in btp})
    settings = sorted({k[:3] for k in btp})
    lines = [f"### Budget-to-parity on retention (smallest budget with retention >= {parity:g}"
             " of the samples the full cache answers correctly; '>max' = never within the "
             "budgets run)", ""]
    if settings:
        lines += ["| task | context | query at | " + " | ".join(methods) + " |",
                  "|---|---|---|" + "---|" * len(methods)]
    for s in settings:
        cells = ["-" if (*s, m) not in btp else
                 ">max" if btp[(*s, m)] is None else f"{btp[(*s, m)]:g}" for m in methods]
        lines.append(f"| {s[0]} | {s[1]} | {s[2]} | " + " | ".join(cells) + " |")
    if missing:
        lines += ["", "No retention (no full-cache row in the inputs, or it answers none of "
                  "the samples): " + "; ".join(f"{t} {c} {q}" for t, c, q in missing) + "."]
    return lines + [""]
