"""diagnostics.png: the four views of `diagnose` on one figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..evaluate.plots import _pyplot


def plot_diagnostics(result: dict, path: Path) -> None:
    """Probe accuracy by layer (base, tuned), CKA base vs tuned by layer, relative weight change by block (log
    axis), and the base × tuned CKA matrix."""
    plt = _pyplot()
    numbers = result["layers"]
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
    probes = result.get("probes")
    if probes:
        for name, curve in probes.items():
            axes[0].plot(numbers, curve, marker="o", label=name)
        axes[0].legend()
    else:
        axes[0].text(0.5, 0.5, "no labels to probe", ha="center", va="center", transform=axes[0].transAxes)
    axes[0].set(title="probe accuracy", xlabel="layer (0: embeddings)")
    cka = np.array(result["cka"]["by_layer"], dtype=float)  # None (a constant layer) → NaN: a gap in the line
    axes[1].plot(numbers, cka, marker="o")
    axes[1].set(title="CKA, base vs tuned, same layer", xlabel="layer", ylim=(min(0.0, np.nanmin(cka)), 1.02))
    rows = result["weights"]["by_layer"]
    if rows and max(r["relative"] for r in rows) > 0:
        axes[2].plot([r["layer"] for r in rows], [r["relative"] for r in rows], marker="o")
        axes[2].set_yscale("log")
    else:
        axes[2].text(0.5, 0.5, "no block weight changed", ha="center", va="center", transform=axes[2].transAxes)
    axes[2].set(title="‖ΔW‖ / ‖W‖ per block", xlabel="block")
    image = axes[3].imshow(np.array(result["cka"]["matrix"], dtype=float), origin="lower", vmin=0, vmax=1, cmap="viridis")
    axes[3].set(title="CKA: base layer × tuned layer", xlabel="tuned layer", ylabel="base layer",
                xticks=range(len(numbers)), yticks=range(len(numbers)))
    axes[3].set_xticklabels(numbers, fontsize=6)
    axes[3].set_yticklabels(numbers, fontsize=6)
    fig.colorbar(image, ax=axes[3], fraction=0.046)
    for ax in axes[:3]:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_probe(result: dict, path: Path) -> None:
    """`transferkit probe`'s curve: accuracy by layer, with the majority-class rate."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(result["layers"], result["probe"], marker="o", label="probe")
    ax.axhline(result["chance"], color="grey", linestyle="--", label="majority class")
    ax.set(xlabel="layer (0: embeddings)", ylabel="cross-validated accuracy", title="where the task is readable")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
