"""Bytes and LAN/WAN latency per decode step vs context, one line per cache variant."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crypten_mpcache.runtime.report import MIB

PANELS = (("bytes", "MiB per decode step", MIB), ("lan_seconds", "LAN latency (s)", 1.0),
          ("wan_seconds", "WAN latency (s)", 1.0))


def plot(result: dict[str, Any], path: str | Path) -> Path:
    """Write a three-panel PNG (bytes, LAN latency, WAN latency) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config, rows = result["config"], result["rows"]
    caches = list(dict.fromkeys(r["cache"] for r in rows))
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.4 * len(PANELS), 3.6))
    for ax, (key, label, unit) in zip(axes, PANELS, strict=True):
        for cache in caches:
            mine = sorted((r for r in rows if r["cache"] == cache), key=lambda r: r["context"])
            ax.plot([r["context"] for r in mine], [r[key] / unit for r in mine],
                    marker="o", label=cache)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{config['shape']}, {config['layers']} layer(s), budget {config['budget']}, "
                 f"dealer {config['dealer']}: cost per decode step", fontsize=10)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
