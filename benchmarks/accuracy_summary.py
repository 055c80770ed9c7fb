"""Fold eval run folders into one small summary JSON (the tracked accuracy results).

A run folder of ``crypten-mpcache eval`` (``runs/<name>/`` by default, ignored by git)
holds one line per sample x method x budget: megabytes for a grid. The tables and plots
need only the aggregated rows (score, Wilson interval, n per cell), so this script keeps
those and each run's ``config.json``, and nothing per sample:

    {"runs": {name: config}, "rows": [row + {"run": name}, ...]}

Inputs are read in order and a later row replaces an earlier one with the same (task,
method, budget, context, query_at), exactly as ``crypten-mpcache eval --report-only``
merges several folders. An input may also be an earlier summary JSON, so new run folders
can be added on top of ``results/accuracy.json``:

    python benchmarks/accuracy_summary.py results/accuracy.json runs/my-run \
        --out results/accuracy.json
    crypten-mpcache eval --report-only results/accuracy.json --notes results/NOTES.md \
        --markdown results/README.md --plot results/plots/accuracy.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from crypten_mpcache.eval.runner import aggregate, read_predictions

Key = tuple[Any, ...]


def _key(row: dict[str, Any]) -> Key:
    return row["task"], row["method"], row["budget"], row["context"], row["query_at"]


def _read(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(runs, rows) of a run folder or of an earlier summary JSON."""
    if path.is_dir():
        config_path = path / "config.json"
        config = json.loads(config_path.read_text()) if config_path.exists() else {}
        rows = [{**row, "run": path.name} for row in aggregate(read_predictions(path).values())]
        return {path.name: config}, rows
    data = json.loads(path.read_text())
    if "runs" not in data:
        raise SystemExit(f"{path}: not a run folder nor a summary JSON with 'runs'")
    return data["runs"], data["rows"]


def summarize(paths: list[Path]) -> dict[str, Any]:
    """The summary of ``paths`` (later rows replace earlier ones with the same key)."""
    runs: dict[str, Any] = {}
    merged: dict[Key, dict[str, Any]] = {}
    for path in paths:
        more_runs, rows = _read(path)
        runs.update(more_runs)
        for row in rows:
            merged[_key(row)] = row
    used = {row["run"] for row in merged.values()}
    return {"runs": {name: cfg for name, cfg in runs.items() if name in used},
            "rows": list(merged.values())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", type=Path,
                        help="run folders or summary JSONs, lowest precedence first")
    parser.add_argument("--out", type=Path, required=True, help="summary JSON to write")
    args = parser.parse_args(argv)
    summary = summarize(args.inputs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    print(f"{len(summary['rows'])} rows from {len(summary['runs'])} runs: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
