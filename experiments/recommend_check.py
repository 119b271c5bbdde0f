"""Is `transferkit recommend` right? Its choice against every rung of the ladder, measured, on several tasks.

    .venv/bin/python experiments/recommend_check.py [--tasks topics austen-novel quickstart chitchat-reply]
                                                    [--out runs/recommend-check] [--finished-only]

Per task (a folder of data/ with train, validation and test files, and the packaged model for its kind):

1. `recommend` on the training file (this machine as the hardware, no budget, forgetting any);
2. every rung of the ladder that serves the task trained with transferkit's defaults for its method (the
   same data, splits and seed; each method's own epochs, `transferkit keys`), and its test headline metric
   (macro-F1 for classification, the data's headline otherwise) and training time read from summary.json;
3. the rank of the recommended rung among those measured, and the target of issue 15: the recommendation is
   the best, or within 1 point of the best, at no more than the best's cost (training seconds).

The prompting baseline is in every run's summary (`baseline`), so it is reported beside each task, not
trained. Runs are kept under --out; a re-run reuses finished runs and resumes interrupted ones. Writes
docs/data/recommend_check.json and prints one table per task.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import continue_run

from transferkit.api import recommend
from transferkit.config import config_to_dict, load_config
from transferkit.data import TASK_OF_SCHEMA, read_train
from transferkit.recommend import LADDER

ROOT = Path(__file__).resolve().parents[1]
MODEL = {"classification": "minilm-l6", "causal-lm": "smollm2-135m"}
SLACK = 0.01  # within 1 point of the best


def rung_config(folder: Path, model: str, method: str, overrides: dict, out: Path):
    base = {"model": model, "data": {split: str(folder / f"{split}.jsonl") for split in ("train", "validation", "test")},
            "method": {"name": method}, "output_dir": str(out)}
    return load_config(None, [f"{key}={value}" for key, value in overrides.items()], base=base)


def check_task(name: str, out: Path, finished_only: bool) -> dict:
    folder = ROOT / "data" / name
    schema = read_train(load_config(None, [f"data.train={folder / 'train.jsonl'}"]).data)[0]
    task = TASK_OF_SCHEMA[schema]
    decided, _ = recommend(folder / "train.jsonl", model=MODEL[task])
    rows = []
    for rung, method, overrides in LADDER:
        if method is None or (method == "probe" and task != "classification"):
            continue
        cfg = rung_config(folder, MODEL[task], method, overrides, out / name / rung.replace(" ", "-").replace(",", ""))
        if finished_only and not (Path(cfg.output_dir) / "summary.json").is_file():
            rows.append({"rung": rung, "finished": False})
            continue
        summary = continue_run(cfg, schema)
        comparison = summary["comparison"]
        rows.append({"rung": rung, "finished": True, "metric": comparison["metric"], "score": comparison["tuned"],
                     "baseline": comparison["baseline"], "train_s": summary["timings_s"].get("train"),
                     "config": config_to_dict(cfg)["method"]})
    measured = [r for r in rows if r["finished"]]
    best = max(measured, key=lambda r: r["score"], default=None)
    chosen = next((r for r in measured if r["rung"] == decided.trainable_top().rung), None)
    met = None if best is None or chosen is None else (
        chosen["score"] >= best["score"] - SLACK and chosen["train_s"] <= best["train_s"])
    ranked = sorted(measured, key=lambda r: -r["score"])
    return {"task": name, "model": MODEL[task], "recommended": decided.trainable_top().rung,
            "shift": {"kind": decided.shift.kind, "value": decided.shift.value}, "examples": decided.data.examples,
            "rank": None if chosen is None else ranked.index(chosen) + 1, "of": len(measured), "target_met": met,
            "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["topics", "austen-novel", "quickstart", "chitchat-reply"])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "recommend-check")
    parser.add_argument("--finished-only", action="store_true", help="report what has finished; train nothing")
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "data" / "recommend_check.json")
    args = parser.parse_args()
    results = [check_task(name, args.out, args.finished_only) for name in args.tasks]
    for result in results:
        print(f"\n{result['task']} ({result['model']}, {result['examples']} examples, {result['shift']['kind']} "
              f"{result['shift']['value']:.2f}): recommended {result['recommended']}, rank {result['rank']} of "
              f"{result['of']}, target met: {result['target_met']}")
        for row in result["rows"]:
            if row["finished"]:
                print(f"  {row['rung']:16} {row['metric']} {row['score']:.3f} (baseline {row['baseline']}) "
                      f"train {row['train_s']:.0f} s")
            else:
                print(f"  {row['rung']:16} not measured yet")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
