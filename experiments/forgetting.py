"""Does full fine-tuning make SmolLM2 forget general English, and which mitigation helps?

Runs recipes/forgetting-full.yaml (full fine-tune of SmolLM2-135M on the quickstart task) in two stages:

1. choose (seed 0): every candidate strength of each mitigation, judged on *validation* data only — the task
   on the quickstart validation split, forgetting on `general-validation` (Jane Austen's Northanger Abbey).
   Per mitigation the chosen strength is the one with the least validation forgetting among those whose
   validation JSON field accuracy is within 2 points of the unmitigated run's (else the best task score);
2. report: no mitigation and each chosen strength, seeds 0, 1, 2, on the *test* data — the quickstart test
   split and `general` (Persuasion): mean and range over the seeds.

It prints both tables, writes results.json under --out and draws docs/forgetting.png. Every run directory
is kept under --out, and a re-run reuses the finished ones and resumes an interrupted one (same config).

    .venv/bin/python experiments/forgetting.py            # 23 runs: ~70 min on 2 AVX512-BF16 cores, ~3 h on AVX2
    .venv/bin/python experiments/forgetting.py --steps 5 --seeds 0  # a quick smoke run
    python experiments/forgetting.py --jobs 12   # on a GPU machine with 16 cores: 12 runs at once
    .venv/bin/python experiments/forgetting.py --results docs/data/forgetting_results.json  # redraw only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from multiprocessing import get_context
from pathlib import Path

from common import continue_run

from transferkit.config import load_config

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "forgetting-full.yaml"
CANDIDATES = {
    "none": {"none": []},
    "replay": {f"replay {r:.0%}": [f"forgetting.replay={r}"] for r in (0.1, 0.25, 0.5)},
    "EWC": {f"EWC λ={lam:g}": [f"forgetting.ewc={lam}"] for lam in (1, 10, 100, 1000)},
    "L2-SP": {f"L2-SP α={a:g}": [f"forgetting.l2sp={a}"] for a in (0.1, 1, 10)},
}
VALIDATION = ["data.test=data/quickstart/validation.jsonl", "forgetting.reference=general-validation"]
TASK_SLACK = 0.02  # a chosen strength may cost at most this much validation JSON field accuracy


def one_run(name: str, overrides: list[str], out: Path, seed: int, steps: int | None) -> dict:
    run_dir = out / f"{name.lower().replace(' ', '-').replace('%', '').replace('=', '')}-seed{seed}"
    extra = [f"output_dir={run_dir}", f"seed={seed}"] + ([f"train.max_steps={steps}"] if steps else [])
    cfg = load_config(RECIPE, overrides + extra)
    summary = continue_run(cfg, "instruction")
    return {"mitigation": name, "seed": seed, "task": summary["test"]["json_field_accuracy"],
            "exact_match": summary["test"]["exact_match"], "base_ppl": summary["forgetting"]["base_perplexity"],
            "tuned_ppl": summary["forgetting"]["tuned_perplexity"], "forgetting": summary["forgetting"]["forgetting"],
            "reference": summary["general"]["base"]["text"], "minutes": summary["wall_time_s"] / 60}


def run_all(runs: list[tuple], jobs: int) -> list[dict]:
    """`one_run(*args)` for each of `runs`, in order; with jobs > 1 that many at once, each in a fresh process
    with its share of the CPU threads (on a GPU they share the device). The first runs alone, so the model is
    converted into the cache once."""
    if jobs <= 1 or len(runs) <= 1:
        return [one_run(*r) for r in runs]
    first = one_run(*runs[0])
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_set_threads, initargs=(threads,),
                             max_tasks_per_child=1) as pool:
        return [first] + list(pool.map(one_run, *zip(*runs[1:])))


def _set_threads(n: int) -> None:
    import torch
    torch.set_num_threads(n)


def choose(out: Path, steps: int | None, jobs: int = 1) -> tuple[list[dict], dict[str, str]]:
    """Stage 1: every candidate on validation data; the chosen name per mitigation."""
    rows = run_all([(name, overrides + VALIDATION, out / "choose", 0, steps)
                    for group in CANDIDATES.values() for name, overrides in group.items()], jobs)
    none = next(r for r in rows if r["mitigation"] == "none")
    chosen = {}
    for group, candidates in CANDIDATES.items():
        scored = [r for r in rows if r["mitigation"] in candidates]
        keeping = [r for r in scored if r["task"] >= none["task"] - TASK_SLACK]
        best = min(keeping, key=lambda r: r["forgetting"]) if keeping else max(scored, key=lambda r: r["task"])
        chosen[group] = best["mitigation"]
    return rows, chosen


def report(out: Path, chosen: dict[str, str], seeds: list[int], steps: int | None, jobs: int = 1) -> list[dict]:
    """Stage 2: the chosen settings on test data, one run per seed."""
    overrides = {name: o for group in CANDIDATES.values() for name, o in group.items()}
    return run_all([(name, overrides[name], out / "report", seed, steps) for name in chosen.values() for seed in seeds],
                   jobs)


def machine() -> dict:
    """Where the figures were measured: they depend on the device and its numerics."""
    import torch
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"date": date.today().isoformat(), "device": gpu or platform.processor() or platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__}


def spread(rows: list[dict], key: str) -> tuple[float, float, float]:
    values = [r[key] for r in rows]
    return statistics.mean(values), min(values), max(values)


def tables(results: dict) -> str:
    lines = ["Stage 1, validation data (seed 0): task = quickstart validation split, forgetting on Northanger Abbey",
             "", "| candidate | JSON field accuracy | general ppl (base → tuned) | forgetting | chosen |", "|---|---|---|---|---|"]
    if "machine" in results:
        m = results["machine"]
        lines = [f"Measured {m['date']} on {m['device']} (torch {m['torch']}), {m['jobs']} run(s) at once", ""] + lines
    for r in results["choose"]:
        mark = "yes" if r["mitigation"] in results["chosen"].values() else ""
        lines.append(f"| {r['mitigation']} | {100 * r['task']:.1f} % | {r['base_ppl']:.2f} → {r['tuned_ppl']:.2f} | "
                     f"{100 * r['forgetting']:+.1f} % | {mark} |")
    seeds = sorted({r["seed"] for r in results["report"]})
    lines += ["", f"Stage 2, test data (seeds {', '.join(map(str, seeds))}): mean (min – max)", "",
              "| mitigation | JSON field accuracy | exact match | forgetting | minutes |", "|---|---|---|---|---|"]
    for name in results["chosen"].values():
        rows = [r for r in results["report"] if r["mitigation"] == name]
        task, em, forgot = spread(rows, "task"), spread(rows, "exact_match"), spread(rows, "forgetting")
        lines.append(f"| {name} | {100 * task[0]:.1f} % ({100 * task[1]:.1f} – {100 * task[2]:.1f}) | "
                     f"{100 * em[0]:.1f} % ({100 * em[1]:.1f} – {100 * em[2]:.1f}) | {100 * forgot[0]:+.1f} % "
                     f"({100 * forgot[1]:+.1f} – {100 * forgot[2]:+.1f}) | {spread(rows, 'minutes')[0]:.1f} |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """Test task score and forgetting per chosen mitigation: mean bars, the seeds' range as error bars."""
    from transferkit.evaluate.plots import _pyplot

    plt = _pyplot()
    names = list(results["chosen"].values())[::-1]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, key, color, label in ((axes[0], "task", "tab:blue", "test: JSON field accuracy (%)  → better"),
                                  (axes[1], "forgetting", "tab:red", "forgetting on Persuasion (%)  ← better")):
        stats = [spread([r for r in results["report"] if r["mitigation"] == n], key) for n in names]
        means = [100 * s[0] for s in stats]
        errors = [[100 * (s[0] - s[1]) for s in stats], [100 * (s[2] - s[0]) for s in stats]]
        ax.barh(names, means, xerr=errors, color=color, capsize=3)
        for y, mean in enumerate(means):
            ax.annotate(f"{mean:+.1f}" if key == "forgetting" else f"{mean:.1f}", (max(mean, 0), y), xytext=(4, 6),
                        textcoords="offset points", fontsize=8)
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_xlim(0, 105)
    fig.suptitle("SmolLM2-135M, full fine-tune, 40 steps at lr 1e-3: mean over seeds, bars = range")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "forgetting", help="where the runs go")
    parser.add_argument("--steps", type=int, help="override train.max_steps (default: the recipe's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the report stage")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "forgetting.png")
    parser.add_argument("--results", type=Path, help="redraw the tables and plot from a saved results.json")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at once (a machine with many cores or a GPU); their minutes then overlap")
    args = parser.parse_args()
    if args.results:
        results = json.loads(args.results.read_text())
    else:
        rows, chosen = choose(args.out, args.steps, args.jobs)
        results = {"machine": machine() | {"jobs": args.jobs}, "choose": rows, "chosen": chosen,
                   "report": report(args.out, chosen, args.seeds, args.steps, args.jobs)}
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(tables(results))
    plot(results, args.plot)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
