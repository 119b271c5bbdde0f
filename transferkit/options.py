"""Typed options: one dataclass per concern, help text written once, and the rules that check them.

This is a leaf: it knows no method. Each method module subclasses `MethodConfig`; `config.py` (above the
method registry) turns YAML and `key=value` overrides into a `RunConfig`, parsing the `method` section with
the config class of the method it names. Every key is checked against the dataclass fields: unknown keys
and wrong types raise `ConfigError` naming the key and suggesting the closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import yaml

from .errors import ConfigError


def opt(default: Any, help: str, *, gt: float | None = None, ge: float | None = None, le: float | None = None):
    """A config field with its help text and optional numeric bounds."""
    meta = {"help": help, "gt": gt, "ge": ge, "le": le}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    train: str = opt("", "training data: a .jsonl/.json/.csv/.parquet/.txt file or a saved HF dataset folder")
    validation: Optional[str] = opt(None, "validation data; if absent, `validation_fraction` of train is split off")
    test: Optional[str] = opt(None, "test data, evaluated after training (and before, for the baseline)")
    schema: Literal["auto", "instruction", "lm", "classification", "preference"] = opt(
        "auto", "task schema; `auto` detects it from the columns")
    max_length: int = opt(1024, "longest tokenized example in tokens", gt=0)
    overlong: Literal["truncate", "error"] = opt(
        "truncate", "what to do with an example longer than max_length: truncate it (counted and reported) or stop with an error")
    validation_fraction: float = opt(0.05, "fraction of train split off for validation when no validation file is given", ge=0.0, le=0.5)
    overlap: Literal["warn", "error"] = opt(
        "warn", "an example of validation or test that also occurs in train (or of test in validation), exactly or "
                "after case/whitespace normalisation: `warn` counts it in summary.json and flags it, `error` refuses")
    slice_column: str = opt("slice", "column naming each row's held-out slice (domain, source, ...); when present, "
                                     "every evaluation metric is also reported per slice")

    @property
    def held_out_file(self) -> str:
        """The file a finished run is examined on after training (diagnose, merge's fidelity sample): the test
        file, else the validation file, else the training file."""
        return self.test or self.validation or self.train


@dataclass
class TrainConfig:
    max_steps: Optional[int] = opt(None, "optimizer steps to run (or give `epochs`)", gt=0)
    epochs: Optional[float] = opt(None, "passes over the training data (or give `max_steps`); neither: the "
                                        "method's default", gt=0)
    max_minutes: Optional[float] = opt(
        None, "also end training after this many minutes of optimizer steps (validation and checkpoints not counted, a "
              "resumed run's earlier steps counted): the step that crosses the limit is the last, and the run finishes "
              "as usual (the schedule still spans max_steps / epochs). `transferkit compare --budget minutes=N` sets it",
        gt=0)
    batch_size: int = opt(8, "examples per optimizer step", gt=0)
    micro_batch_size: Optional[int] = opt(
        None, "examples per forward pass; batch_size / micro_batch_size micro-batches are accumulated "
              "(default: 4 on CPU, where it holds half the activations of 8 at the same speed; batch_size on GPU)", gt=0)
    # lr, head_lr, weight_decay, warmup_ratio (and epochs, select) default to the method's own values (`Defaults` in
    # its module; `transferkit keys` lists them); the run's config.yaml records what was used.
    lr: Optional[float] = opt(None, "peak learning rate; null: the method's default", gt=0)
    head_lr: Optional[float] = opt(
        None, "peak learning rate of a classification model's new task head (the method's own parameters keep "
              "`lr`; a fresh head often wants a larger one); null: the method's default", gt=0)
    weight_decay: Optional[float] = opt(None, "AdamW decoupled weight decay; null: the method's default", ge=0)
    warmup_ratio: Optional[float] = opt(None, "fraction of steps with linear warmup from 0 to lr; null: the "
                                              "method's default", ge=0, le=1)
    min_lr_ratio: float = opt(0.1, "cosine decays to lr * min_lr_ratio", ge=0, le=1)
    max_grad_norm: float = opt(1.0, "gradient clipping norm (0 disables)", ge=0)
    precision: Literal["auto", "bf16", "fp32"] = opt("auto", "`auto`: bf16 autocast where the CPU/GPU supports it, else fp32")
    attention: Literal["auto", "eager", "sdpa"] = opt(
        "auto", "attention kernel for training; `auto`: eager on CPU when every sequence fits in 512 tokens "
                "(torch's CPU SDPA backward is slow at these sizes), else sdpa")
    pack_tokens: int = opt(
        0, "pack several training sequences into rows of up to this many tokens (position ids restart per sequence, "
           "attention stays inside each); 0: one sequence per row, length-grouped. Causal LM only", ge=0)
    gradient_checkpointing: bool = opt(
        False, "recompute each layer's activations during backward: activation memory for one layer instead of all, "
               "for about one more forward pass of compute")
    frozen_bf16: bool = opt(True, "with bf16 precision, store the frozen weights in bf16 (less memory, faster); "
                                  "trained weights and optimizer state stay fp32")
    eval_every: int = opt(50, "validate every N optimizer steps (0: only at the end)", ge=0)
    select: Optional[Literal["best", "last"]] = opt(
        None, "with validation data, which weights the run ends with (adapter, test evaluation): `best` — those of "
              "the validation with the best headline (classification: accuracy; otherwise the perplexity of the "
              "references; a tie goes to the later step), `last` — the final step's; null: the method's default")
    patience: int = opt(0, "stop early after this many validations in a row without a better headline (0: never)",
                        ge=0)
    log_every: int = opt(5, "write a training log event every N steps", gt=0)
    save_every: int = opt(50, "write a resumable checkpoint every N steps (0: only at the end)", ge=0)
    keep_checkpoints: int = opt(2, "how many recent checkpoints to keep", gt=0)
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "where to train")
    report_to: list[Literal["tensorboard", "mlflow"]] = opt(
        [], "also send every metrics.jsonl event, live, to TensorBoard (<run>/tensorboard) and/or MLflow "
            "($MLFLOW_TRACKING_URI, else the local file store <run>/mlruns); needs pip install 'transferkit[tracking]'")
    max_bad_steps: int = opt(5, "stop after this many steps in a row with non-finite loss or gradients (each is skipped)", gt=0)


@dataclass
class EvalConfig:
    baseline: bool = opt(True, "measure the untrained base model by prompting (zero-shot and k-shot) on the test "
                               "split (else validation) before training, and compare the tuned model with it")
    shots: int = opt(4, "training examples shown in the k-shot baseline prompt (0: zero-shot only)", ge=0)
    exact_match: bool = opt(True, "for instruction data: greedy-generate and compare with the reference")
    task_metric: Optional[str] = opt(
        None, "extra score of generated answers: `json` (JSON validity + field accuracy) or package.module:function "
              "returning {name: score}; its first score becomes the headline metric")
    headline: Optional[str] = opt(
        None, "the metric a run is judged and selected by: macro_f1 or accuracy (classification); exact_match, "
              "token_f1, perplexity, loss or a task metric's score (instruction); null: chosen from the data "
              "(classification macro_f1; instruction: the task metric's headline, else exact_match when the "
              "reference answers are short, at most 4 words at the median, else token_f1; lm perplexity)")
    max_new_tokens: int = opt(64, "generation budget per example for exact match", gt=0)
    max_examples: Optional[int] = opt(None, "evaluate at most this many test examples (default: all)", gt=0)
    batch_size: int = opt(16, "examples per evaluation batch", gt=0)


@dataclass
class ForgettingConfig:
    reference: str = opt(
        "general", "what forgetting is measured on: `general` (decoders: perplexity on Jane Austen's Persuasion from "
                   "Debian's r-cran-janeaustenr, else on general English written for transferkit; classifiers: a "
                   "topic probe), `general-validation` (Northanger Abbey: for choosing a mitigation's strength), "
                   "a text file (decoders), or `none`")
    replay: float = opt(0.0, "share of every step's labelled tokens drawn from general text, added to the step's "
                             "task examples (which stay train.batch_size); causal LM only", ge=0, le=0.9)
    replay_data: str = opt("general", "general text for replay and the EWC Fisher: `general` (the packaged pool, "
                                      "disjoint from the reference) or a text file")
    ewc: float = opt(0.0, "EWC strength λ: loss += λ·Σ F·(θ−θ₀)², F = diagonal Fisher of general text at the "
                          "start (Kirkpatrick et al. 2017); causal LM only", ge=0)
    ewc_samples: int = opt(32, "general-text sequences the Fisher is averaged over", gt=0)
    l2sp: float = opt(0.0, "L2-SP strength α: loss += α/2·‖θ−θ₀‖² toward the starting weights (Li et al. 2018)", ge=0)


@dataclass
class PreferenceConfig:
    loss: Literal["sigmoid", "ipo"] = opt(
        "sigmoid", "preference data only: `sigmoid` is DPO (Rafailov et al. 2023), `ipo` IPO (Azar et al. 2023) on "
                   "per-token log-probability averages")
    beta: float = opt(0.1, "β: how far the policy may move from the reference (smaller: further)", gt=0)
    label_smoothing: float = opt(0.0, "ε of conservative DPO: the share of pairs assumed mislabelled (sigmoid only)",
                                 ge=0, le=0.49)
    sft_weight: float = opt(0.0, "α: adds α × the chosen answer's mean token NLL to the loss (RPO, \"DPO + NLL\"), "
                                 "against DPO lowering the chosen likelihood on small data", ge=0)
    reference: Literal["auto", "cached", "adapter_off"] = opt(
        "auto", "the reference log-probabilities: `cached` = computed once before the first step for every pair "
                "(one forward pass over the data, the method switched off) and kept in "
                "<run>/reference_logprobs.json; `adapter_off` = recomputed every step through the method's off "
                "switch (one more forward per step; adapter methods only); `auto` = cached when the run trains at "
                "least one pass over the pairs or the method has no off switch, else adapter_off (the fewer "
                "forward passes); config.yaml records the choice")


@dataclass
class DiagnoseConfig:
    enabled: bool = opt(False, "at the end of training, compare the tuned model with its base layer by layer "
                               "(probes, CKA, weight change: `transferkit diagnose`) into <run>/diagnostics/, shown "
                               "in the report")
    data: Optional[str] = opt(None, "examples to diagnose on; null: the test split, else validation, else train")
    max_examples: int = opt(512, "examples used at most (a seeded subset): the memory bound is this × layers × hidden "
                                 "floats per model", gt=3)
    label_column: Optional[str] = opt(None, "column whose values the layer probes predict; null: a classification "
                                            "task's label (other tasks: no probes)")
    pooling: Literal["auto", "mean", "last", "cls"] = opt(
        "auto", "how a text's token states become one vector per layer; auto: mean for encoders, the last token "
                "for decoders")
    debiased: bool = opt(False, "debiased CKA (unbiased HSIC) instead of the plain estimator")


@dataclass
class DistributedConfig:
    strategy: Literal["ddp", "fsdp", "deepspeed"] = opt(
        "ddp", "with several processes (`transferkit train --processes N` or `accelerate launch -m transferkit "
               "train`): `ddp` = every process holds the whole model and gradients are averaged (accelerate's DDP); "
               "`fsdp` = weights, gradients and optimizer state sharded over the processes (PyTorch FSDP2's "
               "fully_shard on every transformer block and the root); `deepspeed` = refused for now, with the reason "
               "(docs/distributed.md). One process: ignored")
    reshard_after_forward: bool = opt(
        True, "fsdp only: free each block's gathered weights after its forward and gather them again for backward "
              "(ZeRO-3-like, least memory); false keeps them until backward (ZeRO-2-like, less communication)")
    timeout_minutes: float = opt(
        120, "how long a process waits for the others at a collective before the run fails: the other ranks wait "
             "while the main process measures the base (prompting baseline, general ability) before the first step "
             "(torch's own defaults, 10 min for NCCL and 30 for gloo, are shorter than a large baseline)", gt=0)


@dataclass
class MethodConfig:
    """Base of every method's config; each method module subclasses it."""

    name: str = opt("lora", "adaptation method (see `transferkit methods`)")
    pooling: Literal["auto", "cls", "pooler", "mean", "last"] = opt(
        "auto", "classification: how token states become one vector for the head (auto: what the model declares, "
        "else last token for decoders, mean for encoders; the run's config.yaml records the choice)")


@dataclass
class RunConfig:
    model: str = opt("smollm2-135m", "short name of a packaged model, a local HF folder, or a .gguf file")
    trust_remote_code: bool = opt(False, "let Python code shipped inside the model folder run; only for folders you trust")
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "data files and schema"})
    method: MethodConfig = field(default_factory=MethodConfig, metadata={"help": "adaptation method and its options"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "optimisation"})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "evaluation"})
    forgetting: ForgettingConfig = field(default_factory=ForgettingConfig,
                                         metadata={"help": "forgetting measurement and mitigations"})
    preference: PreferenceConfig = field(default_factory=PreferenceConfig,
                                         metadata={"help": "the preference objective (data with prompt, chosen, "
                                                           "rejected)"})
    diagnose: DiagnoseConfig = field(default_factory=DiagnoseConfig,
                                     metadata={"help": "where the network changed, measured after training"})
    distributed: DistributedConfig = field(default_factory=DistributedConfig,
                                           metadata={"help": "training on several processes (data parallel, "
                                                             "FSDP, DeepSpeed): what changes with the world size"})
    output_dir: str = opt("runs/default", "run directory to write")
    seed: int = opt(0, "random seed for data order, initialisation and dropout")

    def validate(self) -> None:
        """Cross-field rules that a single field's type cannot express."""
        if not self.data.train:
            raise ConfigError("config key 'data.train' is required: the training data file")
        if self.train.max_steps is not None and self.train.epochs is not None:
            raise ConfigError("give one of 'train.max_steps' and 'train.epochs', not both")
        if self.preference.label_smoothing and self.preference.loss != "sigmoid":
            raise ConfigError("config key 'preference.label_smoothing' applies to preference.loss=sigmoid only")
        micro = self.train.micro_batch_size or self.train.batch_size
        if self.train.batch_size % micro:
            raise ConfigError(
                f"config key 'train.batch_size' ({self.train.batch_size}) must be a multiple of "
                f"'train.micro_batch_size' ({micro})")


# ---------------------------------------------------------------- parsing

def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp) if a is not type(None)) + " | None"
    if origin is Literal:
        return "|".join(str(c) for c in typing.get_args(tp))
    if origin is list:
        return f"list[{type_name(typing.get_args(tp)[0])}]"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting numeric strings
    (YAML reads `2e-4` as a string) and comma lists from the command line."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
            raise ConfigError(f"config key '{key}' must be one of {list(choices)}, got {value!r}{suggestion}")
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' must be a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif tp in (int, float):
        number = _number(value, tp)
        if number is not None:
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        raise TypeError(f"unsupported config annotation {tp!r} for {key}")
    raise ConfigError(f"config key '{key}' must be {type_name(tp)}, got {type(value).__name__} {value!r}")


def _number(value: Any, tp: type) -> int | float | None:
    """`value` as `tp` (int or float) when it is one: a number that is not a bool (for int, a float with no
    fractional part), or a string that parses (YAML reads `2e-4` as a string); None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            return tp(value)
        except ValueError:
            return None
    if tp is int and isinstance(value, float):
        return int(value) if value.is_integer() else None
    return tp(value) if isinstance(value, (int, float)) else None


def _check_bounds(value: Any, f: dataclasses.Field, key: str) -> None:
    if value is None or not isinstance(value, (int, float)):
        return
    gt, ge, le = f.metadata.get("gt"), f.metadata.get("ge"), f.metadata.get("le")
    if gt is not None and not value > gt:
        raise ConfigError(f"config key '{key}' must be > {gt}, got {value}")
    if ge is not None and not value >= ge:
        raise ConfigError(f"config key '{key}' must be >= {ge}, got {value}")
    if le is not None and not value <= le:
        raise ConfigError(f"config key '{key}' must be <= {le}, got {value}")


# Names users bring from transformers.TrainingArguments / peft.LoraConfig.
FAMILIAR_NAMES = {"learning_rate": "lr", "num_train_epochs": "epochs", "per_device_train_batch_size": "batch_size",
                  "lora_alpha": "alpha", "lora_dropout": "dropout", "rank": "r",
                  "lora_r": "r", "bf16": "precision", "fp16": "precision", "warmup_steps": "warmup_ratio"}


def unknown_key_error(key: str, valid: list[str], prefix: str) -> ConfigError:
    familiar = FAMILIAR_NAMES.get(key)
    hint = [familiar] if familiar in valid else difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    suggestion = f"; did you mean '{prefix}{hint[0]}'?" if hint else f"; valid keys: {', '.join(valid)}"
    return ConfigError(f"unknown config key '{prefix}{key}'{suggestion}")


def from_dict(cls: type, data: Any, prefix: str = "", *,
              method_config: Callable[[Any, str], MethodConfig] | None = None) -> Any:
    """Build dataclass `cls` from a mapping, checking every key and type. A field typed `MethodConfig` is
    parsed by `method_config(value, key prefix)`, which knows each method's own config class."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise unknown_key_error(str(key), list(fields), prefix)
        full = prefix + key
        tp = hints[key]
        if tp is MethodConfig and method_config is not None:
            kwargs[key] = method_config(value, full + ".")
        elif dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, full + ".")
        else:
            kwargs[key] = _coerce(value, tp, full)
            _check_bounds(kwargs[key], fields[key], full)
    if method_config is not None:  # an absent method section is the default method's own config class, too
        for key in fields.keys() - kwargs.keys():
            if hints[key] is MethodConfig:
                kwargs[key] = method_config(None, prefix + key + ".")
    return cls(**kwargs)


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    parsed = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value, e.g. train.max_steps=5")
        key, raw = item.split("=", 1)
        parsed.append((key.strip(), yaml.safe_load(raw) if raw.strip() else None))
    return parsed


def key_lines(path: str | Path) -> dict[str, int]:
    """{dotted key: 1-based line} of every mapping key in a YAML file that parses (else {})."""
    try:
        root = yaml.compose(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    lines: dict[str, int] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                dotted = f"{prefix}{key.value}"
                lines[dotted] = key.start_mark.line + 1
                walk(value, dotted + ".")

    walk(root, "")
    return lines


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found" if not path.exists() else f"{path}: is not a file")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        context = getattr(exc, "context_mark", None)
        started = f" ({exc.context} at line {context.line + 1})" if context is not None and context != mark else ""
        raise ConfigError(f"{path}{line}: invalid YAML: {getattr(exc, 'problem', exc)}{started}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping of sections")
    return tree
