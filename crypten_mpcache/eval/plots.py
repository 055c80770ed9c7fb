"""Accuracy-vs-budget plots: one PNG per task (and context, query placement panel)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def plot_paths(base: str | Path, tasks: Sequence[str]) -> dict[str, Path]:
    """``out.png`` + tasks -> ``out-passkey.png``, ... (one file per task)."""
    base = Path(base)
    stem = base.stem if base.suffix == ".png" else base.name
    return {t: base.with_name(f"{stem}-{t}.png") for t in tasks}


def _panels(rows: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return sorted({(r["context"], r["query_at"]) for r in rows})


def plot_task(rows: list[dict[str, Any]], task: str, path: Path) -> Path:
    """Score vs budget, one line per method, full cache as a horizontal line per panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mine = [r for r in rows if r["task"] == task]
    panels = _panels([r for r in mine if r["method"] != "full"]) or _panels(mine)
    # One colour per method in every panel, one legend for the figure.
    methods = sorted({r["method"] for r in mine} - {"full"})
    palette = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    colors = {m: palette(i % palette.N) for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.9), squeeze=False)
    for ax, (context, query_at) in zip(axes[0], panels, strict=True):
        here = [r for r in mine if r["context"] == context
                and r["query_at"] in (query_at, "none")]
        for r in (r for r in here if r["method"] == "full"):
            ax.axhline(r["score"], color="black", linestyle="--", label="full")
        for method in sorted({r["method"] for r in here} - {"full"}):
            pts = sorted((r["budget"], r["score"], r["ci_low"], r["ci_high"])
                         for r in here if r["method"] == method)
            xs = [p[0] for p in pts]
            ys = [p[1] for p in pts]
            err = [[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=2, label=method,
                        color=colors[method])
        metric = mine[0]["metric"] if mine else ""
        ax.set_title(f"{task}, {context} tokens, query at {query_at}", fontsize=9)
        ax.set_xlabel("budget (fraction of KV cache kept)")
        ax.set_ylabel("1 / perplexity" if metric == "perplexity" else metric)
        ax.grid(alpha=0.3)
    handles = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    # at most 4 legend entries per panel width in a row, so a narrow figure clips none
    ncol = max(1, min(len(handles), 4 * len(panels)))
    legend_rows = -(-len(handles) // ncol)
    fig.legend(handles.values(), handles.keys(), loc="upper center", ncol=ncol,
               fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.96 - 0.06 * legend_rows))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(rows: list[dict[str, Any]], base: str | Path) -> list[Path]:
    """One PNG per task found in ``rows``; returns the written paths."""
    tasks = sorted({r["task"] for r in rows})
    return [plot_task(rows, t, p) for t, p in plot_paths(base, tasks).items()]
