"""Markdown results table and budget-to-parity, generated from one or more result JSONs.

Budget-to-parity of a method = the smallest budget whose score is >= ``parity`` (0.95) x
the full-cache score of the same task, context and query placement. Because every score
is "higher is better" (ppl uses 1 / perplexity), one rule serves every task.

Given per-sample outcomes (run folders or ``results/retention.json``), each score table is
followed by its retention table (``eval.retention``: the fraction of the full cache's
correct answers a method keeps) and the parity table by budget-to-parity on retention.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from crypten_mpcache.eval import retention
from crypten_mpcache.eval.runner import aggregate, read_predictions

Key = tuple[str, int, str]  # task, context, query_at


def _rows_of(path: Path) -> list[dict[str, Any]]:
    """Rows of a result JSON, or aggregated from a (possibly unfinished) run folder."""
    if path.is_dir():
        return aggregate(read_predictions(path).values())
    if path.suffix == ".jsonl":
        lines = path.read_text().splitlines()
        return aggregate(json.loads(x) for x in lines if x.strip())
    return json.loads(path.read_text()).get("rows", [])  # an outcomes JSON has none


def load_rows(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Rows of result JSONs or run folders; a later row replaces an earlier identical key."""
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for path in paths:
        for row in _rows_of(Path(path)):
            key = (row["task"], row["method"], row["budget"], row["context"], row["query_at"])
            merged[key] = row
    return list(merged.values())


def _full(rows: Sequence[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    return {(r["task"], r["context"], r["query_at"]): r for r in rows if r["method"] == "full"}


def budget_to_parity(rows: Sequence[dict[str, Any]], parity: float = 0.95,
                     ) -> dict[tuple[str, int, str, str], float | None]:
    """(task, context, query_at, method) -> smallest budget at parity (None: never)."""
    full = _full(rows)
    out: dict[tuple[str, int, str, str], float | None] = {}
    for r in rows:
        key = (r["task"], r["context"], r["query_at"])
        if r["method"] == "full" or key not in full:
            continue
        slot = (*key, r["method"])
        ok = r["score"] >= parity * full[key]["score"] - 1e-12
        best = out.get(slot)
        if ok and (best is None or r["budget"] < best):
            out[slot] = r["budget"]
        else:
            out.setdefault(slot, None)
    return out


def _fmt(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    if row["metric"] == "perplexity":
        return f"{row['perplexity']:.2f}"
    return f"{row['score']:.2f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}]"


def score_table(rows: Sequence[dict[str, Any]],
                kept: Sequence[dict[str, Any]] | None = None) -> list[str]:
    """One markdown table per (task, context, query_at): methods x budgets; with retention
    rows ``kept``, each followed by its retention table."""
    lines: list[str] = []
    for key in sorted({(r["task"], r["context"], r["query_at"]) for r in rows}):
        here = [r for r in rows if (r["task"], r["context"], r["query_at"]) == key]
        budgets = sorted({r["budget"] for r in here if r["method"] != "full"})
        full = next((r for r in here if r["method"] == "full"), None)
        unit = "perplexity (lower is better)" if here[0]["metric"] == "perplexity" \
            else f"{here[0]['metric']} [95% CI]"
        n = max(r["n"] for r in here)
        lines += [f"### {key[0]}, {key[1]} tokens, query at {key[2]} ({unit}, n={n})", "",
                  f"full cache: {_fmt(full)}", ""]
        if budgets:
            lines += ["| method | " + " | ".join(f"{b:g}" for b in budgets) + " |",
                      "|---|" + "---|" * len(budgets)]
            for method in sorted({r["method"] for r in here} - {"full"}):
                cells = [_fmt(next((r for r in here if r["method"] == method
                                    and r["budget"] == b), None)) for b in budgets]
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
            lines.append("")
        if kept is not None and budgets:
            lines += retention.table(kept, key, budgets)
    return lines


def parity_table(rows: Sequence[dict[str, Any]], parity: float = 0.95) -> list[str]:
    """Budget-to-parity per method (columns) and setting (rows)."""
    btp = budget_to_parity(rows, parity)
    methods = sorted({k[3] for k in btp})
    settings = sorted({k[:3] for k in btp})
    lines = [f"### Budget-to-parity (smallest budget with score >= {parity:g} x full cache;"
             " '>max' = never within the budgets run)", "",
             "| task | context | query at | " + " | ".join(methods) + " |",
             "|---|---|---|" + "---|" * len(methods)]
    for s in settings:
        cells = []
        for m in methods:
            if (*s, m) not in btp:
                cells.append("-")
            else:
                b = btp[(*s, m)]
                cells.append(">max" if b is None else f"{b:g}")
        lines.append(f"| {s[0]} | {s[1]} | {s[2]} | " + " | ".join(cells) + " |")
    return lines + [""]


def retention_of(rows: Sequence[dict[str, Any]], outcomes: retention.Outcomes,
                 ) -> list[dict[str, Any]]:
    """Retention rows of the cells ``rows`` report (so a retention cell comes from the run
    its score does); the full cache's outcomes are the reference wherever they come from."""
    shown = {(r["task"], r["context"], r["query_at"], r["method"], r["budget"]) for r in rows}
    return retention.retention_rows({cell: done for cell, done in outcomes.items()
                                     if cell in shown})


def markdown(rows: Sequence[dict[str, Any]], command: str = "", parity: float = 0.95,
             notes: str = "", outcomes: retention.Outcomes | None = None) -> str:
    """The results page: how to regenerate it, notes, parity tables (raw and, with
    per-sample ``outcomes``, on retention), every score table with its retention table."""
    head = ["# Accuracy vs KV-cache budget (plaintext, SmolLM2-135M-Instruct, real essays)", ""]
    if command:
        head += ["Regenerate this page (no model run) with:", "", "```", command, "```", ""]
    if notes:
        head += [notes.strip(), ""]
    kept = None if outcomes is None else retention_of(rows, outcomes)
    extra = [] if kept is None else retention.parity_table(kept)
    return "\n".join(head + parity_table(rows, parity) + extra + score_table(rows, kept))
