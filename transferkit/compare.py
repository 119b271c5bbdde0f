"""`transferkit compare`: several rungs of the ladder on the same data, splits, seed and budget.

    OUTPUT_DIR/
      <method>/             a normal run directory per method: inspect, evaluate, report or serve it as any run
      <method>.requested.yaml   the config as asked, so that a re-run knows a finished run is the same one
      <method>.speed.json   --budget minutes=N: the method's measured seconds per optimizer step, its steps' plan
      comparison.json       one row per method (below), the Pareto marks and the one-sentence advice
      comparison.png        score against train time and against trainable parameters (log axis)
      report.html           the comparison on one page: advice, table linked to each run's report, four charts

Each method starts from its own defaults (`methods/<name>.py` declares them: a LoRA learning rate is not a full
fine-tune's; `transferkit keys` lists them) with the config's data, model, seed and the one budget (optimizer
steps, training tokens, or minutes of optimizer steps: `timed_steps`); `baseline`
in the list means the prompting baseline, measured once (by the first trained method's run) instead of by
every run. A re-run reuses every finished run whose config is unchanged and resumes an interrupted one from
its last checkpoint; a method that fails (out of memory, a refused combination) is recorded with its error
and the others go on.

Per row: the headline test score with a bootstrap 95 % interval over the test examples (Efron & Tibshirani
1993; 1,000 resamples, percentile interval), the gain over the best baseline, trainable parameters, adapter
bytes on disk, train seconds, peak memory beside the calculator's predicted peak (`transferkit cost`, for
runs on this CPU), and forgetting. A method is Pareto-optimal when no other scores at least as well at no more train time (or
peak memory), better in one. The advice: the cheapest method (train time) within `SLACK` of the best score.
"""

from __future__ import annotations

import codecs
import dataclasses
import json
import math
import random
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from .config import dump_config, load_config, with_method, with_overrides
from .cost import estimate, get_hardware
from .cost.calibrate import measure_steps
from .errors import ConfigError, UserError
from .evaluate.comparison import LOWER_IS_BETTER
from .evaluate.comparison import compare as judge
from .evaluate.metrics import macro_f1
from .methods import method_names
from .options import RunConfig
from .report import budget_sentence, write_comparison_report
from .rundir import RunDir
from .train import train

SLACK = 0.01            # within 1 point of the best score counts as as good
RESAMPLES = 1000        # bootstrap resamples of the test examples


@dataclass(frozen=True)
class Budget:
    """The same amount of training for every method: optimizer steps, training tokens, or minutes of training
    (each method's steps planned from its own measured speed, `timed_steps`, and `train.max_minutes` as the limit)."""

    kind: str        # "steps", "tokens" or "minutes"
    amount: float    # a whole number for steps and tokens

    @classmethod
    def parse(cls, text: str) -> Budget:
        kind, _, amount = text.partition("=")
        try:
            value = float(amount) if kind == "minutes" else int(amount) if amount.isdigit() else 0
        except ValueError:
            value = 0
        if kind not in ("steps", "tokens", "minutes") or not value > 0 or value == math.inf:
            raise ConfigError(f"--budget '{text}': give steps=N, tokens=N (whole numbers) or minutes=N, with N > 0")
        return cls(kind, value)

    def steps(self, tokens_per_step: float) -> int | None:
        """Optimizer steps per method; None for minutes, where each method's steps come from its speed."""
        if self.kind == "minutes":
            return None
        if self.kind == "steps":
            return self.amount
        steps = math.floor(self.amount / tokens_per_step)
        if steps < 1:
            raise ConfigError(f"--budget tokens={self.amount} is less than one optimizer step "
                              f"(about {tokens_per_step:,.0f} training tokens per step here)")
        return steps


def parse_methods(text: str) -> list[str]:
    """'baseline,probe,lora' → names, each checked against the registry; every problem in one message."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n != "baseline" and n not in method_names()]
    if unknown or not [n for n in names if n != "baseline"]:
        raise ConfigError(f"--methods: unknown {', '.join(map(repr, unknown)) or 'nothing to train'}; known: "
                          f"baseline, {', '.join(method_names())}")
    return names


def method_config(cfg: RunConfig, name: str, steps: int, out: Path, baseline: bool,
                  minutes: float | None = None) -> RunConfig:
    """The run of method `name` in the comparison: its defaults, the shared budget, its own folder."""
    limit = "null" if minutes is None else f"{minutes:g}"
    return with_overrides(with_method(cfg, name), [f"train.max_steps={steps}", "train.epochs=null",
                                                   f"train.max_minutes={limit}",
                                                   f"eval.baseline={str(baseline).lower()}",
                                                   f"output_dir={out / name}"])


SPEED_STEPS = 5   # optimizer steps timed (after one warm-up step) to plan a method's steps for a minutes budget


def timed_steps(cfg: RunConfig, minutes: float) -> int:
    """For `--budget minutes=N`: the optimizer steps `cfg`'s method is planned with (its schedule spans them),
    N minutes over its seconds per step. The speed is measured here (`cost.calibrate.measure_steps`: a few real
    steps, evaluation off, the warm-up excluded) and kept beside the run as `<run>.speed.json`, so that a re-run
    plans the same steps and reuses a finished run. The run's `train.max_minutes` counts the same thing, optimizer
    steps (validation and checkpoints not), so it ends at its last planned step unless it ran slower than measured
    (a method whose later steps are faster, like the probe reading cached features, ends early and under budget).
    Raises `ConfigError` when N minutes hold no whole step."""
    path = Path(cfg.output_dir).with_name(Path(cfg.output_dir).name + ".speed.json")
    key = dump_config(with_overrides(cfg, ["train.max_steps=1", "train.max_minutes=null"]))
    known = json.loads(path.read_text()) if path.is_file() else {}
    if known.get("config") != key:
        measured = measure_steps(cfg, SPEED_STEPS, f"--budget minutes: timing {cfg.method.name}")
        known = {"config": key, "seconds_per_step": statistics.fmean(measured.step_seconds), "timed_steps": SPEED_STEPS}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(known, indent=2) + "\n")
    steps = math.floor(60 * minutes / known["seconds_per_step"])
    if steps < 1:
        raise ConfigError(f"--budget minutes={minutes:g} holds no whole optimizer step of {cfg.method.name} "
                          f"(measured {known['seconds_per_step']:.1f} s per step here)")
    return steps


def requested_path(run_dir: Path) -> Path:
    """Where the config a run was asked with is kept: beside its run directory, `<run>.requested.yaml`."""
    return run_dir.with_name(run_dir.name + ".requested.yaml")


def plan_run(cfg: RunConfig) -> str:
    """"finished", "resume" or "fresh" for the run `cfg` describes: finished when a run with this config wrote
    its summary, resume when one stopped after a checkpoint, else fresh. The config as asked is kept beside the
    run directory (`<run>.requested.yaml`) and compared as a config, so a key added to the code since reads as
    its default."""
    run_dir = Path(cfg.output_dir)
    requested = requested_path(run_dir)
    same = requested.is_file() and load_config(None, base=yaml.safe_load(requested.read_text())) == cfg
    if same and (run_dir / "summary.json").is_file():
        return "finished"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    requested.write_text(dump_config(cfg))
    return "resume" if same and any((run_dir / "checkpoints").glob("step-*")) else "fresh"


def continue_run(cfg: RunConfig) -> dict:
    """The summary of the run `cfg` describes, trained in this process only where `plan_run` says so."""
    state = plan_run(cfg)
    if state == "finished":
        return json.loads((Path(cfg.output_dir) / "summary.json").read_text())
    return train(cfg, resume=state == "resume", overwrite=state == "fresh")


def continue_run_apart(cfg: RunConfig) -> dict:
    """`continue_run` in a child process (`transferkit train`): its peak memory is its own, and a crash or an
    out-of-memory kill ends that run alone. Its progress passes through to this process's stderr; a failure
    raises `UserError` with the child's last line."""
    state = plan_run(cfg)
    run_dir = Path(cfg.output_dir)
    if state != "finished":
        how = ["--resume", str(run_dir)] if state == "resume" else [str(requested_path(run_dir)), "--overwrite"]
        child = subprocess.Popen([sys.executable, "-m", "transferkit", "train", *how], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE)
        decoder, tail = codecs.getincrementaldecoder("utf-8")(errors="replace"), ""
        for chunk in iter(lambda: child.stderr.read1(4096), b""):
            text = decoder.decode(chunk)
            sys.stderr.write(text)
            sys.stderr.flush()
            tail = (tail + text)[-4096:]
        code = child.wait()
        if code < 0:  # killed: the last line is whatever it was printing, not a reason
            raise UserError(f"killed by signal {-code}" + (" (as the kernel's out-of-memory killer does)"
                                                          if -code == 9 else ""))
        if code:
            last = [line for line in tail.replace("\r", "\n").splitlines() if line.strip()]
            raise UserError(last[-1].removeprefix("error: ") if last else f"exit code {code}")
    return json.loads((run_dir / "summary.json").read_text())


def bootstrap_interval(folder: Path, metric: str, seed: int = 0) -> tuple[float, float] | None:
    """95 % percentile interval of the headline over resampled test examples, from test_predictions.jsonl:
    accuracy / exact match from each example's `match`, macro-F1 from labels and predictions
    (`evaluate.metrics.macro_f1`). None for a headline with no per-example form (perplexity, a task metric's
    field score)."""
    rows = RunDir(folder).read_predictions()
    if metric == "macro_f1" and rows and "label" in rows[0]:
        index = {name: i for i, name in enumerate(sorted({r["label"] for r in rows} | {r["prediction"] for r in rows}))}

        def score(sample):
            return macro_f1([index[r["prediction"]] for r in sample], [index[r["label"]] for r in sample])
    elif metric in ("accuracy", "exact_match") and rows and "match" in rows[0]:
        def score(sample):
            return sum(bool(r["match"]) for r in sample) / len(sample)
    else:
        return None
    rng = random.Random(seed)
    scores = sorted(score([rows[rng.randrange(len(rows))] for _ in rows]) for _ in range(RESAMPLES))
    return scores[int(0.025 * RESAMPLES)], scores[int(0.975 * RESAMPLES) - 1]


def pareto(rows: list[dict], cost: str) -> set[str]:
    """Methods no other beats on score at no more `cost`, better in one."""
    def dominated(r):
        return any(o is not r and o["score"] >= r["score"] and o[cost] <= r[cost] and
                   (o["score"] > r["score"] or o[cost] < r[cost]) for o in rows)
    return {r["method"] for r in rows if not dominated(r)}


def advice(rows: list[dict], higher_is_better: bool) -> str:
    scored = [r for r in rows if r.get("score") is not None]
    if not scored:
        return "No method finished; see each row's error."
    sign = 1 if higher_is_better else -1
    best = max(scored, key=lambda r: sign * r["score"])
    near = [r for r in scored if sign * (best["score"] - r["score"]) <= SLACK]
    pick = min(near, key=lambda r: r["train_s"])
    why = "the best score" if pick is best else f"within {SLACK:g} of the best ({best['method']}, " \
                                                f"{best['score']:.4g}) at {pick['train_s']:.0f} s instead of {best['train_s']:.0f} s"
    return f"Use {pick['method']}: {pick['metric']} {pick['score']:.4g}, {why}."


def result_row(name: str, cfg: RunConfig, summary: dict, baselines: dict) -> dict:
    """One method's row of comparison.json from its summary.json, scored against the comparison's one baseline
    measurement `baselines` ({prompt: metrics}; {} when none was asked for)."""
    folder = Path(cfg.output_dir)
    tuned = summary.get("test") or summary.get("validation") or {}
    versus = judge(summary["schema"], tuned, baselines, cfg.eval.headline)
    forgetting = (summary.get("forgetting") or {}).get("forgetting")
    return {"method": name, "run": str(folder), "metric": versus["metric"], "score": versus["tuned"],
            "interval95": bootstrap_interval(folder, versus["metric"]), "gain": versus["gain"],
            "baseline": versus["baseline"], "trainable": summary["params"]["trainable"],
            "adapter_bytes": folder_bytes(folder / "adapter"), "steps": summary["steps"],
            "planned_steps": cfg.train.max_steps, "train_s": summary["timings_s"].get("train", 0.0),
            # the training phase's peak over the process before the model: what the calculator predicts
            "peak_memory_bytes": (summary.get("memory") or {}).get("train_peak_increase_bytes",
                                                                   summary.get("peak_memory_bytes")),
            "forgetting": forgetting,
            "higher_is_better": versus["metric"] not in LOWER_IS_BETTER}


def predicted_peak(cfg: RunConfig, summary: dict) -> int | None:
    """What `transferkit cost` predicts for this run's peak (the same quantity summary.json's peak memory
    measures), where the run trained on this machine's CPU; None on other devices. The step's calls are not
    timed: the peak does not depend on them."""
    if summary.get("device") != "cpu":
        return None
    return estimate(cfg, dataclasses.replace(get_hardware("cpu"), times_calls=False)).peak_bytes


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else 0


def compare(cfg: RunConfig, methods: list[str], budget: Budget, tokens_per_step: float) -> dict:
    """Run every method of `methods` (see the module docstring) under `cfg.output_dir`; comparison.json's
    content, also written there."""
    out = Path(cfg.output_dir)
    steps = budget.steps(tokens_per_step)
    baseline_pending = "baseline" in methods
    baselines: dict = {}
    rows = []
    minutes = budget.amount if budget.kind == "minutes" else None
    for name in [m for m in methods if m != "baseline"]:
        run_cfg = method_config(cfg, name, steps or 1, out, baseline_pending, minutes)
        try:
            if minutes is not None:
                run_cfg = method_config(cfg, name, timed_steps(run_cfg, minutes), out, baseline_pending, minutes)
            summary = continue_run_apart(run_cfg)
        except UserError as error:  # this method fails; the others go on
            rows.append({"method": name, "run": run_cfg.output_dir, "failed": str(error).splitlines()[0]})
            continue
        if baseline_pending:  # the first finished run measured it for all
            baselines = {k: v for k, v in (summary.get("baseline") or {}).items() if isinstance(v, dict)}
            baseline_pending = False
        rows.append(result_row(name, run_cfg, summary, baselines) | {"predicted_peak_bytes": predicted_peak(run_cfg,
                                                                                                       summary)})
    scored = [r for r in rows if "failed" not in r and r["score"] is not None]
    higher = scored[0]["higher_is_better"] if scored else True
    for cost, mark in (("train_s", "pareto_time"), ("peak_memory_bytes", "pareto_memory")):
        best = pareto([r if higher else dict(r, score=-r["score"]) for r in scored], cost)
        for r in scored:
            r[mark] = r["method"] in best
    result = {"budget": dataclasses.asdict(budget), "steps": steps, "methods": methods, "rows": rows,
              "advice": advice(scored, higher)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(scored, out / "comparison.png")
    write_comparison_report(out, result)
    return result


def plot(rows: list[dict], path: Path) -> None:
    """Score against train time and against trainable parameters (log axis), one point per method."""
    if not rows:
        return
    from .evaluate.plots import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, key, label in ((axes[0], "train_s", "train time (s)"), (axes[1], "trainable", "trainable parameters")):
        for r in rows:
            ax.scatter(r[key], r["score"])
            ax.annotate(r["method"], (r[key], r["score"]), xytext=(4, 4), textcoords="offset points", fontsize=8)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[1].set_xscale("log")
    axes[0].set_ylabel(f"test {rows[0]['metric']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_table(result: dict) -> str:
    lines = [f"budget: {budget_sentence(result)}",
             "| method | score (95 % CI) | gain | trainable | adapter MiB | train s | peak MiB (predicted) | forgetting "
             "| Pareto |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "failed" in r:
            lines.append(f"| {r['method']} | failed: {r['failed']} ||||||||")
            continue
        ci = f" ({r['interval95'][0]:.3f}–{r['interval95'][1]:.3f})" if r["interval95"] else ""
        gain = "–" if r["gain"] is None else f"{r['gain']:+.3f}"
        forgot = "–" if r["forgetting"] is None else f"{r['forgetting']:+.1%}"
        predicted = "–" if r.get("predicted_peak_bytes") is None else f"{r['predicted_peak_bytes'] / 2**20:,.0f}"
        marks = ", ".join(m for m, k in (("time", "pareto_time"), ("memory", "pareto_memory")) if r.get(k))
        lines.append(f"| {r['method']} | {r['metric']} {r['score']:.3f}{ci} | {gain} | {r['trainable']:,} | "
                     f"{r['adapter_bytes'] / 2**20:.1f} | {r['train_s']:.0f} | "
                     f"{(r['peak_memory_bytes'] or 0) / 2**20:,.0f} ({predicted}) | {forgot} | {marks} |")
    return "\n".join(lines + ["", result["advice"]])
