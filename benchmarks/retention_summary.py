"""Per-sample correctness of eval runs, kept small: the data of the retention tables.

Retention (``crypten_mpcache.eval.retention``) needs, per (task, context, query_at,
method, budget), which samples were answered correctly, not the generated text. This
script folds run folders (``runs/<name>/``) or the run folders of an old commit (the raw
predictions left the tree in 1e87dee) into one outcomes JSON:

    python benchmarks/retention_summary.py --git 1e87dee^ --cells results/accuracy.json \
        --out results/retention.json
    python benchmarks/retention_summary.py results/retention.json runs/my-run \
        --out results/retention.json
    crypten-mpcache eval --report-only results/accuracy.json results/retention.json \
        --notes results/NOTES.md --markdown results/README.md --plot results/plots/accuracy.png

Inputs are read in order and a later cell replaces an earlier one. ``--cells SUMMARY``
keeps exactly the cells of an accuracy summary (``benchmarks/accuracy_summary.py``), each
from the run its row names, so that every retention cell comes from the run its score
does; it then checks that each cell's n and score equal the summary's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from crypten_mpcache.eval.retention import (
    Cell,
    Outcomes,
    from_json,
    is_outcomes_json,
    load_outcomes,
    outcomes_of_records,
    to_json,
)

RUNS_IN_GIT = "results/runs"  # where the run folders were tracked before 1e87dee


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout


def records_at(commit: str, run: str) -> list[dict[str, Any]]:
    """The prediction records of ``results/runs/<run>`` at ``commit`` (as read_predictions:
    every ``predictions*.jsonl`` in name order, a later line replacing the same unit key)."""
    names = _git("ls-tree", "--name-only", f"{commit}:{RUNS_IN_GIT}/{run}").split()
    done: dict[str, dict[str, Any]] = {}
    for name in sorted(n for n in names if n.startswith("predictions") and n.endswith(".jsonl")):
        for line in _git("show", f"{commit}:{RUNS_IN_GIT}/{run}/{name}").splitlines():
            if line.strip():
                rec = json.loads(line)
                done[rec["key"]] = rec
    return list(done.values())


def runs_at(commit: str) -> list[str]:
    return _git("ls-tree", "--name-only", f"{commit}:{RUNS_IN_GIT}").split()


def read_inputs(paths: Iterable[Path], commit: str | None,
                ) -> tuple[Outcomes, dict[Cell, str], dict[str, Outcomes]]:
    """(merged outcomes, run of each cell, outcomes per run) of the inputs in order: the
    runs of ``commit`` first, then run folders and outcomes JSONs."""
    merged: Outcomes = {}
    runs: dict[Cell, str] = {}
    by_run: dict[str, Outcomes] = {}

    def add(name: str, outcomes: Outcomes) -> None:
        by_run[name] = outcomes
        merged.update(outcomes)
        runs.update({cell: name for cell in outcomes})

    for run in runs_at(commit) if commit else []:
        add(run, outcomes_of_records(records_at(commit, run)))
    for path in paths:
        data = None if path.is_dir() else json.loads(path.read_text())
        if data is not None and is_outcomes_json(data):
            outcomes = from_json(data)
            merged.update(outcomes)
            runs.update({_cell(e): e["run"] for e in data["cells"] if "run" in e})
        else:
            add(path.name, load_outcomes([path]))
    return merged, runs, by_run


def _cell(row: dict[str, Any]) -> Cell:
    return row["task"], row["context"], row["query_at"], row["method"], row["budget"]


def select(summary: dict[str, Any], by_run: dict[str, Outcomes],
           merged: Outcomes) -> tuple[Outcomes, dict[Cell, str]]:
    """The cells of an accuracy summary, each from its own run, checked against its row."""
    out: Outcomes = {}
    runs: dict[Cell, str] = {}
    for row in summary["rows"]:
        if row["metric"] == "perplexity":
            continue
        cell = _cell(row)
        done = by_run.get(row["run"], {}).get(cell, merged.get(cell))
        if done is None:
            raise SystemExit(f"no per-sample outcomes for {cell} (run {row['run']})")
        if len(done) != row["n"]:
            raise SystemExit(f"{cell}: {len(done)} samples here, n = {row['n']} in the summary")
        if row["metric"] == "exact_match" and abs(sum(done.values()) / len(done)
                                                  - row["score"]) > 1e-9:
            raise SystemExit(f"{cell}: score differs from the summary's {row['score']}")
        out[cell] = done
        runs[cell] = row["run"]
    return out, runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="*", type=Path,
                        help="run folders or outcomes JSONs, lowest precedence first")
    parser.add_argument("--git", dest="commit", default=None,
                        help="also read every run folder under results/runs at this commit "
                             "(before the inputs), e.g. 1e87dee^")
    parser.add_argument("--cells", type=Path, default=None,
                        help="keep exactly the cells of this accuracy summary JSON")
    parser.add_argument("--out", type=Path, required=True, help="outcomes JSON to write")
    args = parser.parse_args(argv)
    if not args.inputs and not args.commit:
        parser.error("give run folders / outcomes JSONs, or --git COMMIT")
    merged, runs, by_run = read_inputs(args.inputs, args.commit)
    if args.cells:
        merged, runs = select(json.loads(args.cells.read_text()), by_run, merged)
    data = to_json(merged, runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(cell, sort_keys=True) for cell in data["cells"]]
    head = json.dumps({k: v for k, v in data.items() if k != "cells"}, sort_keys=True)
    args.out.write_text(head[:-1] + ', "cells": [\n' + ",\n".join(lines) + "\n]}\n")
    print(f"{len(data['cells'])} cells: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
