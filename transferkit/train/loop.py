"""The training loop, readable top to bottom.

`train(cfg)` sets up a run (model, data, method, optimizer) and calls `fit()`,
which does the optimisation; `finish()` saves the adapter, evaluates and writes
the summary. One optimizer step:

    for each micro-batch of the step's batch:         (gradient accumulation)
        loss = Σ token cross-entropy / N_step          (N_step = labelled tokens in the whole step,
        backward                                        so 4 × 2 examples == 1 × 8 exactly)
    clip gradients, AdamW step, schedule step
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import RunConfig, dump_config
from ..data import TASK_OF_SCHEMA, Split, Splits, load_splits, read_train
from ..data.batching import collate_packed, length_grouped_batches
from ..data.tokenize import Tokenized
from ..errors import ConfigError, UserError
from ..evaluate import evaluate_split
from ..evaluate.forgetting import PACKAGED, check_reference, general_sequences, general_texts
from ..evaluate.task_metrics import resolve_task_metric
from ..methods import Method, check_task, count_parameters, format_trainable, get_method
from ..models import load_model, load_tokenizer, resolve_model
from ..models.fingerprint import check_adapter_folder, write_fingerprint
from . import checkpoint as ckpt
from .hardware import (autocast_for, default_micro_batch_size, enable_gradient_checkpointing, peak_memory_bytes,
                       pick_attention, pick_device, resolve_precision, store_frozen_in_bf16)
from .assessment import format_metrics, measure_after, measure_before, plot_reliability
from .objectives import OBJECTIVES, Objective
from .regularizers import AnchorPenalty, build_penalties
from .replay import replay_count, replay_for, replay_indices
from .rundir import RunDir
from .schedule import lr_multiplier, warmup_steps
from .signals import Stopped, StopRequest


@dataclass
class Parts:
    """What the loop moves: the model and the objects that update it."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    accelerator: object  # accelerate.Accelerator
    tokenizer: object
    objective: Objective
    autocast: Callable[[], ContextManager]  # bf16 autocast or a no-op
    collate: Callable[[list[Tokenized], int, torch.device], dict[str, torch.Tensor]]  # padded or packed rows
    penalties: tuple[AnchorPenalty, ...] = ()  # EWC / L2-SP: their gradients join the task loss's

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def steps_per_epoch(num_sequences: int, batch_size: int) -> int:
    return math.ceil(num_sequences / batch_size)  # the last, smaller batch is kept: no data dropped


def task_batch_size(cfg: RunConfig) -> int:
    """Task sequences per optimizer step: the batch less its replayed general sequences."""
    return cfg.train.batch_size - replay_count(cfg.train.batch_size, cfg.forgetting.replay)


def total_steps(cfg: RunConfig, num_sequences: int) -> int:
    if cfg.train.max_steps is not None:
        return cfg.train.max_steps
    return max(1, math.ceil(cfg.train.epochs * steps_per_epoch(num_sequences, task_batch_size(cfg))))


def optimizer_step(parts: Parts, items: list[Tokenized], micro_batch_size: int, max_grad_norm: float):
    """One optimizer step over `items`. Returns (loss sum tensor, labelled tokens, grad norm tensor,
    whether it was applied: a step with a non-finite loss or gradient is skipped, penalty value)."""
    model, device = parts.model, parts.accelerator.device
    n_labels = sum(t.num_labels for t in items)  # tokens or examples, known on the host: no device sync
    loss_total = torch.zeros((), device=device)
    for start in range(0, len(items), micro_batch_size):
        batch = parts.collate(items[start: start + micro_batch_size], parts.pad_id, device)  # [rows, T]
        with parts.autocast():
            loss_sum, _ = parts.objective.loss_sum(model, batch)
        # Normalising by the step's token count (not the micro-batch's) makes
        # accumulation exact whatever the split.
        parts.accelerator.backward(loss_sum / max(n_labels, 1))
        loss_total += loss_sum.detach()
    penalty = sum((p.add_gradient() for p in parts.penalties), torch.zeros((), dtype=torch.float64))
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm = parts.accelerator.clip_grad_norm_(params, max_grad_norm) if max_grad_norm > 0 else None
    # One host sync per step (free on CPU): a non-finite loss or gradient must not reach the weights.
    finite = bool(torch.isfinite(loss_total)) and (grad_norm is None or bool(torch.isfinite(grad_norm)))
    if finite:
        parts.optimizer.step()
        parts.scheduler.step()
    parts.optimizer.zero_grad(set_to_none=True)
    return loss_total, n_labels, grad_norm, finite, float(penalty)


def fit(cfg: RunConfig, parts: Parts, splits: Splits, run: RunDir, state: ckpt.TrainState, steps: int,
        stop: StopRequest, replay_pool: list[Tokenized] = ()) -> dict:
    """Optimise until `steps` optimizer steps are done; each step's batch holds `task_batch_size(cfg)` task
    sequences and the rest from `replay_pool` (general text). Returns loop statistics.
    Raises `Stopped` after checkpointing when a stop was requested, `UserError` when
    `train.max_bad_steps` steps in a row had non-finite loss or gradients."""
    train_cfg = cfg.train
    micro = train_cfg.micro_batch_size or default_micro_batch_size(parts.accelerator.device, train_cfg.batch_size)
    data = splits.train.tokenized
    lengths = [len(t.input_ids) for t in data]
    epoch_batches: dict[int, list[list[int]]] = {}

    def batches_for(epoch: int) -> list[list[int]]:
        if epoch not in epoch_batches:
            epoch_batches.clear()
            epoch_batches[epoch] = length_grouped_batches(lengths, task_batch_size(cfg), cfg.seed, epoch)
        return epoch_batches[epoch]

    n_replay = replay_count(train_cfg.batch_size, cfg.forgetting.replay) if replay_pool else 0
    parts.model.train()
    window_loss = torch.zeros((), device=parts.accelerator.device)
    window_labels = window_tokens = 0
    total_tokens, last_loss, first_loss = 0, None, None
    window_start = started = time.perf_counter()
    bad_in_a_row = skipped = 0
    bar = tqdm(total=steps, initial=state.step, desc="train", unit="step", dynamic_ncols=True)
    while state.step < steps:
        batches = batches_for(state.epoch)
        if state.batch_index >= len(batches):
            state.epoch, state.batch_index = state.epoch + 1, 0
            continue
        items = [data[i] for i in batches[state.batch_index]]
        k = replay_for(len(items), n_replay, task_batch_size(cfg))
        items += [replay_pool[i] for i in replay_indices(state.step, k, len(replay_pool), cfg.seed)]
        state.batch_index += 1
        lr = parts.optimizer.param_groups[0]["lr"]
        loss_sum, n_labels, grad_norm, applied, penalty = optimizer_step(parts, items, micro, train_cfg.max_grad_norm)
        if not applied:
            bad_in_a_row += 1
            skipped += 1
            bar.write(f"step {state.step + 1}: non-finite loss or gradients, step skipped ({bad_in_a_row} in a row)")
            if bad_in_a_row >= train_cfg.max_bad_steps:
                last = ckpt.latest(run.checkpoints)
                raise UserError(f"step {state.step + 1}: loss or gradients were not finite for {bad_in_a_row} steps in a "
                                f"row; stopped. Last good checkpoint: {last or 'none'}. Lower train.lr, check the data "
                                f"near {items[0].where}, or use train.precision=fp32")
            continue
        bad_in_a_row = 0
        state.step += 1
        real_tokens = sum(len(t.input_ids) for t in items)
        window_loss += loss_sum
        window_labels += n_labels
        window_tokens += real_tokens
        total_tokens += real_tokens
        bar.update(1)

        if state.step % train_cfg.log_every == 0 or state.step == steps:
            # The only host sync of a step, once per log interval.
            now = time.perf_counter()
            last_loss = window_loss.item() / max(window_labels, 1)
            first_loss = last_loss if first_loss is None else first_loss
            tokens_per_s = window_tokens / max(now - window_start, 1e-9)
            event = {"event": "train", "step": state.step, "epoch": state.epoch, "loss": last_loss, "lr": lr,
                     "tokens_per_s": tokens_per_s, "labelled_tokens": window_labels}
            if grad_norm is not None:
                event["grad_norm"] = float(grad_norm)
            if parts.penalties:
                event["penalty"] = penalty  # EWC / L2-SP value at this step
            if replay_pool:
                event["replayed_sequences"] = k
            run.log(event)
            bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:.0f}")
            window_loss.zero_()
            window_labels = window_tokens = 0
            window_start = now

        if splits.validation is not None and train_cfg.eval_every and state.step % train_cfg.eval_every == 0 and state.step < steps:
            result = validation_metrics(parts, splits.validation, splits.schema, cfg, parts.tokenizer, splits.labels)
            run.log({"event": "eval", "split": "validation", "step": state.step, **result})
            bar.write(f"step {state.step}: validation {format_metrics(result)}")
            window_start = time.perf_counter()  # evaluation time is not training time

        if train_cfg.save_every and state.step % train_cfg.save_every == 0 and state.step < steps:
            save(parts, run, state, train_cfg.keep_checkpoints)
            window_start = time.perf_counter()

        if stop.signum is not None and state.step < steps:
            save(parts, run, state, train_cfg.keep_checkpoints)
            bar.close()
            raise Stopped(stop.signum, f"stopped by {signal.Signals(stop.signum).name} after step {state.step}; "
                                       f"checkpoint written. Resume with: transferkit train --resume {run.path}")
    bar.close()
    seconds = time.perf_counter() - started
    return {"train_tokens": total_tokens, "train_seconds": seconds, "first_logged_loss": first_loss,
            "final_train_loss": last_loss, "skipped_steps": skipped}


def validation_metrics(parts: Parts, split: Split, schema: str, cfg: RunConfig, tokenizer, labels) -> dict:
    """Loss (and for classification accuracy / macro-F1) without generation: cheap enough to run often."""
    quick = dataclasses.replace(cfg.eval, exact_match=False, max_examples=None)
    metrics, _ = evaluate_split(parts.model, tokenizer, split, schema, quick, parts.accelerator.device,
                                autocast=parts.autocast, label="validation", labels=labels)
    return metrics


def save(parts: Parts, run: RunDir, state: ckpt.TrainState, keep: int) -> None:
    folder = run.checkpoints / f"step-{state.step:06d}"
    ckpt.save_checkpoint(folder, parts.accelerator.unwrap_model(parts.model), parts.optimizer, parts.scheduler, state)
    ckpt.prune(run.checkpoints, keep)


def build_optimizer(model: torch.nn.Module, method: Method, cfg: RunConfig, steps: int):
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UserError(f"method '{cfg.method.name}' left no trainable parameters")
    groups = method.param_groups(model, cfg.method, cfg.train.lr) if method.param_groups else [{"params": params}]
    optimizer = torch.optim.AdamW(groups, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, betas=(0.9, 0.999))
    warmup = warmup_steps(steps, cfg.train.warmup_ratio)
    min_ratio = cfg.train.min_lr_ratio

    def schedule(step: int) -> float:
        return lr_multiplier(step, steps, warmup, min_ratio)

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def evaluate_test(model, tokenizer, splits: Splits, cfg: RunConfig, device, autocast, run: RunDir, label: str) -> dict:
    """The test split's metrics; predictions and (classification) the reliability diagram go into the run."""
    metrics, predictions = evaluate_split(model, tokenizer, splits.test, splits.schema, cfg.eval, device,
                                          autocast=autocast, label=label, labels=splits.labels)
    if predictions:
        run.write_text_atomic(run.path / f"{label}_predictions.jsonl",
                              "".join(json.dumps(p) + "\n" for p in predictions))
    plot_reliability(run, metrics, label)
    return metrics


def check_evaluation(cfg: RunConfig, task: str) -> None:
    """Before anything is written: the task metric resolves, the general texts read, and replay and the
    EWC Fisher (which train on general text, so need a language-model head) fit the task."""
    resolve_task_metric(cfg.eval.task_metric)
    forgetting = cfg.forgetting
    for key, value in (("replay", forgetting.replay), ("ewc", forgetting.ewc)):
        if value and task != "causal-lm":
            raise ConfigError(f"config key 'forgetting.{key}' is {value} but the task is {task}: it uses general "
                              f"text, which needs a causal-LM task; use forgetting.l2sp instead")
    replay_count(cfg.train.batch_size, forgetting.replay)  # raises if the fraction does not fit the batch
    check_reference(forgetting.reference, task)
    if (forgetting.replay or forgetting.ewc) and forgetting.replay_data != PACKAGED:
        general_texts(forgetting.replay_data, "pool", "forgetting.replay_data")


def check_packing(cfg: RunConfig, method: Method, task: str) -> None:
    if cfg.train.pack_tokens and (task != "causal-lm" or not method.packable):
        why = f"method '{method.name}' adds virtual tokens to every sequence" if task == "causal-lm" else \
            f"the task is {task} (one label per sequence)"
        raise ConfigError(f"config key 'train.pack_tokens' is {cfg.train.pack_tokens} but sequences cannot be packed: "
                          f"{why}; set train.pack_tokens=0")


def pick_collate(cfg: RunConfig, objective: Objective):
    if cfg.train.pack_tokens:
        return functools.partial(collate_packed, row_tokens=cfg.train.pack_tokens)
    return objective.collate


def prepare_inputs(cfg: RunConfig, method: Method, precision: str, device: torch.device):
    """Read and validate the data, then load the model for its task. Nothing is written yet,
    so bad input never leaves a half-made run directory behind."""
    train_data = read_train(cfg.data)
    task = TASK_OF_SCHEMA[train_data[0]]
    check_task(method, task)
    check_packing(cfg, method, task)
    check_evaluation(cfg, task)
    tokenizer = load_tokenizer(resolve_model(cfg.model), cfg.trust_remote_code)
    splits = load_splits(cfg.data, tokenizer, cfg.seed, train=train_data)
    longest = max(len(t.input_ids) for split in (splits.train, splits.validation, splits.test) if split
                  for t in split.tokenized)
    model, tokenizer, folder = load_model(cfg.model, task=task, labels=splits.labels, device=device,
                                          quantize_4bit=method.quantize_base,
                                          compute_dtype=torch.bfloat16 if precision == "bf16" else torch.float32,
                                          attention=pick_attention(cfg.train.attention, device, longest),
                                          tokenizer=tokenizer, trust_remote_code=cfg.trust_remote_code)
    for note in splits.notes:
        print(note)
    return model, tokenizer, folder, splits


def train(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False) -> dict:
    """Run a whole training job described by `cfg`; returns the summary."""
    from accelerate import Accelerator

    wall_start = time.perf_counter()
    run = RunDir(cfg.output_dir)
    resume_from = None
    if resume:
        if not run.config.is_file():
            raise UserError(f"{run.path}: not a run directory (no config.yaml) to resume")
        # None when the run was stopped before its first checkpoint: it restarts from step 0.
        resume_from = ckpt.latest(run.checkpoints)
    else:
        run.check_writable(overwrite)

    device = pick_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    # Mixed precision is our own autocast context, not accelerate's: its process-wide
    # state would forbid a second run with another precision in the same process.
    accelerator = Accelerator(cpu=device.type == "cpu")
    autocast = autocast_for(device, precision)
    method = get_method(cfg.method.name)
    model, tokenizer, folder, splits = prepare_inputs(cfg, method, precision, accelerator.device)
    if not resume:
        inputs = [p for p in (cfg.data.train, cfg.data.validation, cfg.data.test, cfg.model) if p and Path(p).exists()]
        run.create(overwrite, protected=inputs)
    run.write_text_atomic(run.config, dump_config(cfg))
    if splits.labels is not None:
        run.write_json(run.labels, {"labels": splits.labels})
    seed_everything(cfg.seed)

    baseline, general_base = measure_before(cfg, run, model, tokenizer, folder, splits, accelerator.device, autocast)

    seed_everything(cfg.seed)  # same adapter init whether or not the baseline ran
    model = method.apply(model, cfg.method)
    trainable, total = count_parameters(model)
    print(format_trainable(trainable, total))
    if precision == "bf16" and cfg.train.frozen_bf16:
        store_frozen_in_bf16(model)
    if cfg.train.gradient_checkpointing:
        enable_gradient_checkpointing(model)

    steps = total_steps(cfg, len(splits.train.tokenized))
    optimizer, scheduler = build_optimizer(model, method, cfg, steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    objective = OBJECTIVES[TASK_OF_SCHEMA[splits.schema]]
    # θ₀ (and the Fisher) are taken here, before a checkpoint is loaded: a resumed run anchors where the first began.
    penalties = build_penalties(cfg, model, tokenizer, objective, accelerator.device, autocast)
    replay_pool = (general_sequences(tokenizer, cfg.forgetting.replay_data, "pool", cfg.data.max_length,
                                     "forgetting.replay_data") if cfg.forgetting.replay else [])
    parts = Parts(model, optimizer, scheduler, accelerator, tokenizer, objective, autocast,
                  pick_collate(cfg, objective), penalties)
    state = ckpt.TrainState(step=0, epoch=0, batch_index=0)
    if resume_from is not None:
        state = ckpt.load_checkpoint(resume_from, accelerator.unwrap_model(model), optimizer, scheduler)
        print(f"resumed from {resume_from} (step {state.step})")
    elif resume:
        print(f"no complete checkpoint in {run.checkpoints} yet: starting again from step 0")
    if resume:
        run.truncate_events_after(state.step)
    print(f"training {steps} steps on {device.type} in {precision}; run directory {run.path}")

    with StopRequest() as stop:
        loop_stats = fit(cfg, parts, splits, run, state, steps, stop, replay_pool)
    save(parts, run, state, cfg.train.keep_checkpoints)
    unwrapped = accelerator.unwrap_model(model)

    def write_adapter(tmp: Path) -> None:
        method.save(unwrapped, tmp)
        write_fingerprint(tmp, unwrapped)

    ckpt.write_atomic_dir(run.adapter, write_adapter)

    summary: dict = {
        "model": cfg.model, "model_path": str(folder), "method": cfg.method.name, "schema": splits.schema,
        "device": device.type, "precision": precision,
        "params": {"trainable": trainable, "total": total, "trainable_percent": 100 * trainable / total},
        "steps": state.step,
        "epochs": state.epoch + state.batch_index / steps_per_epoch(len(splits.train.tokenized), task_batch_size(cfg)),
        "train_tokens": loop_stats["train_tokens"],
        "tokens_per_s": loop_stats["train_tokens"] / max(loop_stats["train_seconds"], 1e-9),
        "train_loss": {"first_logged": loop_stats["first_logged_loss"], "final": loop_stats["final_train_loss"]},
        "skipped_steps": loop_stats["skipped_steps"],
        "resumed_from_step": None if resume_from is None else int(resume_from.name.split("-")[1]),
        "data": {s.name: s.facts() for s in (splits.train, splits.validation, splits.test) if s},
    }
    if splits.labels is not None:
        summary["labels"] = splits.labels
    if splits.validation is not None:
        summary["validation"] = validation_metrics(parts, splits.validation, splits.schema, cfg, tokenizer, splits.labels)
        run.log({"event": "eval", "split": "validation", "step": state.step, **summary["validation"]})
    tuned = summary.get("validation")
    if splits.test is not None:
        tuned = evaluate_test(unwrapped, tokenizer, splits, cfg, accelerator.device, autocast, run, "test")
        run.log({"event": "test", "step": state.step, "split": "test", "metrics": tuned})
        summary["test"] = tuned
        print(f"tuned model on test: {format_metrics(tuned)}")
    summary["mitigations"] = {"replay": cfg.forgetting.replay, "ewc": cfg.forgetting.ewc, "l2sp": cfg.forgetting.l2sp}
    summary.update(measure_after(cfg, run, unwrapped, tokenizer, splits, tuned, baseline, general_base,
                                 accelerator.device, autocast))
    summary["wall_time_s"] = time.perf_counter() - wall_start
    summary["peak_memory_bytes"] = peak_memory_bytes(device)
    run.write_json(run.summary, summary)
    print(f"done: {run.path} (adapter in {run.adapter}, summary in {run.summary})")
    return summary


def load_trained(run_path: str | Path, device: str | torch.device = "cpu"):
    """(model with adapter, tokenizer, config) from a finished run directory."""
    from ..config import load_config

    run = RunDir(run_path)
    if not run.config.is_file() or not run.adapter.is_dir():
        raise UserError(f"{run.path}: not a finished transferkit run (needs config.yaml and adapter/)")
    cfg = load_config(run.config)
    method = get_method(cfg.method.name)
    labels = json.loads(run.labels.read_text())["labels"] if run.labels.is_file() else None
    model, tokenizer, _ = load_model(cfg.model, task="classification" if labels else "causal-lm", labels=labels,
                                     device=device, quantize_4bit=method.quantize_base,
                                     trust_remote_code=cfg.trust_remote_code)
    check_adapter_folder(run.adapter, model, cfg.model)
    try:
        model = method.load(model, run.adapter)
    except (RuntimeError, ValueError, KeyError) as exc:  # shape or name mismatches inside the loader
        raise UserError(f"{run.adapter}: adapter does not fit base model {cfg.model} "
                        f"({str(exc).strip().splitlines()[0][:300]})") from None
    model.eval()
    return model, tokenizer, cfg
