"""Everything a run needs before its first optimizer step, in the order it happens:

    check the run directory (resume / overwrite)           nothing written yet
    read and validate the data, load tokenizer and model   a bad input fails here, leaving no folder behind
    create the run directory; write config.yaml (labels.json); open the trackers of train.report_to
    measure the untouched base: its prompting baseline               (both read back from metrics.jsonl on resume)
    apply the method; bf16 storage of frozen weights; gradient checkpointing
    preference data: the reference's log-probabilities, the method switched off (`reference.py`; read back on resume)
    measure the base's general ability: the adapted model, method switched off, before any step
    plan the steps; optimizer and schedule; EWC / L2-SP anchors; replay pool
    restore the last checkpoint when resuming

`setup` returns a `Session`: the prepared parts `fit` moves and the facts `finish` reports. With several processes
(`distributed.py`) every rank runs it; only the main one writes, and measures the base (the others need no
baseline); FSDP shards the adapted model before the optimizer is built.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import dump_config, with_method_defaults
from ..data import TASK_OF_SCHEMA, Split, Splits, load_splits, read_train
from ..data.batching import collate_packed
from ..data.general import PACKAGED, general_sequences, general_texts
from ..data.schema import prompt_and_reference
from ..data.tokenize import Tokenized
from ..errors import ConfigError, UserError
from ..evaluate.assessment import Assessment, BaseModel, switched_off
from ..evaluate.comparison import HEADLINES, default_headline, headline_metric
from ..evaluate.forgetting import check_reference
from ..evaluate.split import evaluate_split, format_metrics
from ..evaluate.task_metrics import resolve_task_metric
from ..methods import Method, check_task, get_method
from ..methods.targets import check_target_modules
from ..models import (SequenceClassifier, architecture, count_parameters, format_trainable, load_model, load_tokenizer,
                      resolve_model, underlying_model)
from ..objectives import OBJECTIVES, Objective, objective_for
from ..diagnose.diagnosis import check_probe_labels, read_sample
from ..options import EvalConfig, ForgettingConfig, MethodConfig, RunConfig, TrainConfig
from ..rundir import RunDir, event_metrics
from ..runtime import MemoryWatch, Runtime, Stopwatch, store_frozen_weights
from . import checkpoint as ckpt
from .hardware import default_micro_batch_size, enable_gradient_checkpointing, pick_attention
from .distributed import World, check_strategy, make_accelerator, shard_model
from .loop import Batches, Collate, Parts, StepPlan, steps_per_epoch
from .optimizer import build_optimizer
from .reference import adapter_off, reference_mode, with_references
from .regularizers import build_penalties
from .selection import Selection
from .tracking import check_available, open_trackers

log = logging.getLogger(__name__)  # the CLI shows INFO on stdout; a library user chooses


@dataclass
class BaseMeasures:
    """What the untouched base scored: its prompting baseline (None when off or nothing to score) and general
    ability (None when forgetting.reference is 'none')."""

    baseline: dict | None
    general: dict | None


@dataclass
class Session:
    """What `setup` prepared: the parts `fit` moves and the facts `finish` reports."""

    cfg: RunConfig
    run: RunDir
    runtime: Runtime
    method: Method
    model_folder: Path
    tokenizer: object
    splits: Splits
    assessment: Assessment
    before: BaseMeasures
    params: tuple[int, int]          # (trainable, total) after the method was applied
    parts: Parts
    plan: StepPlan
    batches: Batches
    state: ckpt.TrainState
    resumed_from: Path | None
    clock: Stopwatch                 # seconds per phase, reported in summary.json
    memory: MemoryWatch              # before the model, the training phase's peak; reported in summary.json
    world: World                     # this process among the run's ranks
    wall_start: float = field(default_factory=time.perf_counter)

    @property
    def finished(self) -> bool:
        """A resumed run that had already trained every planned step and written its summary."""
        return self.resumed_from is not None and self.state.step >= self.plan.steps and self.run.summary.is_file()

    def validate(self) -> dict | None:
        """Validation metrics of the model as it is now (None without a validation split), scored for model
        selection at the current step (`selection.py`)."""
        if self.splits.validation is None:
            return None
        metrics = validation_metrics(self.model, self.tokenizer, self.splits.validation, self.splits.schema,
                                     self.cfg, self.runtime, self.splits.labels)
        headline = headline_metric(self.splits.schema, metrics, self.cfg.eval.headline)
        self.state.selection.observe(self.state.step, metrics, headline, self.model)
        return metrics

    @property
    def model(self) -> torch.nn.Module:
        """The model without its DDP wrapper: what evaluation runs (FSDP's sharded model on every rank together)."""
        return self.parts.accelerator.unwrap_model(self.parts.model)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup(cfg: RunConfig, run: RunDir, *, resume: bool = False, overwrite: bool = False) -> Session:
    """Prepare a run described by `cfg` in `run` (see the module docstring)."""
    wall_start, clock = time.perf_counter(), Stopwatch()
    runtime = Runtime.resolve(cfg.train.device, cfg.train.precision)
    # First: with several GPUs it sets this rank's device, before anything (the memory watch) touches CUDA.
    accelerator, world = make_accelerator(cfg.distributed, runtime)
    memory = MemoryWatch(runtime.device)  # before the model exists
    resume_from = check_run_dir(run, resume, overwrite)
    world.barrier()  # the main process has folded a chained base (`api.train`) before any rank loads it
    method = get_method(cfg.method.name)
    with clock("load"):
        model, tokenizer, folder, splits = prepare_inputs(cfg, method, runtime)
    task, kind = TASK_OF_SCHEMA[splits.schema], architecture(folder)
    cfg = as_run(cfg, model, splits, kind)
    open_run(run, cfg, splits, resume, overwrite)
    resume_step = None if not resume else ckpt.step_of(resume_from) if resume_from else 0
    run.trackers = open_trackers(cfg.train.report_to, run, dump_config(cfg), resume_step) if run.writer else []
    seed_everything(cfg.seed)

    assessment = Assessment(splits.schema, cfg.eval, cfg.forgetting.reference, cfg.data.max_length, runtime,
                            splits.labels)
    known = {e["event"]: e for e in run.read_events() if e["event"] in ("baseline", "general_base")}
    base = BaseModel(cfg.model, kind, model, tokenizer, cfg.trust_remote_code)
    with clock("baseline"):
        baseline = ({"split": known["baseline"]["split"], **event_metrics(known["baseline"])} if "baseline" in known
                    else measure_baseline(run, assessment, base, splits, cfg.seed) if world.is_main else None)
    seed_everything(cfg.seed)  # same adapter init whether or not the baseline ran
    model = adapt(model, method, cfg.method, training_storage(cfg.train, world), task, runtime)
    if splits.schema == "preference":
        with clock("reference"):
            splits = with_references(splits, run, method, model, tokenizer.pad_token_id, runtime,
                                     cfg.eval.batch_size, cfg.preference.reference)
    with clock("general_base"):
        general = event_metrics(known["general_base"]) if "general_base" in known else measure_general_base(
            run, assessment, method, model, tokenizer) if world.is_main else None
    before = BaseMeasures(baseline, general)
    params = count_parameters(model)
    log.info(format_trainable(*params))
    plan = plan_steps(cfg.train, cfg.forgetting.replay, len(splits.train.tokenized), runtime.device, cfg.seed)
    model = shard_model(model, world, cfg.distributed)  # FSDP: before the optimizer, which holds the shards
    optimizer, scheduler = build_optimizer(model, method, cfg.method, cfg.train, plan.steps)
    if world.sharded:
        optimizer = accelerator.prepare(optimizer)
    else:
        model, optimizer = accelerator.prepare(model, optimizer)  # DDP with several processes
    objective = objective_for(splits.schema, task, cfg.preference,
                              adapter_off(method) if cfg.preference.reference == "adapter_off" else None)
    # θ₀ (and the Fisher, on general text: the task's language-model objective) are taken here, before a checkpoint
    # is loaded: a resumed run anchors where the first began.
    penalties = build_penalties(cfg.forgetting, model, tokenizer, OBJECTIVES[task], cfg.data.max_length, runtime)
    parts = Parts(model, optimizer, scheduler, accelerator, objective, pick_collate(cfg.train, objective),
                  tokenizer.pad_token_id, runtime, penalties, world)
    state = restore(parts, run, resume, resume_from, Selection(keep_weights=cfg.train.select == "best"), plan.steps)
    if state.step < plan.steps:
        steps = f"{plan.steps} steps" if not state.step else f"steps {state.step + 1}–{plan.steps} of {plan.steps}"
        log.info(f"training {steps} on {runtime.device.type} in {runtime.precision}; run directory {run.path}")
    batches = Batches(splits.train.tokenized, plan, replay_pool(cfg.forgetting, tokenizer, cfg.data.max_length))
    return Session(cfg, run, runtime, method, folder, tokenizer, splits, assessment, before, params, parts, plan,
                   batches, state, resume_from, clock, memory, world, wall_start)


def check_run_dir(run: RunDir, resume: bool, overwrite: bool) -> Path | None:
    """The checkpoint to resume from (None: start at step 0); refuses to resume a folder that is no run, or to
    write over a finished run without `overwrite` (checked by the main process, which writes it)."""
    if not resume:
        if not run.writer:
            return None
        run.check_writable(overwrite)
        return None
    if not run.config.is_file():
        raise UserError(f"{run.path}: not a run directory (no config.yaml) to resume")
    # None when the run was stopped before its first checkpoint: it restarts from step 0.
    return ckpt.latest(run.checkpoints)


def prepare_inputs(cfg: RunConfig, method: Method, runtime: Runtime):
    """(model, tokenizer, model folder, splits): the data read and validated, then the model loaded for its
    task. Nothing is written yet, so bad input never leaves a half-made run directory behind."""
    check_data_paths(cfg.data)
    train_data = read_train(cfg.data)
    task = TASK_OF_SCHEMA[train_data[0]]
    check_task(method, task)
    check_preference(cfg, method, train_data[0])
    check_packing(cfg.train, method, task)
    check_head_lr(cfg.train, task)
    check_evaluation(cfg.eval, cfg.forgetting, task)
    check_diagnose(cfg)
    check_available(cfg.train.report_to)
    check_strategy(cfg.distributed, method.quantize_base, bool(cfg.forgetting.ewc or cfg.forgetting.l2sp),
                   cfg.train.max_minutes)
    tokenizer = load_tokenizer(resolve_model(cfg.model), cfg.trust_remote_code)
    splits = load_splits(cfg.data, tokenizer, cfg.seed, train=train_data)
    seed_everything(cfg.seed)  # a classifier's new head is initialised here
    model, tokenizer, folder = load_for_task(cfg, method, splits, tokenizer, runtime)
    check_target_modules(model, cfg.method)
    for note in splits.notes:
        log.info(note)
    return model, tokenizer, folder, splits


def load_for_task(cfg: RunConfig, method: Method, splits: Splits, tokenizer, runtime: Runtime):
    """(model, tokenizer, folder): the base loaded for the data's task, as training runs it."""
    longest = max(len(t.input_ids) for split in (splits.train, splits.validation, splits.test) if split
                  for t in split.tokenized)
    return load_model(cfg.model, task=TASK_OF_SCHEMA[splits.schema], labels=splits.labels, device=runtime.device,
                      quantize_4bit=method.quantize_base, compute_dtype=runtime.compute_dtype,
                      attention=pick_attention(cfg.train.attention, runtime.device, longest), tokenizer=tokenizer,
                      trust_remote_code=cfg.trust_remote_code, pooling=cfg.method.pooling)


def as_run(cfg: RunConfig, model: torch.nn.Module, splits: Splits, kind: str) -> RunConfig:
    """The config as it runs, so that the run's config.yaml names every choice and re-runs or reloads the same:
    null learning rates (for the model's `kind`: "encoder" or "decoder"), warmup, weight decay and selection
    replaced by the method's defaults, a null `eval.headline` by
    the one the data calls for, a preference run's `preference.reference: auto` by the reference it takes, the
    method keys the model decides (LoRA's rank, alpha and targets) by their values, and a classifier's
    `method.pooling: auto` by the pooling it resolved to."""
    cfg = with_method_defaults(cfg, splits.schema, kind)
    method = get_method(cfg.method.name)
    if method.resolve is not None:
        cfg = dataclasses.replace(cfg, method=method.resolve(model, cfg.method))
    cfg = dataclasses.replace(cfg, eval=with_headline(cfg.eval, splits))
    if splits.schema == "preference" and cfg.preference.reference == "auto":
        mode = reference_mode(get_method(cfg.method.name), planned_steps(cfg.train, len(splits.train.tokenized)),
                              steps_per_epoch(len(splits.train.tokenized), cfg.train.batch_size))
        cfg = dataclasses.replace(cfg, preference=dataclasses.replace(cfg.preference, reference=mode))
    inner = underlying_model(model)
    if not isinstance(inner, SequenceClassifier) or cfg.method.pooling == inner.pooling:
        return cfg
    return dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, pooling=inner.pooling))


def check_data_paths(data_cfg) -> None:
    """Every data file the config names exists, else one line naming the key and the absolute path tried."""
    for key in ("train", "validation", "test"):
        value = getattr(data_cfg, key)
        if value and not Path(value).exists():
            raise ConfigError(f"config key 'data.{key}': no such file or folder: {Path(value).resolve()} (relative "
                              f"paths in a config file are read from the file's folder)")


def with_headline(eval_cfg: EvalConfig, splits: Splits) -> EvalConfig:
    """`eval_cfg` with its headline checked against what the task measures, or chosen from the data."""
    schema = splits.schema
    generates = eval_cfg.exact_match or eval_cfg.task_metric is not None
    if eval_cfg.headline is not None:
        known = HEADLINES[schema] - (set() if generates else {"exact_match", "token_f1"})
        if eval_cfg.headline not in known and not (schema == "instruction" and eval_cfg.task_metric):
            raise ConfigError(f"config key 'eval.headline': '{eval_cfg.headline}' is not measured for {schema} data "
                              f"here; choose one of {', '.join(sorted(known))}")
        return eval_cfg
    references = ([prompt_and_reference(ex)[1] for ex in splits.train.examples] if schema == "instruction" else [])
    return dataclasses.replace(eval_cfg, headline=default_headline(schema, references, generates, eval_cfg.task_metric))


def check_diagnose(cfg: RunConfig) -> None:
    """With `diagnose.enabled`, its examples (and their label column) are read now, not after training."""
    if not cfg.diagnose.enabled:
        return
    sample = read_sample(cfg.diagnose.data or cfg.data.held_out_file,
                         cfg.diagnose.label_column, cfg.diagnose.max_examples, cfg.seed)
    if sample.labels is not None:
        check_probe_labels(sample.labels)


def check_evaluation(eval_cfg: EvalConfig, forgetting: ForgettingConfig, task: str) -> None:
    """Before anything is written: the task metric resolves, the general texts read, and replay and the
    EWC Fisher (which train on general text, so need a language-model head) fit the task."""
    resolve_task_metric(eval_cfg.task_metric)
    for key, value in (("replay", forgetting.replay), ("ewc", forgetting.ewc)):
        if value and task != "causal-lm":
            raise ConfigError(f"config key 'forgetting.{key}' is {value} but the task is {task}: it uses general "
                              f"text, which needs a causal-LM task; use forgetting.l2sp instead")
    check_reference(forgetting.reference, task)
    if (forgetting.replay or forgetting.ewc) and forgetting.replay_data != PACKAGED:
        general_texts(forgetting.replay_data, "pool", "forgetting.replay_data")


def check_preference(cfg: RunConfig, method: Method, schema: str) -> None:
    """Preference data: each pair is one chosen and one rejected row, so no packing and no replayed general text
    in its batches; `preference.reference: adapter_off` needs a method with an off switch."""
    if schema != "preference":
        return
    problems = []
    if cfg.train.pack_tokens:
        problems.append("config key 'train.pack_tokens': a preference pair's two rows are scored as whole "
                        "sequences and cannot be packed; set train.pack_tokens=0")
    if cfg.forgetting.replay:
        problems.append("config key 'forgetting.replay': replayed general text has no rejected answer to rank; use "
                        "forgetting.l2sp or forgetting.ewc, or preference.sft_weight to keep the chosen answers likely")
    if not method.starts_at_base:
        problems.append(f"method '{method.name}' starts from randomly initialised virtual tokens, so its policy does "
                        f"not begin at its reference (the base): DPO would first have to undo the random start; use "
                        f"lora, dora, ia3, adapter, qlora, full or freeze")
    if cfg.preference.reference == "adapter_off" and not method.has_off_switch:  # auto never picks it then
        problems.append(f"config key 'preference.reference' is adapter_off but method '{method.name}' trains the "
                        f"model's own weights and has no off switch; use preference.reference=cached")
    if problems:
        raise ConfigError("; ".join(problems))


def check_packing(train_cfg: TrainConfig, method: Method, task: str) -> None:
    if train_cfg.pack_tokens and (task != "causal-lm" or not method.packable):
        why = f"method '{method.name}' adds virtual tokens to every sequence" if task == "causal-lm" else \
            f"the task is {task} (one label per sequence)"
        raise ConfigError(f"config key 'train.pack_tokens' is {train_cfg.pack_tokens} but sequences cannot be "
                          f"packed: {why}; set train.pack_tokens=0")


def check_head_lr(train_cfg: TrainConfig, task: str) -> None:
    if train_cfg.head_lr is not None and task != "classification":
        raise ConfigError(f"config key 'train.head_lr' is {train_cfg.head_lr} but the task is {task}, which trains "
                          f"no new head; remove train.head_lr")


def open_run(run: RunDir, cfg: RunConfig, splits: Splits, resume: bool, overwrite: bool) -> None:
    """Create the run directory (a new run) and write the resolved config and the class names."""
    if not resume:
        inputs = [p for p in (cfg.data.train, cfg.data.validation, cfg.data.test, cfg.model) if p and Path(p).exists()]
        run.create(overwrite, protected=inputs)
    run.write_text_atomic(run.config, dump_config(cfg))
    if splits.labels is not None:
        run.write_json(run.labels, {"labels": splits.labels})


def scored_split(splits: Splits) -> Split | None:
    """The split the run is judged on: test when given, else validation."""
    return splits.test if splits.test is not None else splits.validation


def measure_baseline(run: RunDir, assessment: Assessment, base: BaseModel, splits: Splits, seed: int) -> dict | None:
    """The untrained base's prompting baseline on the scored split (None when eval.baseline is off or there is
    no split to score), logged as a "baseline" event."""
    split = scored_split(splits)
    if not assessment.eval_cfg.baseline or split is None:
        return None
    metrics, predictions = assessment.baseline(base, split, splits.train.examples, seed)
    for name, rows in predictions.items():
        if rows:
            run.write_jsonl(run.path / f"baseline_{name}_predictions.jsonl", rows)
    baseline = {"split": split.name, **metrics}
    run.log("baseline", 0, metrics, split=split.name)
    for name, metrics in baseline.items():
        if name != "split":
            prompt = name.replace("_", "-")
            log.info(f"baseline (untrained {base.ref}, {prompt}) on {split.name}: {format_metrics(metrics)}")
    return baseline


def measure_general_base(run: RunDir, assessment: Assessment, method: Method, model: torch.nn.Module,
                         tokenizer) -> dict | None:
    """The base's general ability in the numerics the tuned model will be measured in: the adapted model
    before its first step, with the method switched off (a method without an off switch starts equal to the
    base), so both sides see the same weight storage (bf16 frozen weights, a 4-bit base). Logged as a
    "general_base" event."""
    with switched_off(method, model) as base:
        general = assessment.general(base, tokenizer)
    run.log("general_base", 0, general)
    return general


def adapt(model: torch.nn.Module, method: Method, method_cfg: MethodConfig, train_cfg: TrainConfig, task: str,
          runtime: Runtime) -> torch.nn.Module:
    """The method applied for `task`; frozen weights stored in bf16 and gradient checkpointing, as configured."""
    model = method.apply(model, method_cfg, task)
    store_frozen_weights(model, runtime, train_cfg.frozen_bf16)
    if train_cfg.gradient_checkpointing:
        if not method.checkpointable:  # transformers turns the cache off under checkpointing: the prefix is lost
            raise ConfigError(f"config key 'train.gradient_checkpointing': method '{method.name}' passes its prefix "
                              f"as a key/value cache, which gradient checkpointing drops; set it to false")
        enable_gradient_checkpointing(model)
    return model


def training_storage(train_cfg: TrainConfig, world: World) -> TrainConfig:
    """FSDP gathers each block's weights as one flat buffer of one dtype, so the frozen weights keep the trainable
    ones' fp32 storage there (bf16 autocast still computes in bf16)."""
    return dataclasses.replace(train_cfg, frozen_bf16=False) if world.sharded else train_cfg


def planned_steps(train_cfg: TrainConfig, num_sequences: int) -> int:
    """Optimizer steps of the run: `train.max_steps`, else `train.epochs` passes (resolved by the method's defaults)."""
    if train_cfg.max_steps is not None:
        return train_cfg.max_steps
    return max(1, math.ceil(train_cfg.epochs * steps_per_epoch(num_sequences, train_cfg.batch_size)))


def plan_steps(train_cfg: TrainConfig, replay: float, num_sequences: int, device: torch.device, seed: int
               ) -> StepPlan:
    """Optimizer steps and batch composition: `train.batch_size` task sequences per step, plus general text
    holding `forgetting.replay` of the step's labelled tokens (`replay.py`)."""
    per_epoch = steps_per_epoch(num_sequences, train_cfg.batch_size)
    steps = planned_steps(train_cfg, num_sequences)
    micro = train_cfg.micro_batch_size or default_micro_batch_size(device, train_cfg.batch_size)
    return StepPlan(steps, train_cfg.batch_size, replay, micro, per_epoch, seed)


def pick_collate(train_cfg: TrainConfig, objective: Objective) -> Collate:
    if train_cfg.pack_tokens:
        return functools.partial(collate_packed, row_tokens=train_cfg.pack_tokens)
    return objective.collate


def replay_pool(forgetting: ForgettingConfig, tokenizer, max_length: int) -> list[Tokenized]:
    """General-text sequences replayed into training batches (empty without forgetting.replay)."""
    if not forgetting.replay:
        return []
    return general_sequences(tokenizer, forgetting.replay_data, "pool", max_length, "forgetting.replay_data")


def restore(parts: Parts, run: RunDir, resume: bool, resume_from: Path | None,
            selection: Selection, steps: int) -> ckpt.TrainState:
    """Step 0, or the state of the checkpoint resumed from; events logged after it are dropped (unless the run
    had finished all `steps`: then nothing will run, and its log stays whole)."""
    state = ckpt.TrainState(step=0, epoch=0, batch_index=0, selection=selection)
    if resume_from is not None:
        state = ckpt.load_checkpoint(resume_from, parts.accelerator.unwrap_model(parts.model), parts.optimizer,
                                     parts.scheduler, selection)
        log.info(f"resumed from {resume_from} (step {state.step})")
    elif resume:
        log.info(f"no complete checkpoint in {run.checkpoints} yet: starting again from step 0")
    if resume and not (state.step >= steps and run.summary.is_file()):
        run.truncate_events_after(state.step)
    return state


def validation_metrics(model, tokenizer, split: Split, schema: str, cfg: RunConfig, runtime: Runtime,
                       labels: list[str] | None) -> dict:
    """Loss (and for classification accuracy / macro-F1, for preference data the preference accuracy) without
    generation: cheap enough to run often."""
    quick = dataclasses.replace(cfg.eval, exact_match=False, max_examples=None)
    metrics, _ = evaluate_split(model, tokenizer, split, schema, quick, runtime, label="validation", labels=labels,
                                preference=cfg.preference)
    return metrics
