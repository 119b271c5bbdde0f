"""Does full fine-tuning make SmolLM2 forget general English, and which mitigation helps?

Runs recipes/forgetting-full.yaml five times on the same task and budget: no mitigation, replay,
EWC at two strengths and L2-SP (below), then prints a table of task score vs forgetting and draws
docs/forgetting.png. Every run directory is kept under --out for inspection.

    .venv/bin/python experiments/forgetting.py            # about 20 minutes on 2 CPU cores
    .venv/bin/python experiments/forgetting.py --steps 5  # a quick smoke run
    .venv/bin/python experiments/forgetting.py --results runs/forgetting/results.json  # redraw only
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from transferkit.api import train
from transferkit.config import load_config

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "forgetting-full.yaml"
MITIGATIONS = {
    "none": [],
    "replay 25%": ["forgetting.replay=0.25"],
    "EWC λ=10": ["forgetting.ewc=10"],
    "EWC λ=1000": ["forgetting.ewc=1000"],
    "L2-SP α=1": ["forgetting.l2sp=1"],
}


def run_all(out: Path, steps: int | None) -> list[dict]:
    rows = []
    for name, overrides in MITIGATIONS.items():
        run_dir = out / name.lower().replace(" ", "-").replace("%", "").replace("λ=", "").replace("α=", "")
        extra = [f"output_dir={run_dir}"] + ([f"train.max_steps={steps}"] if steps else [])
        started = time.perf_counter()
        summary = train(load_config(RECIPE, overrides + extra), overwrite=True)
        rows.append({"mitigation": name, "task": summary["test"]["json_field_accuracy"],
                     "exact_match": summary["test"]["exact_match"],
                     "base_ppl": summary["forgetting"]["base_perplexity"],
                     "tuned_ppl": summary["forgetting"]["tuned_perplexity"],
                     "forgetting": summary["forgetting"]["forgetting"], "minutes": (time.perf_counter() - started) / 60})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| mitigation | JSON field accuracy | exact match | general ppl (base → tuned) | forgetting | minutes |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mitigation']} | {100 * r['task']:.1f} % | {100 * r['exact_match']:.1f} % | "
                     f"{r['base_ppl']:.2f} → {r['tuned_ppl']:.2f} | {100 * r['forgetting']:+.1f} % | {r['minutes']:.1f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Two bar panels sharing the mitigation axis: task score (higher is better), forgetting (lower is better)."""
    from transferkit.evaluate.plots import _pyplot

    plt = _pyplot()
    names = [r["mitigation"] for r in rows][::-1]
    fig, (task, forgot) = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    task.barh(names, [100 * r["task"] for r in rows][::-1], color="tab:blue")
    task.set_xlabel("task: JSON field accuracy (%)  → better")
    task.set_xlim(0, 100)
    forgot.barh(names, [100 * r["forgetting"] for r in rows][::-1], color="tab:red")
    forgot.set_xlabel("forgetting: general-English perplexity increase (%)  ← better")
    for ax, key in ((task, "task"), (forgot, "forgetting")):
        for y, r in enumerate(rows[::-1]):
            ax.annotate(f"{100 * r[key]:+.1f}" if key == "forgetting" else f"{100 * r[key]:.1f}",
                        (max(100 * r[key], 0), y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("SmolLM2-135M, full fine-tune, 40 steps at lr 1e-3: what each mitigation keeps")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "forgetting", help="where the runs go")
    parser.add_argument("--steps", type=int, help="override train.max_steps (default: the recipe's)")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "forgetting.png")
    parser.add_argument("--results", type=Path, help="redraw the table and plot from a saved results.json, no training")
    args = parser.parse_args()
    if args.results:
        rows = json.loads(args.results.read_text())
    else:
        rows = run_all(args.out, args.steps)
        (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(table(rows))
    plot(rows, args.plot)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
