"""SFT first, then DPO: does preference training on top of an SFT run raise held-out preference accuracy?

Four runs on SmolLM2-135M, every one a normal `transferkit train` (reused when finished, resumed when
interrupted):

1. sft        recipes/quickstart.yaml for 15 steps × 8 examples at lr 1e-3: a model that has partly learned the JSON
              task (1e-3 was LoRA's default on instruction data when this was measured; since 2026-12-07 it is 3e-3,
              which would teach more in 15 steps, so the rate is pinned: the preference set is built from this
              model's mistakes)
2. dpo        recipes/dpo.yaml with `model=` the sft run: a new LoRA adapter on the sft model's merged weights,
              50 steps × 8 pairs of data/quickstart-preference (chosen = the correct record, rejected = one field
              wrong the way the sft model gets it wrong)
3. dpo+sft    the same with `preference.sft_weight=1` (RPO: + the chosen answer's mean token NLL)
4. sft-more   the like-for-like alternative: 50 more SFT steps × 8 examples on the same prompts' chosen answers
              (data/quickstart, whose completions are the pairs' chosen side), a new LoRA adapter on the same
              merged sft model, same rank, the sft run's learning rate

Each is scored on the same 100 held-out pairs (data/quickstart-preference/test.jsonl, prompts no run trained on):
preference accuracy (the chosen record more likely than the rejected one), per wrong field, the mean log-probability
margin and of the chosen answer; and on the task itself (data/quickstart/test.jsonl: greedy answers' JSON field
accuracy and exact match); forgetting is each run's own (Austen's Persuasion; the three later runs against the sft
model, their base). What differs: DPO also reads the rejected answers (twice the sequences per step) against a
reference; sft-more reads only chosen ones. It prints markdown tables and writes results.json under --out.

    .venv/bin/python experiments/dpo.py --out runs/dpo     # about an hour on 2 AVX2 cores
"""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path

from common import continue_run

from transferkit.api import evaluate_run, write_chained_base
from transferkit.config import load_config
from transferkit.options import EvalConfig
from transferkit.runtime import cpu_name

ROOT = Path(__file__).resolve().parents[1]
PAIRS = ROOT / "data" / "quickstart-preference" / "test.jsonl"
QUICKSTART = ROOT / "data" / "quickstart" / "test.jsonl"


def runs(out: Path) -> dict[str, dict]:
    """{name: summary} of the four runs, trained or reused in order."""
    sft = out / "sft-15"
    done = {"sft": continue_run(load_config(ROOT / "recipes" / "quickstart.yaml", [
        "train.max_steps=15", "train.lr=1e-3", "train.eval_every=5", "train.save_every=5", f"output_dir={sft}"]), "instruction")}
    write_chained_base(str(sft))   # continue_run trains through the recipe; the merged sft model is made here
    dpo = ROOT / "recipes" / "dpo.yaml"
    done["dpo"] = continue_run(load_config(dpo, [f"model={sft}", f"output_dir={out / 'dpo'}"]), "preference")
    done["dpo+sft"] = continue_run(load_config(dpo, [f"model={sft}", "preference.sft_weight=1",
                                                     f"output_dir={out / 'dpo-sft'}"]), "preference")
    done["sft-more"] = continue_run(load_config(ROOT / "recipes" / "quickstart.yaml", [
        f"model={sft}", "train.max_steps=50", "train.lr=1e-3", "train.eval_every=10", "train.save_every=10", "eval.baseline=false",
        f"output_dir={out / 'sft-more'}"]), "instruction")
    return done


FOLDERS = {"dpo": "dpo", "dpo+sft": "dpo-sft", "sft-more": "sft-more"}
TASK = EvalConfig(max_new_tokens=48, batch_size=25, task_metric="json")


def scored(out: Path, done: dict[str, dict]) -> list[dict]:
    """One row per model: on the held-out pairs and on the task's test split."""
    rows = []
    for name, title in (("sft", "sft (15 steps)"), ("dpo", "+ 50 DPO steps"), ("dpo+sft", "+ 50 DPO steps, sft_weight 1"),
                        ("sft-more", "+ 50 SFT steps")):
        if name == "sft":
            pairs, task = done["dpo"]["baseline"]["zero_shot"], done["sft"]["test"]
        else:
            run = str(out / FOLDERS[name])
            pairs = evaluate_run(str(PAIRS), run_dir=run, reference="none")[0]["metrics"]
            task = evaluate_run(str(QUICKSTART), run_dir=run, eval_cfg=TASK, reference="none")[0]["metrics"]
        rows.append({"model": title, "preference_accuracy": pairs["preference_accuracy"],
                     "by_field": {k: v["preference_accuracy"] for k, v in pairs["slices"].items()},
                     "logp_margin": pairs["logp_margin"], "chosen_logp": pairs["chosen_logp"],
                     "json_field_accuracy": task["json_field_accuracy"], "exact_match": task["exact_match"],
                     "forgetting": done[name]["forgetting"]["forgetting"], "minutes": done[name]["wall_time_s"] / 60,
                     "flags": done[name]["flags"]})
    return rows


def table(rows: list[dict]) -> str:
    fields = sorted(rows[0]["by_field"])
    lines = ["| model | preference accuracy (100 held-out pairs) | " + " | ".join(f"wrong {f}" for f in fields) +
             " | mean log-prob margin | chosen log-prob | JSON field accuracy | exact match | forgetting |",
             "|---" * (7 + len(fields)) + "|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['preference_accuracy']:.0%} | " +
                     " | ".join(f"{r['by_field'][f]:.0%}" for f in fields) +
                     f" | {r['logp_margin']:.2f} | {r['chosen_logp']:.3f} | {r['json_field_accuracy']:.2%} | "
                     f"{r['exact_match']:.0%} | {r['forgetting']:+.1%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "runs" / "dpo"))
    out = Path(parser.parse_args().out)
    done = runs(out)
    rows = scored(out, done)
    print(table(rows))
    for name in ("dpo", "dpo+sft"):
        run = done[name]
        print(f"\n{name}: {run['steps']} steps (weights of step {run['selection']['chosen_step']}), "
              f"{run['wall_time_s'] / 60:.1f} min, phases {run['timings_s']}, flags {run['flags']}")
    (out / "results.json").write_text(json.dumps({"date": str(date.today()), "cpu": cpu_name(),
                                                  "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
