"""Where did LoRA and full fine-tuning change the packaged encoder? docs/diagnostics.md's measurement.

    .venv/bin/python experiments/diagnostics.py [--task austen-novel] [--max-examples 480]

1. Trains (or reuses: the same runs as experiments/recommend_check.py's, under runs/recommend-check/<task>/) two
   rungs of the ladder on the task with all-MiniLM-L6-v2 and transferkit's defaults: LoRA r=8 and full
   fine-tuning with layer-wise learning-rate decay 0.9.
2. Runs `transferkit diagnose` on each, on the task's test file: probes per layer for base and tuned, linear and
   debiased CKA between base and tuned layer by layer, and every block matrix's ‖ΔW‖/‖W‖ and effective rank.
3. Writes docs/data/diagnostics_<task>.json (both results, the test scores, the machine) and docs/diagnostics.png
   (probe accuracy, CKA and weight change by layer, LoRA beside full fine-tuning), and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from common import continue_run
from forgetting import machine
from recommend_check import rung_config

from transferkit.api import diagnose
from transferkit.evaluate.plots import _pyplot
from transferkit.options import DiagnoseConfig
from transferkit.recommend import LADDER

ROOT = Path(__file__).resolve().parents[1]
RUNGS = ("LoRA r=8", "full, LLRD 0.9")


def measure(task: str, max_examples: int) -> dict:
    folder = ROOT / "data" / task
    results = {}
    for rung, method, overrides in LADDER:
        if rung not in RUNGS:
            continue
        out = ROOT / "runs" / "recommend-check" / task / rung.replace(" ", "-").replace(",", "")
        summary = continue_run(rung_config(folder, "minilm-l6", method, overrides, out), "classification")
        found = {}
        for debiased in (False, True):
            options = DiagnoseConfig(enabled=True, data=str(folder / "test.jsonl"), max_examples=max_examples,
                                     debiased=debiased)
            found[debiased] = diagnose(out, options)
        result = found[False]
        result["cka_debiased"] = found[True]["cka"]
        results[rung] = {"run": str(out.relative_to(ROOT)), "macro_f1": summary["test"]["macro_f1"],
                         "accuracy": summary["test"]["accuracy"], "train_s": summary["timings_s"]["train"],
                         "trainable": summary["params"]["trainable"], "diagnostics": result}
    return {"task": task, "model": "minilm-l6", "machine": machine(),
            "command": f"python experiments/diagnostics.py --task {task} --max-examples {max_examples}",
            "results": results}


def plot(data: dict, path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    first = next(iter(data["results"].values()))["diagnostics"]
    axes[0].plot(first["layers"], first["probes"]["base"], marker="o", color="grey", label="base")
    for (rung, row), color in zip(data["results"].items(), ("tab:blue", "tab:orange")):
        d = row["diagnostics"]
        axes[0].plot(d["layers"], d["probes"]["tuned"], marker="o", color=color, label=rung)
        axes[1].plot(d["layers"], d["cka"]["by_layer"], marker="o", color=color, label=f"{rung}")
        axes[1].plot(d["layers"], row["diagnostics"]["cka_debiased"]["by_layer"], linestyle="--", marker=".",
                     color=color, alpha=0.6, label=f"{rung} (debiased)")
        blocks = d["weights"]["by_layer"]
        ranks = [m["effective_rank"] for m in d["weights"]["matrices"] if m["delta_norm"] > 0]
        axes[2].plot([b["layer"] for b in blocks], [b["relative"] for b in blocks], marker="o", color=color,
                     label=f"{rung}: median effective rank {statistics.median(ranks):.1f}")
    axes[0].set(title="probe accuracy (5-fold CV)", xlabel="layer (0: embeddings)")
    axes[1].set(title="CKA base vs tuned, same layer", xlabel="layer (0: embeddings)")
    axes[2].set(title="‖ΔW‖ / ‖W‖ per block (√Σ over its matrices)", xlabel="block", yscale="log")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{data['model']} on {data['task']}: where LoRA and full fine-tuning changed the network", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(data: dict) -> str:
    lines = []
    for rung, row in data["results"].items():
        d = row["diagnostics"]
        lines += [f"{rung}: macro-F1 {row['macro_f1']:.3f}, {row['trainable']:,} trainable, {row['train_s']:.0f} s",
                  "layer  probe base  probe tuned  CKA  CKA debiased  block  rel. change  changed  eff. rank  rank 90 %"]
        blocks = {b["layer"]: b for b in d["weights"]["by_layer"]}
        for i, layer in enumerate(d["layers"]):
            b = blocks.get(layer - 1)
            weights = f"{layer - 1:>5}  {b['relative']:>11.2e}  {b['changed']:>3}/{b['matrices']:<3}  " \
                      f"{b['effective_rank']:>9.1f}  {b['rank_90']:>9}" if b else ""
            lines.append(f"{layer:>5}  {d['probes']['base'][i]:>10.3f}  {d['probes']['tuned'][i]:>11.3f}  "
                         f"{d['cka']['by_layer'][i]:.3f}  {d['cka_debiased']['by_layer'][i]:>12.3f}  {weights}")
        lines += [d["reading"], ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="austen-novel")
    parser.add_argument("--max-examples", type=int, default=480)
    parser.add_argument("--replot", action="store_true", help="redraw the figure and table from the written JSON")
    args = parser.parse_args()
    out = ROOT / "docs" / "data" / f"diagnostics_{args.task.replace('-', '_')}.json"
    if args.replot:
        data = json.loads(out.read_text())
    else:
        data = measure(args.task, args.max_examples)
        out.write_text(json.dumps(data, indent=2) + "\n")
    plot(data, ROOT / "docs" / "diagnostics.png")
    print(table(data))
    print(f"written: {out.relative_to(ROOT)}, docs/diagnostics.png")


if __name__ == "__main__":
    main()
