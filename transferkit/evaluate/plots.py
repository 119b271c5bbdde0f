"""Plots people would rather look at than read (matplotlib, headless)."""

from __future__ import annotations

import os
from pathlib import Path

from ..files import cache_root


def _pyplot():
    # matplotlib caches its font list in its config folder (~/.cache/matplotlib): keep it in transferkit's cache,
    # the only place written outside a run directory, unless the user chose a folder.
    os.environ.setdefault("MPLCONFIGDIR", str(cache_root() / "matplotlib"))
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def reliability_diagram(bins: list[dict], ece: float, title: str, path: Path) -> Path:
    """Accuracy against confidence per bin (bars), the diagonal of perfect calibration, and each bin's share
    of examples; `bins` as `metrics.calibration_bins` returns them."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), height_ratios=[3, 1], sharex=True)
    width = bins[0]["high"] - bins[0]["low"]
    lows = [b["low"] for b in bins]
    top.bar(lows, [b["accuracy"] or 0.0 for b in bins], width=width, align="edge", edgecolor="black",
            label="accuracy")
    gaps = [(b["low"], b["confidence"], b["accuracy"]) for b in bins if b["count"]]
    top.bar([g[0] for g in gaps], [g[1] - g[2] for g in gaps], bottom=[g[2] for g in gaps], width=width,
            align="edge", color="tab:red", alpha=0.3, label="gap to mean confidence")
    top.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    top.set_ylabel("accuracy")
    top.set_ylim(0, 1)
    top.set_title(f"{title}  (ECE {ece:.3f})")
    top.legend(loc="upper left", fontsize=8)
    total = sum(b["count"] for b in bins) or 1
    bottom.bar(lows, [b["count"] / total for b in bins], width=width, align="edge", color="gray")
    bottom.set_xlabel("confidence of the predicted class")
    bottom.set_ylabel("share")
    bottom.set_xlim(0, 1)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
    return path
