"""The fit loop, readable top to bottom.

`fit()` runs optimizer steps until the plan's step count, logging, validating and checkpointing as it
goes. One optimizer step (`optimizer_step`):

    for each micro-batch of the step's batch:         (gradient accumulation)
        loss = Σ token cross-entropy / N_step          (N_step = labelled tokens in the whole step,
        backward                                        so 4 × 2 examples == 1 × 8 exactly)
    add the EWC / L2-SP penalty gradients
    clip gradients; AdamW step and schedule step, unless the loss or gradient norm is not finite

(Preference data: a unit is a pair, its loss the DPO / IPO loss; the step's figure sums — pairs ranked right,
reward margin, answer log-probabilities — are logged as means per pair beside the loss.)

Host syncs: one per step (the finiteness check, free on CPU) and one per log interval (the window's mean
loss). Everything else stays on the device.

Several processes (`distributed.py`): every rank draws the same global step and runs its share of it; N_step is the
whole step's, and each rank's loss is scaled by the world size because DDP / FSDP average gradients over ranks.
Sync points per step: the gradient all-reduce at the step's last micro-batch (FSDP: its gathers and reduce-scatters
in every pass), and one all-reduce of [loss sum, figure sums, stop requested] before the finiteness check, so every
rank logs the global loss, skips the same steps and stops after the same step.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..data.batching import length_grouped_batches
from ..data.tokenize import Tokenized
from ..errors import UserError
from ..evaluate.split import format_metrics
from ..models.params import trainable_parameters, whole
from ..objectives import Objective
from ..options import TrainConfig
from ..rundir import RunDir
from ..runtime import Runtime, peak_memory_bytes
from . import checkpoint as ckpt
from .distributed import World, micro_batches, no_sync
from .regularizers import AnchorPenalty
from .replay import replay_sequences, replay_units
from .signals import Stopped, StopRequest

log = logging.getLogger(__name__)  # the CLI shows INFO on stdout; a library user chooses

Collate = Callable[[list[Tokenized], int, torch.device], dict[str, torch.Tensor]]


@dataclass
class Parts:
    """What the loop moves: the model and the objects that update it."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    accelerator: object  # accelerate.Accelerator
    objective: Objective
    collate: Collate     # padded or packed rows
    pad_id: int
    runtime: Runtime
    penalties: tuple[AnchorPenalty, ...] = ()  # EWC / L2-SP: their gradients join the task loss's
    world: World = World()  # this process among the run's ranks (one process: rank 0 of 1)


@dataclass(frozen=True)
class StepPlan:
    """How many optimizer steps, and what each step's batch holds."""

    steps: int             # optimizer steps in the whole run
    task_batch: int        # task sequences per step
    replay_share: float    # share of a step's labelled tokens from general text (forgetting.replay; 0: none)
    micro_batch: int       # sequences per forward pass
    steps_per_epoch: int   # task batches in one pass over the training data
    seed: int


def steps_per_epoch(num_sequences: int, batch_size: int) -> int:
    return math.ceil(num_sequences / batch_size)  # the last, smaller batch is kept: no data dropped


@dataclass(frozen=True)
class StepResult:
    loss_sum: torch.Tensor          # Σ loss over the step's labelled units, on the device (no sync)
    labels: int                     # labelled tokens (causal LM) or examples (classification)
    grad_norm: torch.Tensor         # of all trainable gradients, before clipping
    applied: bool                   # False: a non-finite loss or gradient, the step was skipped
    penalty: float                  # EWC / L2-SP value
    figures: dict[str, torch.Tensor]  # the objective's figure sums over the step (preference data), on the device
    stop: bool = False              # a stop (SIGINT / SIGTERM) was requested on some rank before this step ended


@dataclass
class FitStats:
    train_tokens: int = 0
    train_seconds: float = 0.0
    first_logged_loss: float | None = None
    final_train_loss: float | None = None
    skipped_steps: int = 0
    stopped_early: bool = False   # train.patience validations in a row did not improve
    out_of_time: bool = False     # train.max_minutes of training were used up before the last planned step


class Batches:
    """The sequences of each step, a pure function of the data position (epoch, batch index), the step and
    the seed: what makes a resumed run see exactly what the uninterrupted one would."""

    def __init__(self, data: list[Tokenized], plan: StepPlan, replay_pool: list[Tokenized] = ()):
        self.data, self.plan, self.replay_pool = data, plan, list(replay_pool)
        self.lengths = [len(t.input_ids) for t in data]
        self._epoch, self._order = -1, []

    def epoch_order(self, epoch: int) -> list[list[int]]:
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = length_grouped_batches(self.lengths, self.plan.task_batch, self.plan.seed, epoch)
        return self._order

    def next(self, state: ckpt.TrainState) -> tuple[list[Tokenized], list[Tokenized]]:
        """(the next step's task sequences, its replayed general sequences); advances the data position."""
        while state.batch_index >= len(self.epoch_order(state.epoch)):
            state.epoch, state.batch_index = state.epoch + 1, 0
        items = [self.data[i] for i in self.epoch_order(state.epoch)[state.batch_index]]
        state.batch_index += 1
        units = replay_units(sum(t.num_labels for t in items), self.plan.replay_share) if self.replay_pool else 0
        return items, replay_sequences(self.replay_pool, state.step, units, self.plan.seed)


def optimizer_step(parts: Parts, items: list[Tokenized], micro_batch_size: int, max_grad_norm: float,
                   stop: StopRequest | None = None) -> StepResult:
    """One optimizer step over the global step's `items` (see the module docstring); this rank runs its share.
    `stop` is read after the backward passes, so a signal during this step stops the run after it."""
    model, device, world = parts.model, parts.runtime.device, parts.world
    n_labels = sum(t.num_labels for t in items)  # tokens or examples of the whole step, known on the host: no sync
    loss_total = torch.zeros((), device=device)
    figures: dict[str, torch.Tensor] = {}
    passes = micro_batches(items, world, micro_batch_size)
    for number, (batch_items, weight) in enumerate(passes):
        batch = parts.collate(batch_items, parts.pad_id, device)  # [rows, T]
        with no_sync(parts.accelerator, model, last=number == len(passes) - 1):
            with parts.runtime.autocast():
                loss_sum, _, sums = parts.objective.loss_sum(model, batch)
            # Normalising by the step's count (not the micro-batch's) makes accumulation exact whatever the split;
            # × world size undoes the gradient averaging over ranks.
            parts.accelerator.backward(loss_sum * (weight * world.size / max(n_labels, 1)))
        loss_total += weight * loss_sum.detach()
        for name, value in sums.items():
            figures[name] = figures.get(name, 0) + weight * value
    requested = stop is not None and stop.signum is not None
    loss_total, figures, stopping = reduce_step(world, loss_total, figures, requested)
    penalty = sum((p.add_gradient() for p in parts.penalties), torch.zeros((), dtype=torch.float64))
    params = trainable_parameters(model)
    if max_grad_norm > 0:
        grad_norm = parts.accelerator.clip_grad_norm_(params, max_grad_norm)
    else:  # no clipping, but a non-finite gradient must still be caught
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    grad_norm = whole(grad_norm)  # FSDP: a replicated DTensor
    # One host sync per step (free on CPU): a non-finite loss or gradient must not reach the weights.
    finite = bool(torch.isfinite(loss_total)) and bool(torch.isfinite(grad_norm))
    if finite:
        parts.optimizer.step()
        parts.scheduler.step()
    parts.optimizer.zero_grad(set_to_none=True)
    return StepResult(loss_total, n_labels, grad_norm, finite, float(penalty), figures, stopping)


def reduce_step(world: World, loss_sum: torch.Tensor, figures: dict[str, torch.Tensor], stop: bool
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor], bool]:
    """The global step's loss and figure sums and whether any rank was asked to stop: one all-reduce (nothing with
    one process)."""
    if world.size == 1:
        return loss_sum, figures, stop
    names = sorted(figures)
    packed = torch.stack([loss_sum.float(), *(torch.as_tensor(figures[n], dtype=torch.float32, device=loss_sum.device)
                                              for n in names), torch.tensor(float(stop), device=loss_sum.device)])
    packed = world.sum(packed)
    return packed[0], dict(zip(names, packed[1:-1])), bool(packed[-1] > 0)


class LogWindow:
    """Loss, labelled units and tokens since the last training log event; its throughput clock."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), device=device)
        self.figures: dict[str, torch.Tensor] = {}
        self.labels = self.tokens = 0
        self.started = time.perf_counter()
        self.excluded = 0.0  # seconds of validation and checkpoints inside the window

    def add(self, result: StepResult, tokens: int) -> None:
        self.loss += result.loss_sum
        for name, value in result.figures.items():
            self.figures[name] = self.figures.get(name, 0) + value
        self.labels += result.labels
        self.tokens += tokens

    @contextlib.contextmanager
    def paused(self):
        """Evaluation and checkpoint time is not training time."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.excluded += time.perf_counter() - start

    def close(self, units: str = "labelled_tokens") -> dict:
        """The window's mean loss per labelled unit (the host sync), tokens/s, labelled units and the means of
        the objective's figures; a new window starts."""
        now = time.perf_counter()
        figures = {"loss": self.loss.item() / max(self.labels, 1),
                   "tokens_per_s": self.tokens / max(now - self.started - self.excluded, 1e-9),
                   units: self.labels,
                   **{name: float(value) / max(self.labels, 1) for name, value in self.figures.items()}}
        self.figures = {}
        self.loss.zero_()
        self.labels = self.tokens = 0
        self.started, self.excluded = now, 0.0
        return figures


def due(step: int, every: int) -> bool:
    return bool(every) and step % every == 0


def out_of_time(state: ckpt.TrainState, train_cfg: TrainConfig) -> bool:
    return train_cfg.max_minutes is not None and state.seconds >= 60 * train_cfg.max_minutes


def fit(parts: Parts, batches: Batches, plan: StepPlan, run: RunDir, state: ckpt.TrainState, train_cfg: TrainConfig,
        validate: Callable[[], dict] | None, stop: StopRequest) -> FitStats:
    """Optimise until `plan.steps` optimizer steps are done, or until `train.patience` validations in a row did
    not improve (`state.selection`), or until `train.max_minutes` of training are used up. `validate` (None: no validation split) gives the validation metrics every
    `train.eval_every` steps and scores them for model selection. Raises `Stopped` after checkpointing when a stop
    was requested, `UserError` when `train.max_bad_steps` steps in a row had non-finite loss or gradients."""
    stats, window = FitStats(), LogWindow(parts.runtime.device)
    bad_in_a_row = 0
    started = time.perf_counter()
    parts.model.train()
    bar = tqdm(total=plan.steps, initial=state.step, desc="train", unit="step", dynamic_ncols=True,
               disable=not parts.world.is_main)
    # A resumed run that had already run out of patience does not train on.
    while state.step < plan.steps and not state.selection.exhausted(train_cfg.patience) and \
            not out_of_time(state, train_cfg):
        step_started = time.perf_counter()
        task, replayed = batches.next(state)
        items = task + replayed
        lr = parts.optimizer.param_groups[0]["lr"]
        result = optimizer_step(parts, items, plan.micro_batch, train_cfg.max_grad_norm, stop)
        state.seconds += time.perf_counter() - step_started  # optimizer steps only: what train.max_minutes counts
        if not result.applied:
            bad_in_a_row, stats.skipped_steps = bad_in_a_row + 1, stats.skipped_steps + 1
            log.warning(f"step {state.step + 1}: non-finite loss or gradients, step skipped ({bad_in_a_row} in a row)")
            if bad_in_a_row >= train_cfg.max_bad_steps:
                raise too_many_bad_steps(state.step + 1, bad_in_a_row, run, items[0].where)
            continue
        bad_in_a_row = 0
        state.step += 1
        tokens = sum(t.tokens for t in items)
        window.add(result, tokens)
        stats.train_tokens += tokens
        bar.update(1)
        if validate is not None and due(state.step, train_cfg.eval_every) and state.step < plan.steps:
            with window.paused():
                metrics = validate()  # also scored for model selection (`selection.py`)
            run.log("eval", state.step, metrics, split="validation", epoch=state.epoch)
            log.info(f"step {state.step}: validation {format_metrics(metrics)}")
        # The run ends after this step at the plan's end, when train.patience validations did not improve, or when
        # train.max_minutes are used up.
        last = state.step == plan.steps or state.selection.exhausted(train_cfg.patience) or \
            out_of_time(state, train_cfg)

        if due(state.step, train_cfg.log_every) or last:
            figures = window.close(parts.objective.units)
            stats.final_train_loss = figures["loss"]
            if stats.first_logged_loss is None:
                stats.first_logged_loss = figures["loss"]
            event = train_metrics(lr, figures, result, parts.penalties, replayed if batches.replay_pool else None)
            event["peak_memory_bytes"] = peak_memory_bytes(parts.runtime.device)  # the training phase's so far
            run.log("train", state.step, event, epoch=state.epoch)
            bar.set_postfix(loss=f"{figures['loss']:.4f}", lr=f"{lr:.2e}", tok_s=f"{figures['tokens_per_s']:.0f}")
        if due(state.step, train_cfg.save_every) and not last:
            with window.paused():
                checkpoint_now(parts, run, state, train_cfg.keep_checkpoints)
        if result.stop and not last:  # every rank agrees (`reduce_step`) and stops after this step
            checkpoint_now(parts, run, state, train_cfg.keep_checkpoints)
            bar.close()
            signum = stop.signum or signal.SIGTERM  # a rank that was not signalled itself stops with the one that was
            raise Stopped(signum, f"stopped by {signal.Signals(signum).name} after step {state.step}; checkpoint "
                                  f"written. Resume with: transferkit train --resume {run.path}")
    bar.close()
    stats.out_of_time = state.step < plan.steps and out_of_time(state, train_cfg)
    stats.stopped_early = state.step < plan.steps and not stats.out_of_time
    if stats.out_of_time:
        log.info(f"stopped after step {state.step} of {plan.steps}: train.max_minutes={train_cfg.max_minutes:g} "
                 f"used up")
    elif stats.stopped_early:
        log.info(f"stopped early after step {state.step}: {train_cfg.patience} validations without a better "
              f"{state.selection.metric} than at step {state.selection.best_step}")
    stats.train_seconds = time.perf_counter() - started
    return stats


def train_metrics(lr: float, figures: dict, last: StepResult, penalties: tuple[AnchorPenalty, ...],
                  replayed: list[Tokenized] | None) -> dict:
    """What a "train" event of metrics.jsonl reports: the window's figures and the last step's gradient norm,
    penalty and replayed general text (sequences, labelled tokens)."""
    event = {**figures, "lr": lr}
    event["grad_norm"] = float(last.grad_norm)
    if penalties:
        event["penalty"] = last.penalty  # EWC / L2-SP value at this step
    if replayed is not None:
        event["replayed_sequences"] = len(replayed)
        event["replayed_tokens"] = sum(t.num_labels for t in replayed)
    return event


def too_many_bad_steps(step: int, in_a_row: int, run: RunDir, where: str) -> UserError:
    last = ckpt.latest(run.checkpoints)
    return UserError(f"step {step}: loss or gradients were not finite for {in_a_row} steps in a row; stopped. "
                     f"Last good checkpoint: {last or 'none'}. Lower train.lr, check the data near {where}, "
                     f"or use train.precision=fp32")


def checkpoint_now(parts: Parts, run: RunDir, state: ckpt.TrainState, keep: int) -> None:
    """Every rank gathers (FSDP), the main process writes."""
    folder = run.inside(run.checkpoints / f"step-{state.step:06d}")
    ckpt.save_checkpoint(folder, parts.accelerator.unwrap_model(parts.model), parts.optimizer, parts.scheduler, state,
                         write=run.writer)
    if run.writer:
        ckpt.prune(run.checkpoints, keep)
