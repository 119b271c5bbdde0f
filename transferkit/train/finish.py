"""After the last optimizer step and its checkpoint: the trained model as one plain module on the main process
(`consolidate`), the adapter, the tuned model's evaluation, the assessment against the base, and `summary.json` (one
`build_summary`)."""

from __future__ import annotations

import json
import logging
import time

import torch

from ..data import TASK_OF_SCHEMA
from ..data.overlap import overlap_warnings
from ..diagnose import diagnose_run
from ..evaluate.comparison import label_baselines
from ..evaluate.plots import reliability_diagram
from ..evaluate.split import evaluate_split, format_metrics
from ..methods import Method
from ..models.fingerprint import write_fingerprint
from ..models.heads import underlying_model
from ..models.params import load_trainable_tensors, trainable_tensors
from ..models.packaged import portable_reference
from ..options import MethodConfig
from ..report import write_report
from ..rundir import RunDir
from .distributed import take_over_cores
from .loop import FitStats
from .setup import Session, adapt, load_for_task, scored_split, training_storage

log = logging.getLogger(__name__)  # the CLI shows INFO on stdout; a library user chooses


def consolidate(s: Session) -> torch.nn.Module | None:
    """The trained model as one plain module on the main process, None on the others: the module inside DDP's
    wrapper, or under FSDP a fresh copy of the base with the method applied and the trained tensors gathered into
    it (every rank takes part in the gathering)."""
    if not s.world.sharded:
        model = s.model if s.world.is_main else None
    else:
        trained = trainable_tensors(s.parts.model)
        model = None if not s.world.is_main else plain_copy(s, trained)
    if model is not None and s.runtime.device.type == "cpu":
        take_over_cores(s.world)
    return model


def plain_copy(s: Session, trained: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A fresh base with the method applied as training applied it, holding the `trained` tensors."""
    model, _, _ = load_for_task(s.cfg, s.method, s.splits, s.tokenizer, s.runtime)
    model = adapt(model, s.method, s.cfg.method, training_storage(s.cfg.train, s.world), TASK_OF_SCHEMA[s.splits.schema],
                  s.runtime)
    load_trainable_tensors(model, trained, "the gathered FSDP shards")
    return model


def finish(s: Session, stats: FitStats, model: torch.nn.Module) -> dict:
    """Save and measure the trained `model` (`consolidate`'s) on the main process; write and return the summary."""
    s.parts.model = model  # validation and selection now run on the plain model, without collectives
    with s.clock("evaluate"):
        validation = final_validation(s)
        validation = select_weights(s, model, validation)
    with s.clock("save"):
        write_adapter(s.run, s.method, s.cfg.method, model, s.cfg.model)
    with s.clock("evaluate"):
        evaluation = evaluate_tuned(s, model, validation)
    tuned = evaluation.get("test", evaluation.get("validation"))
    with s.clock("general_tuned"):
        general_tuned = s.assessment.general(model, s.tokenizer)
    why = "eval.baseline is false" if not s.cfg.eval.baseline else "no test or validation split"
    verdict = s.assessment.verdict(tuned, s.before.baseline, s.before.general, general_tuned, no_baseline_reason=why,
                                   from_labels=baselines_from_labels(s))
    verdict["flags"] += overlap_warnings(s.splits.overlap)
    if s.splits.schema == "preference" and (falling := chosen_falls(s.run.read_events(), tuned,
                                                                    s.cfg.preference.sft_weight)):
        verdict["flags"].append(falling)
    if verdict["forgetting"] is not None:
        log.info(f"forgetting ({verdict['forgetting']['measure']}): {verdict['forgetting']['forgetting']:+.2%}")
    for flag in verdict["flags"]:
        log.warning(f"warning: {flag}")
    if s.cfg.diagnose.enabled:
        with s.clock("diagnose"):
            result = diagnose_run(s.run, model, s.tokenizer, s.cfg, s.runtime, s.cfg.diagnose)
        log.info(f"diagnostics: {result['reading']}")
    if hint := measuring_hint(s.clock.seconds):
        log.info(hint)
    summary = build_summary(s, stats, evaluation, general_tuned, verdict)
    s.run.write_json(s.run.summary, summary)
    report = write_report(s.run.path)
    log.info(f"done: {s.run.path} (adapter in {s.run.adapter}, summary in {s.run.summary}, open {report})")
    return summary


def chosen_falls(events: list[dict], tuned: dict | None, sft_weight: float) -> str | None:
    """Preference data: a flag when the chosen answers became less likely over training — the last logged
    training window's mean chosen log-probability below the first's, and the held-out chosen answers less likely
    than under the reference (DPO's known drift: it can raise the margin by lowering both answers)."""
    series = [e["chosen_logp"] for e in events if e.get("event") == "train" and e.get("chosen_logp") is not None]
    if len(series) < 2 or series[-1] >= series[0]:
        return None
    if tuned is None or "chosen_reward" not in tuned or tuned["chosen_reward"] >= 0:
        return None
    remedy = "set preference.sft_weight (e.g. 1)" if not sft_weight else \
        f"raise preference.sft_weight (now {sft_weight:g})"
    return (f"the chosen answers' log-probability fell during training (training windows {series[0]:.2f} → "
            f"{series[-1]:.2f}; held-out chosen reward {tuned['chosen_reward']:+.3f}, below the reference): the "
            f"margin grew by making both answers less likely; {remedy} or lower train.lr")


def baselines_from_labels(s: Session) -> dict | None:
    """Classification: the majority and class-prior baselines on the examples the tuned model is scored on."""
    split = scored_split(s.splits)
    if s.splits.labels is None or split is None:
        return None
    scored = split.examples[: s.cfg.eval.max_examples]  # as evaluate_split cuts them
    return label_baselines([ex.label for ex in s.splits.train.examples], [ex.label for ex in scored], s.splits.labels)


MEASURING_PHASES = ("baseline", "general_base", "evaluate", "general_tuned")


def measuring_hint(seconds: dict[str, float]) -> str | None:
    """A one-line hint when measuring took over twice as long as training (short runs, big evaluations)."""
    measuring, training = sum(seconds.get(p, 0.0) for p in MEASURING_PHASES), seconds.get("train", 0.0)
    if measuring <= 2 * training or measuring < 30:
        return None
    return (f"hint: measuring took {measuring:.0f} s, training {training:.0f} s (summary.json timings_s); for quick "
            f"iterations set eval.max_examples, eval.baseline: false or forgetting.reference: none")


def write_adapter(run: RunDir, method: Method, method_cfg: MethodConfig, model: torch.nn.Module,
                  base_ref: str) -> None:
    """adapter/: what the method's `load` needs, and the base's fingerprint; written atomically. A PEFT-format
    adapter names its base portably (`portable_reference`), not by the path it was loaded from here."""
    def write(tmp) -> None:
        method.save(model, method_cfg, tmp)
        write_fingerprint(tmp, model)
        peft_config = tmp / "adapter_config.json"
        if peft_config.is_file():
            config = json.loads(peft_config.read_text())
            config["base_model_name_or_path"] = portable_reference(base_ref)
            peft_config.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    run.write_dir_atomic(run.adapter, write)


def final_validation(s: Session) -> dict | None:
    """The final step's validation metrics, scored for selection like every other; a run that stopped early
    was validated at this step already, in the loop, and is not validated (or logged) twice."""
    if s.state.selection.last_step == s.state.step:
        return s.state.selection.last_metrics
    validation = s.validate()
    if validation is not None:
        s.run.log("eval", s.state.step, validation, split="validation", epoch=s.state.epoch)
    return validation


def select_weights(s: Session, model: torch.nn.Module, validation: dict | None) -> dict | None:
    """With `train.select: best`, put the best validation's weights back into `model` (if it was not the final
    step's); returns the validation metrics of the weights the run ends with."""
    selection = s.state.selection
    if s.cfg.train.select != "best" or selection.best_step in (None, s.state.step):
        return validation
    selection.restore_best(model)
    log.info(f"selected the weights of step {selection.best_step} (validation {selection.metric} "
          f"{selection.best_value:.4g}, the best of the run) over the final step {s.state.step}'s")
    return selection.best_metrics


def evaluate_tuned(s: Session, model: torch.nn.Module, validation: dict | None) -> dict:
    """{"validation": metrics, "test": metrics} of the trained model, for the splits that exist. The test
    split's per-example predictions and (classification) reliability diagram go into the run directory."""
    result = {}
    if validation is not None:
        result["validation"] = validation
    if s.splits.test is not None:
        metrics, predictions = evaluate_split(model, s.tokenizer, s.splits.test, s.splits.schema, s.cfg.eval,
                                              s.runtime, label="test", labels=s.splits.labels,
                                              preference=s.cfg.preference)
        if predictions:
            s.run.write_jsonl(s.run.predictions, predictions)
        if "calibration" in metrics:
            s.run.write_file_atomic(s.run.path / "test_reliability.png", lambda tmp: reliability_diagram(
                metrics["calibration"], metrics["ece"], "test: reliability", tmp))
        chosen = s.state.selection.facts(s.state.step, s.cfg.train.select)["chosen_step"]
        s.run.log("test", s.state.step, {"weights_of_step": chosen, **metrics}, split="test")
        log.info(f"tuned model on test: {format_metrics(metrics)}")
        result["test"] = metrics
    return result


def build_summary(s: Session, stats: FitStats, evaluation: dict, general_tuned: dict | None, verdict: dict) -> dict:
    """summary.json: what ran, on what data, how fast, how well, against what baseline, and what it forgot."""
    cfg, (trainable, total) = s.cfg, s.params
    summary: dict = {
        "model": cfg.model, "model_path": str(s.model_folder), "method": cfg.method.name, "schema": s.splits.schema,
        "device": s.runtime.device.type, "precision": s.runtime.precision,
        "attention": underlying_model(s.parts.model).config._attn_implementation,
        "params": {"trainable": trainable, "total": total, "trainable_percent": 100 * trainable / total},
        "steps": s.state.step, "epochs": s.state.epoch + s.state.batch_index / s.plan.steps_per_epoch,
        "train_tokens": stats.train_tokens, "tokens_per_s": stats.train_tokens / max(stats.train_seconds, 1e-9),
        "train_loss": {"first_logged": stats.first_logged_loss, "final": stats.final_train_loss},
        "skipped_steps": stats.skipped_steps, "stopped_early": stats.stopped_early,
        "out_of_time": stats.out_of_time,
        "selection": s.state.selection.facts(s.state.step, cfg.train.select),
        "resumed_from_step": None if s.resumed_from is None else int(s.resumed_from.name.split("-")[1]),
        "distributed": s.world.facts(),
        "data": s.splits.facts(),
    }
    if s.splits.labels is not None:
        summary["labels"] = s.splits.labels
    summary.update(evaluation)
    summary["mitigations"] = {"replay": cfg.forgetting.replay, "ewc": cfg.forgetting.ewc, "l2sp": cfg.forgetting.l2sp}
    summary["baseline"] = s.before.baseline
    summary["general"] = {"base": s.before.general, "tuned": general_tuned}
    summary.update(verdict)
    summary["wall_time_s"] = time.perf_counter() - s.wall_start
    summary["timings_s"] = s.clock.seconds  # where the wall time went, by phase
    summary["memory"] = s.memory.facts()  # the training phase's peak: what `transferkit cost` predicts
    summary["peak_memory_bytes"] = summary["memory"]["peak_bytes"]
    return summary
