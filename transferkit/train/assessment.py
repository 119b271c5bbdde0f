"""What a run measures besides its loss: did it work, and what did it forget?

Before the method touches the model:   the prompting baseline on the scored split (test, else validation)
                                       and the base model's general ability (perplexity / probe).
After training:                        the tuned model on the same split and general text, then
                                       baseline vs tuned (gain, flag) and forgetting, for summary.json.

Both "before" measurements are logged to metrics.jsonl, so a resumed run reuses them.
"""

from __future__ import annotations

from ..config import RunConfig
from ..data import TASK_OF_SCHEMA, Split, Splits
from ..evaluate.baseline import compare, prompting_baseline, prompting_model
from ..evaluate.forgetting import forgetting, general_ability
from ..evaluate.plots import reliability_diagram
from .rundir import RunDir


def scored_split(splits: Splits) -> Split | None:
    """The split the run is judged on: test when given, else validation."""
    return splits.test if splits.test is not None else splits.validation


def measure_before(cfg: RunConfig, run: RunDir, model, tokenizer, folder, splits: Splits, device, autocast
                   ) -> tuple[dict | None, dict | None]:
    """(prompting baseline, base general ability), measured now or read back from a resumed run's events."""
    events = {e["event"]: e for e in run.read_events() if e.get("event") in ("baseline", "general_base")}
    task = TASK_OF_SCHEMA[splits.schema]
    split = scored_split(splits)
    baseline = events["baseline"]["metrics"] if "baseline" in events else None
    if baseline is None and cfg.eval.baseline and split is not None:
        lm, is_decoder = prompting_model(cfg.model, folder, task, model, tokenizer, device, cfg.trust_remote_code)
        baseline = {"split": split.name, **prompting_baseline(
            lm, tokenizer, split, splits.schema, splits.train.examples, cfg.eval, device, autocast=autocast,
            labels=splits.labels, is_decoder=is_decoder, seed=cfg.seed)}
        del lm
        run.log({"event": "baseline", "step": 0, "metrics": baseline})
        for name, metrics in baseline.items():
            if name != "split":
                print(f"baseline (untrained {cfg.model}, {name.replace('_', '-')}) on {split.name}: "
                      f"{format_metrics(metrics)}")
    general = events["general_base"]["metrics"] if "general_base" in events else None
    if general is None:
        general = general_ability(model, tokenizer, task, cfg.forgetting.reference, device, autocast=autocast,
                                  max_length=cfg.data.max_length, batch_size=cfg.eval.batch_size)
        run.log({"event": "general_base", "step": 0, "metrics": general})
    return baseline, general


def measure_after(cfg: RunConfig, run: RunDir, model, tokenizer, splits: Splits, tuned: dict | None,
                  baseline: dict | None, general_base: dict | None, device, autocast) -> dict:
    """Summary entries: baseline, comparison (gain, beats_baseline), general ability, forgetting, flags."""
    task = TASK_OF_SCHEMA[splits.schema]
    general_tuned = general_ability(model, tokenizer, task, cfg.forgetting.reference, device, autocast=autocast,
                                    max_length=cfg.data.max_length, batch_size=cfg.eval.batch_size)
    result: dict = {"baseline": baseline, "general": {"base": general_base, "tuned": general_tuned},
                    "forgetting": forgetting(general_base, general_tuned), "flags": []}
    if tuned is not None and baseline is not None:
        prompts = {k: v for k, v in baseline.items() if k != "split"}
        comparison = result["comparison"] = {"split": baseline["split"], **compare(splits.schema, tuned, prompts)}
        if comparison["beats_baseline"] is False:
            result["flags"].append(
                f"the tuned model does not beat its prompting baseline: {comparison['metric']} "
                f"{comparison['tuned']:.4g} vs {comparison['baseline']:.4g} ({comparison['baseline_prompt']})")
    elif tuned is not None:
        result["comparison"] = None
        why = "eval.baseline is false" if not cfg.eval.baseline else "no test or validation split"
        result["flags"].append(f"no prompting baseline to compare with ({why})")
    if result["forgetting"] is not None:
        f = result["forgetting"]
        print(f"forgetting ({f['measure']}): {f['forgetting']:+.2%}")
    for flag in result["flags"]:
        print(f"warning: {flag}")
    return result


def plot_reliability(run: RunDir, metrics: dict, label: str) -> None:
    """The reliability diagram of a classification evaluation, as <label>_reliability.png in the run."""
    if "calibration" in metrics:
        path = run.path / f"{label}_reliability.png"
        run.write_file_atomic(path, lambda tmp: reliability_diagram(metrics["calibration"], metrics["ece"],
                                                                    f"{label}: reliability", tmp))


def format_metrics(metrics: dict) -> str:
    parts = [f"loss {metrics['loss']:.4f}"] if "loss" in metrics else []
    headline = metrics.get("task_metric_headline")
    for key, label in (("perplexity", "ppl"), ("exact_match", "exact match"), (headline, headline),
                       ("accuracy", "accuracy"), ("macro_f1", "macro-F1")):
        if key in metrics:
            parts.append(f"{label} {metrics[key]:.2f}" if key == "perplexity" else f"{label} {100 * metrics[key]:.1f}%")
    return ", ".join(parts) + f" ({metrics['examples']} examples)"
