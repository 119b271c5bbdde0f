"""Are the per-method defaults good on real data? A small learning-rate sweep around each default.

For every (task, model, method) that applies — tasks from `transferkit/data/real_tasks.py` (data/austen-novel,
data/austen-speech: classification; data/chitchat-reply: instruction, decoders only), models minilm-l6 and
smollm2-135m, methods probe, freeze, lora, full — three runs at the method's default learning rate d (for the
model's architecture and the task) and at d/3 and 3·d, everything else the product's defaults (`train.head_lr`
too). Classification: the method's default epochs (3; the probe 20) at batch 32, scored by test accuracy; instruction: 1 epoch at batch 8 (a compute cap),
scored by test loss (no generation). No prompting
baseline and no forgetting measurement: they do not depend on the learning rate. LoRA and full fine-tuning at
their defaults also run with seeds 1 and 2 on the classification tasks: the target "LoRA within 1 point of full
fine-tuning" compares their means over three seeds, since one seed alone moves a score by about 2 points.

For the probe it also fits scikit-learn's logistic regression (standardised features, C = 1) on the very
features the probe trains on (the classifier's pooled features of the frozen backbone), train split → test.

It prints the tables, writes results.json under --out and as docs/data/defaults_results.json, and docs/defaults.md. Every run directory is kept, and a
re-run reuses finished runs (experiments/common.py). The sweep can be grown a model or task at a time, also across
machines: a run limited by --models/--tasks/--methods keeps the rows of docs/data/defaults_results.json that it
does not cover, each with the date, CPU, numerics and command that measured it (the page names every one):

    .venv/bin/python experiments/defaults.py --models minilm-l6                 # the encoder rows only
    .venv/bin/python experiments/defaults.py --models smollm2-135m --tasks chitchat-reply   # add the decoder's instruction rows
    .venv/bin/python experiments/defaults.py                                    # everything, nothing kept
    .venv/bin/python experiments/defaults.py --results runs/defaults/results.json   # rewrite the page only
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from datetime import date
from pathlib import Path

import torch
from common import continue_run

from transferkit.config import load_config
from transferkit.methods import get_method
from transferkit.methods.registry import HEAD_LR
from transferkit.models import architecture, resolve_model
from transferkit.runtime import cpu_name

ROOT = Path(__file__).resolve().parents[1]
TASKS = {"austen-novel": "classification", "austen-speech": "classification", "chitchat-reply": "instruction"}
MODELS = ("minilm-l6", "smollm2-135m")
METHODS = ("probe", "freeze", "lora", "full")
FACTORS = (1 / 3, 1.0, 3.0)
ENCODERS = ("minilm-l6",)              # undeclared encoders pool `mean` by default: checked against cls and pooler
POOLING_METHODS = ("probe", "lora")
HEAD_METHODS = ("freeze", "lora", "full", "adapter")  # a new head beside the method's parameters, at HEAD_LR
SLOW_HEAD_LR = 1e-3    # the head's rate before HEAD_LR: the adapters' own 1e-3, full's and freeze's former default
HEAD_TASKS = ("austen-novel",)  # where the head's rate is measured (the harder task: six classes)
HEAD_MODELS = ENCODERS           # and on which model (the decoder's sweep is long enough without it)
SEEDS = (0, 1, 2)          # LoRA against full fine-tuning: a seed alone moves a score by ~2 points, more than the target
SEEDED_METHODS = ("lora", "full")
TARGET_POINTS = 1.0        # defaults within this many accuracy points of the best swept setting
TARGET_PERPLEXITY = 0.01   # instruction: the default's test perplexity within 1 % of the best setting's (a "point"
                           # of perplexity, relative: test loss within ln 1.01 = 0.00995 nats)
PROBE_POINTS = 0.5         # the probe within this many points of scikit-learn on the same features


def applies(task: str, model: str, method: str) -> bool:
    if TASKS[task] == "instruction":
        return model != "minilm-l6" and method != "probe"
    return True


def default_lr(task: str, model: str, method: str) -> float:
    """The method's default learning rate for `model` on `task`, as a run resolves it (by the model's
    architecture and the task's data schema, where the method's default depends on them)."""
    return get_method(method).defaults.lr_for(architecture(resolve_model(model)), TASKS[task])


def run_config(task: str, model: str, method: str, lr: float, out: Path, pooling: str = "auto",
               head_lr: float | None = None, seed: int = 0):
    data = ROOT / "data" / task
    classify = TASKS[task] == "classification"
    name = f"{method}-lr{lr:.2g}" + ("" if pooling == "auto" else f"-{pooling}") + \
        ("" if head_lr is None else f"-head{head_lr:.2g}") + (f"-seed{seed}" if seed else "")
    tree = {"model": model, "method": {"name": method, "pooling": pooling},
            "data": {split: str(data / f"{split}.jsonl") for split in ("train", "validation", "test")},
            "train": {"epochs": get_method(method).defaults.epochs if classify else 1, "batch_size": 32 if classify else 8,
                      "lr": lr, "head_lr": head_lr},
            "eval": {"baseline": False, **({} if classify else {"exact_match": False})},
            "forgetting": {"reference": "none"}, "seed": seed,
            "output_dir": str(out / task / model / name)}
    return load_config(None, base=tree)


def score(summary: dict, task: str) -> float:
    return summary["test"]["accuracy"] if TASKS[task] == "classification" else summary["test"]["loss"]


def sklearn_probe(task: str, model_ref: str) -> float:
    """Test accuracy of a logistic regression on the probe's own features (pooled, frozen backbone)."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from transferkit.methods.probe import ProbeMethodConfig
    from transferkit.models import load_model

    rows = {split: [json.loads(line) for line in (ROOT / "data" / task / f"{split}.jsonl").open()]
            for split in ("train", "test")}
    labels = sorted({r["label"] for r in rows["train"]})
    model, tokenizer, _ = load_model(model_ref, task="classification", labels=labels)
    probe = get_method("probe").apply(model, ProbeMethodConfig(), "classification")

    def features(texts: list[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), 32):
            enc = tokenizer(texts[start: start + 32], padding=True, truncation=True, max_length=1024,
                            return_tensors="pt")
            with torch.no_grad():
                out.append(probe.features(enc["input_ids"], enc["attention_mask"]).numpy())
        return np.concatenate(out)

    x_train, x_test = (features([r["text"] for r in rows[s]]) for s in ("train", "test"))
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    classifier.fit(x_train, [r["label"] for r in rows["train"]])
    return float(classifier.score(x_test, [r["label"] for r in rows["test"]]))


def sweep(out: Path, tasks: list[str], models: list[str], methods: list[str], finished_only: bool = False
          ) -> list[dict]:
    """The rows of every run; `finished_only`: only runs already finished (nothing trains), for a page of what
    has been measured so far."""
    rows = []
    for task in tasks:
        for model in models:
            for method in methods:
                if not applies(task, model, method):
                    continue
                default = default_lr(task, model, method)
                for factor in FACTORS:
                    cfg = run_config(task, model, method, default * factor, out)
                    if finished_only and not (Path(cfg.output_dir) / "summary.json").is_file():
                        continue
                    started = time.perf_counter()
                    summary = continue_run(cfg, TASKS[task])
                    rows.append({"task": task, "model": model, "method": method, "lr": default * factor,
                                 "default": factor == 1.0, "score": score(summary, task),
                                 "trainable": summary["params"]["trainable"], "total": summary["params"]["total"],
                                 "minutes": summary["wall_time_s"] / 60, "precision": summary["precision"],
                                 "kept_step": summary["selection"]["chosen_step"], "steps": summary["steps"],
                                 "fresh": time.perf_counter() - started > 5})
                if method == "probe":
                    rows.append({"task": task, "model": model, "method": "sklearn-logreg", "lr": None,
                                 "default": True, "score": sklearn_probe(task, model)})
                if model in ENCODERS and method in POOLING_METHODS and TASKS[task] == "classification" \
                        and not finished_only:
                    rows += pooling_rows(task, model, method, out)
                if method in SEEDED_METHODS and TASKS[task] == "classification" and not finished_only:
                    rows += seed_rows(task, model, method, out)
            for method in HEAD_METHODS:
                if task in HEAD_TASKS and model in HEAD_MODELS and measures_head(method, methods) and not finished_only:
                    rows += head_rows(task, model, method, out)
    return rows


def measures_head(method: str, methods: list[str]) -> bool:
    """Whether a sweep of `methods` measures `method`'s head-rate rows: when it sweeps that method, or, for one it
    never sweeps (the bottleneck adapter), when it sweeps them all."""
    return method in methods if method in METHODS else set(methods) == set(METHODS)


def head_rows(task: str, model: str, method: str, out: Path) -> list[dict]:
    """The method at its default learning rate with the new head at SLOW_HEAD_LR and at its default."""
    defaults, lr = get_method(method).defaults, default_lr(task, model, method)
    rows = []
    for head_lr in (SLOW_HEAD_LR, defaults.head_lr):
        cfg = run_config(task, model, method, lr, out, head_lr=None if head_lr == defaults.head_lr else head_lr)
        rows.append({"task": task, "model": model, "method": method, "lr": lr, "head_lr": head_lr,
                     "score": score(continue_run(cfg, "classification"), task)})
    return rows


def seed_rows(task: str, model: str, method: str, out: Path) -> list[dict]:
    """The method at its default learning rate with each of SEEDS (seed 0: the sweep's default run)."""
    lr = default_lr(task, model, method)
    return [{"task": task, "model": model, "method": method, "lr": lr, "seed": seed,
             "score": score(continue_run(run_config(task, model, method, lr, out, seed=seed), "classification"), task)}
            for seed in SEEDS]


def scores_by(rows: list[dict], field: str) -> dict[tuple[str, str, str], dict]:
    """{(task, model, method): {the row's `field` value: score}} over the rows that vary `field`."""
    groups = {}
    for r in rows:
        if field in r:
            groups.setdefault((r["task"], r["model"], r["method"]), {})[r[field]] = r["score"]
    return groups


def seed_means(rows: list[dict]) -> dict[tuple[str, str, str], float]:
    """{(task, model, method): mean score over SEEDS} where every seed ran."""
    return {key: statistics.mean(by.values()) for key, by in scores_by(rows, "seed").items() if len(by) == len(SEEDS)}


def pooling_rows(task: str, model: str, method: str, out: Path) -> list[dict]:
    """The encoder's poolings at the method's default learning rate: the default run's (`auto`, resolved as its
    config.yaml records) and each other one."""
    lr = default_lr(task, model, method)
    default = run_config(task, model, method, lr, out)
    resolved = load_config(Path(default.output_dir) / "config.yaml").method.pooling
    rows = [{"task": task, "model": model, "method": method, "pooling": resolved, "lr": lr,
             "score": score(continue_run(default, "classification"), task)}]
    for pooling in ("cls", "pooler", "mean"):
        if pooling != resolved:
            summary = continue_run(run_config(task, model, method, lr, out, pooling), "classification")
            rows.append({"task": task, "model": model, "method": method, "pooling": pooling, "lr": lr,
                         "score": score(summary, task)})
    return rows


def within(gap: float, bound: float) -> bool:
    """`gap` ≤ `bound` points, a gap of exactly the bound included: 98.0 % − 97.0 % (3 of 300 passages) is 1.0
    point, which float subtraction makes 1.0000000000000009."""
    return round(gap, 9) <= bound


def verdicts(rows: list[dict]) -> list[dict]:
    """Per (task, model, method): default's score, best swept score, and the targets' checks."""
    cells = {}
    for r in rows:
        if "pooling" not in r and "head_lr" not in r and "seed" not in r:
            cells.setdefault((r["task"], r["model"], r["method"]), []).append(r)
    out = []
    for (task, model, method), runs in cells.items():
        if method == "sklearn-logreg":
            continue
        lower_better = TASKS[task] == "instruction"
        best = (min if lower_better else max)(runs, key=lambda r: r["score"])
        default = next((r for r in runs if r["default"]), None)
        if default is None:  # --finished-only before the default's run finished
            continue
        gap = (default["score"] - best["score"]) if lower_better else 100 * (best["score"] - default["score"])
        out.append({"task": task, "model": model, "method": method, "default_lr": default["lr"],
                    "default": default["score"], "best_lr": best["lr"], "best": best["score"], "gap": gap,
                    "trainable_share": default["trainable"] / default["total"],
                    "kept": f"{default['kept_step']} of {default['steps']}" if "kept_step" in default else "–"})
    return out


def stamped(results: dict) -> dict:
    """`results` with every row carrying the date, CPU, numerics and command that measured it (a file from before
    rows carried them has them once, at the top)."""
    top = {k: results[k] for k in ("date", "cpu", "precision", "args") if k in results}
    return {"runs": [{**top, **r} for r in results["runs"]]}


def identity(row: dict) -> tuple:
    """What a row measured: task, model, method and the setting it varied (learning rate, pooling, head rate,
    seed)."""
    return (row["task"], row["model"], row["method"], None if row["lr"] is None else round(row["lr"], 12),
            row.get("pooling"), row.get("head_lr"), row.get("seed"))


def kept(saved: list[dict], new: list[dict], tasks: list[str], models: list[str], methods: list[str],
         finished_only: bool) -> list[dict]:
    """The saved rows this sweep does not measure again: those outside its tasks × models × methods (a head-rate
    row as `measures_head` says, scikit-learn's as the probe's) and, for a page of finished runs only, any it did
    not find finished."""
    measured = {identity(r) for r in new}

    def covered(r: dict) -> bool:
        method = "probe" if r["method"] == "sklearn-logreg" else r["method"]
        swept = measures_head(method, methods) if "head_lr" in r else method in methods
        return r["task"] in tasks and r["model"] in models and swept
    return [r for r in saved if identity(r) not in measured and (not covered(r) or finished_only)]


def page(results: dict) -> str:
    """docs/defaults.md from the results."""
    rows, cells = results["runs"], verdicts(results["runs"])
    fmt = (lambda task, v: f"{100 * v:.1f} %" if TASKS[task] == "classification" else f"{v:.3f}")
    sources = {}
    for r in rows:
        if "precision" in r:  # the rows of a run's summary; scikit-learn's and the extra settings' share them
            sources.setdefault((r["date"], r["cpu"], r["precision"], r["args"]), {})[(r["task"], r["model"])] = None
    lines = ["# Are the defaults good? (generated by experiments/defaults.py)", ""]
    lines += [("" if len(sources) == 1 else "- ") +
              f"Measured {day} on {cpu}, {precision}, with `.venv/bin/python experiments/defaults.py {args}`"
              + ("" if len(sources) == 1 else ": " + ", ".join(f"{t} × {m}" for t, m in pairs)) + "."
              for (day, cpu, precision, args), pairs in sources.items()]
    lines += ["",
             ("Per method, the default learning rate d (declared in the method's module, `transferkit keys`; "
              "freeze, LoRA and the probe have their own for a decoder classifier, LoRA for a decoder's instruction data) and "
             "d/3, 3·d, everything else at the product's defaults. Classification: test accuracy after the method's "
             "default epochs (3; the probe 20) at batch 32; instruction: test loss after 1 epoch at batch 8 (lower is "
             "better). Gap: how far the default is from the best of the three (target: ≤ "
             f"{TARGET_POINTS:g} accuracy point; instruction: the test perplexity exp(loss) within "
             f"{100 * TARGET_PERPLEXITY:g} % of the best's). One run per setting "
             "(seed 0): one point is 4.8 of austen-novel's 480 test passages and 3 of austen-speech's 300, the order "
             "of what a different seed alone moves a score; LoRA and full fine-tuning at their defaults also ran with "
             "seeds 1 and 2, for the target that compares them (below)."), "",
             ("Kept step: the checkpoint the default run ended with, of the run's steps (`train.select`, the "
              "method's default: the best validation score for all but the probe — a tie goes to the later step, "
              "and an early one means the validation score fell after it; the last step for the probe, whose "
              "convex head an early pick on a small validation set only made worse: 79.0 % instead of 86.3 % on "
              "austen-speech with smollm2-135m, transferkit/methods/probe.py). Not recorded for rows measured "
              "before 2026-12-07."), "",
             "| task | model | method | default lr | default | best lr | best | gap | trainable | kept step |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        gap = f"{c['gap']:.1f} pt" if TASKS[c["task"]] == "classification" else \
            f"{c['gap']:+.3f} (perplexity {100 * math.expm1(c['gap']):+.1f} %)"
        lines.append(f"| {c['task']} | {c['model']} | {c['method']} | {c['default_lr']:.2g} | "
                     f"{fmt(c['task'], c['default'])} | {c['best_lr']:.2g} | {fmt(c['task'], c['best'])} | {gap} | "
                     f"{100 * c['trainable_share']:.2f} % | {c['kept']} |")
    lines += ["", "## Targets", ""]
    for c in cells:
        if TASKS[c["task"]] == "classification":
            mark = "met" if within(c["gap"], TARGET_POINTS) else "**missed**"
            lines.append(f"- {c['task']}, {c['model']}, {c['method']}: default within {TARGET_POINTS:g} point of the "
                         f"best swept setting — {mark} ({c['gap']:.1f} pt)")
        else:
            worse = math.expm1(c["gap"])
            mark = "met" if within(100 * worse, 100 * TARGET_PERPLEXITY) else "**missed**"
            lines.append(f"- {c['task']}, {c['model']}, {c['method']}: default's test perplexity within "
                         f"{100 * TARGET_PERPLEXITY:g} % of the best swept setting's — {mark} ({100 * worse:+.1f} %)")
    by_cell = {(c["task"], c["model"], c["method"]): c for c in cells}
    means = seed_means(rows)
    for (task, model, method), c in by_cell.items():
        if method != "lora" or TASKS[task] != "classification":
            continue
        if (task, model, "full") not in means or (task, model, "lora") not in means:
            lines.append(f"- {task}, {model}: LoRA within {TARGET_POINTS:g} point of full fine-tuning — not measured "
                         f"over {len(SEEDS)} seeds yet")
        else:
            gap = 100 * (means[(task, model, "full")] - means[(task, model, "lora")])
            mark = "met" if within(gap, TARGET_POINTS) and c["trainable_share"] < 0.02 else "**missed**"
            lines.append(f"- {task}, {model}: LoRA within {TARGET_POINTS:g} point of full fine-tuning at < 2 % "
                         f"trainable, mean of {len(SEEDS)} seeds — {mark} ({gap:+.1f} pt behind full, "
                         f"{100 * c['trainable_share']:.2f} % trainable)")
    for r in rows:
        if r["method"] == "sklearn-logreg":
            probe = by_cell[(r["task"], r["model"], "probe")]
            gap = 100 * (r["score"] - probe["default"])
            mark = "met" if within(gap, PROBE_POINTS) else "**missed**"
            lines.append(f"- {r['task']}, {r['model']}: probe within {PROBE_POINTS:g} point of scikit-learn's "
                         f"logistic regression on the same features ({100 * r['score']:.1f} %) — {mark} "
                         f"({gap:+.1f} pt behind scikit-learn)")
    seeded = [r for r in rows if "seed" in r]
    if seeded:
        lines += ["", "## LoRA against full fine-tuning, seed by seed", "",
                  f"Both at their default learning rates with seeds {', '.join(map(str, SEEDS))} (data order, "
                  "initialisation; seed 0 is the table's default run); the target above compares the means.", "",
                  "| task | model | method | " + " | ".join(f"seed {s}" for s in SEEDS) + " | mean |",
                  "|---|---|---|" + "---|" * (len(SEEDS) + 1)]
        groups = scores_by(rows, "seed")
        for key, by in groups.items():
            if key in means:
                lines.append(f"| {' | '.join(key)} | " + " | ".join(f"{100 * by[s]:.1f} %" for s in SEEDS) +
                             f" | {100 * means[key]:.1f} % |")
    pooled = [r for r in rows if "pooling" in r]
    if pooled:
        lines += ["", "## Pooling of an encoder", "",
                  "The same runs at the method's default learning rate with each pooling (`method.pooling`); "
                  "minilm-l6 declares `mean`, which `auto` took.", "",
                  "| task | model | method | cls | pooler | mean |", "|---|---|---|---|---|---|"]
        groups = scores_by(rows, "pooling")
        for (task, model, method), by in groups.items():
            lines.append(f"| {task} | {model} | {method} | " + " | ".join(
                f"{100 * by[p]:.1f} %" for p in ("cls", "pooler", "mean")) + " |")
    headed = [r for r in rows if "head_lr" in r]
    if headed:
        lines += ["", "## The new head's learning rate", "",
                  f"The same runs at the method's default learning rate with the classifier's new head at "
                  f"{SLOW_HEAD_LR:g} (the adapters' own rate; full's and freeze's former default) and at "
                  f"{HEAD_LR:g}, the default (`train.head_lr`; why: transferkit/methods/registry.py), on "
                  f"{', '.join(HEAD_TASKS)} with {', '.join(HEAD_MODELS)}. Bottleneck adapters (`adapter`) are measured here only.", "",
                  f"| task | model | method | head {SLOW_HEAD_LR:g} | head {HEAD_LR:g} (default) |", "|---|---|---|---|---|"]
        groups = scores_by(rows, "head_lr")
        for (task, model, method), by in groups.items():
            lines.append(f"| {task} | {model} | {method} | {100 * by[SLOW_HEAD_LR]:.1f} % | {100 * by[HEAD_LR]:.1f} % |")
    missing = [f"{t} × {m} × {x}" for t in TASKS for m in MODELS for x in METHODS
               if applies(t, m, x) and (t, m, x) not in by_cell]
    if missing:
        lines += ["", "Not measured yet: " + ", ".join(missing) + " (a run of `experiments/defaults.py` limited "
                  "to them, e.g. `--models M --tasks T --methods X`, adds them and keeps every row above)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "defaults", help="where the runs go")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--page", type=Path, default=ROOT / "docs" / "defaults.md")
    parser.add_argument("--results", type=Path, help="rewrite the page from a saved results.json")
    parser.add_argument("--finished-only", action="store_true", help="the page of the runs finished so far; "
                                                                      "nothing trains")
    args = parser.parse_args()
    saved_path = ROOT / "docs" / "data" / "defaults_results.json"
    if args.results:
        results = stamped(json.loads(args.results.read_text()))
    else:
        shown = " ".join(f"--{k} {' '.join(v)}" for k, v in (("models", args.models), ("tasks", args.tasks),
                                                               ("methods", args.methods))
                         if list(v) != list({"models": MODELS, "tasks": TASKS, "methods": METHODS}[k]))
        stamp = {"date": date.today().isoformat(), "cpu": f"{cpu_name()} ({torch.backends.cpu.get_cpu_capability()})",
                 "args": shown + (" --finished-only" if args.finished_only else "")}
        runs = [{**r, **stamp} for r in sweep(args.out, args.tasks, args.models, args.methods, args.finished_only)]
        saved = stamped(json.loads(saved_path.read_text()))["runs"] if saved_path.is_file() else []
        results = {"runs": kept(saved, runs, args.tasks, args.models, args.methods, args.finished_only) + runs}
        args.out.mkdir(parents=True, exist_ok=True)
        for path in (args.out / "results.json", saved_path):
            path.write_text(json.dumps(results, indent=2) + "\n")
    text = page(results)
    args.page.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
