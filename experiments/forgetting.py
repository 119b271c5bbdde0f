"""Does full fine-tuning make SmolLM2 forget general English, and which mitigation helps?

Runs recipes/forgetting-full.yaml four times on the same task and budget: no mitigation, replay,
EWC and L2-SP (strengths below), then prints a table of task score vs forgetting and draws
docs/forgetting.png. Every run directory is kept under --out for inspection.

    .venv/bin/python experiments/forgetting.py            # about 25 minutes on 2 CPU cores
    .venv/bin/python experiments/forgetting.py --steps 5  # a quick smoke run
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
    "EWC λ=1000": ["forgetting.ewc=1000"],
    "L2-SP α=1": ["forgetting.l2sp=1"],
}


def run_all(out: Path, steps: int | None) -> list[dict]:
    rows = []
    for name, overrides in MITIGATIONS.items():
        run_dir = out / name.split()[0].lower().replace("-", "")
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
    from transferkit.evaluate.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.scatter(100 * r["forgetting"], 100 * r["task"], s=60)
        ax.annotate(r["mitigation"], (100 * r["forgetting"], 100 * r["task"]), textcoords="offset points",
                    xytext=(6, 4), fontsize=9)
    ax.set_xlabel("forgetting: general-English perplexity increase (%)")
    ax.set_ylabel("task: JSON field accuracy (%)")
    ax.set_title("SmolLM2-135M full fine-tune: task vs forgetting")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "forgetting", help="where the four runs go")
    parser.add_argument("--steps", type=int, help="override train.max_steps (default: the recipe's)")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "forgetting.png")
    args = parser.parse_args()
    rows = run_all(args.out, args.steps)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(table(rows))
    plot(rows, args.plot)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
