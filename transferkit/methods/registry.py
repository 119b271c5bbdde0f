"""The method registry: every adaptation method registers one `Method` here when its module is imported.

Contract (DESIGN.md "Contracts"). A method is a name, a typed config (a `MethodConfig` subclass) and three
functions; no state rides on model objects:

    apply(model, cfg, task) -> model    freeze / wrap for `task` ("causal-lm" | "classification"); afterwards
                                        exactly the intended parameters have requires_grad=True
    save(model, cfg, adapter_dir)       write what `load` needs (PEFT format where possible)
    load(base, adapter_dir) -> model    the trained model again, on a freshly loaded base

Traits are fields, read by the rest of the package instead of method names: what tasks it serves, whether
it quantizes the base, packs sequences, trains a new classification head beside its own parameters, saves
in PEFT format; optional capabilities (layer-wise parameter groups, an off switch, merging, a closed form
of its trainable-parameter count) are functions or None.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager

import torch

from ..errors import ConfigError
from ..options import MethodConfig, from_dict

Model = torch.nn.Module


# A classifier's new task head: a linear layer from random weights under every method, so one rate for it. It
# learns like a probe's head, and at the 1e-4–1e-3 that suits a method's own parameters it barely moves in a few
# epochs: with MiniLM on austen-novel (3 epochs, batch 32), 1e-2 instead of 1e-3 gained LoRA and bottleneck adapters
# 2.7 and 3.5 points of accuracy, full fine-tuning 1.0, freeze −0.2 (within a seed's noise): docs/defaults.md, "The new
# head's learning rate", measured by experiments/defaults.py. The methods whose own rate is already 5e-3–3e-2 (IA3, prefix, prompt,
# the probe) train the head at that rate.
HEAD_LR = 1e-2


@dataclass(frozen=True)
class Defaults:
    """A method's own optimisation defaults: what `train.lr`, `train.head_lr`, `train.warmup_ratio`,
    `train.weight_decay`, `train.select` and the budget (`train.epochs`, when neither it nor `train.max_steps` is
    given) mean when the config leaves them null. Each method module states where its values
    come from; experiments/defaults.py measures them against a sweep (docs/defaults.md)."""

    lr: float
    head_lr: float | None = None      # a classification model's new head; None: `lr`
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    epochs: float = 3.0               # when the config gives neither train.epochs nor train.max_steps
    select: str = "best"              # the checkpoint the run ends with, given validation data: best or last
    # `lr` for one (architecture, data schema) pair where the sweep found the shared rate off by more than the
    # target, e.g. (("decoder", "classification", 1.8e-3),); `lr_for` reads it. Keyed by the data's schema, not the
    # training objective, so that a rate measured on instruction data does not also move preference (DPO) runs.
    lr_by_pair: tuple[tuple[str, str, float], ...] = ()

    def lr_for(self, architecture: str | None, schema: str) -> float:
        """The default rate for a model of `architecture` ("encoder"/"decoder"; None: unknown) on data of
        `schema`."""
        return next((lr for arch, kind, lr in self.lr_by_pair if (arch, kind) == (architecture, schema)), self.lr)

    def describe(self) -> dict[str, str]:
        """{train key: value as shown by `transferkit keys`}."""
        head = "lr" if self.head_lr is None else f"{self.head_lr:g}"
        pairs = "".join(f" ({arch} {kind} {lr:g})" for arch, kind, lr in self.lr_by_pair)
        return {"train.lr": f"{self.lr:g}{pairs}", "train.head_lr": head, "train.warmup_ratio": f"{self.warmup_ratio:g}",
                "train.weight_decay": f"{self.weight_decay:g}", "train.epochs": f"{self.epochs:g}",
                "train.select": self.select}


@dataclass(frozen=True)
class Method:
    name: str
    config_cls: type
    apply: Callable[[Model, MethodConfig, str], Model]
    save: Callable[[Model, MethodConfig, Path], None]
    load: Callable[[Model, Path], Model]
    summary: str
    defaults: Defaults                # train.lr and friends when the config leaves them null
    tasks: tuple[str, ...] = ("causal-lm", "classification")   # what it can train; checked at config time
    quantize_base: bool = False                                # load the base in 4-bit NF4 (QLoRA)
    packable: bool = True             # sequences may share a row (not where virtual tokens precede every sequence)
    # Classification: a new task head trains beside the method's own parameters (peft's modules_to_save), so
    # `closed_form` leaves it out. False where the head is one of the parameters the method selects itself.
    separate_head: bool = True
    peft_format: bool = False         # the adapter folder loads in stock `peft.PeftModel.from_pretrained`
    # what applying it imports beyond torch and transformers: resident for the whole run (`cost.LIBRARY_BYTES`)
    libraries: tuple[str, ...] = ()
    caches_features: bool = False     # after the first epoch, steps read cached features (the backbone idles)
    checkpointable: bool = True       # works with train.gradient_checkpointing (not prefix: its key/value cache is dropped)
    trains_base_weights: bool = False  # the base's own weights train: the tuned model is its own merged form
    # Before its first step the adapted model computes what its base does (LoRA's B = 0, IA3's ones, ...): a
    # preference run's policy then starts at its reference. Not prefix or prompt tuning (random virtual tokens).
    starts_at_base: bool = True
    # Optional capabilities; None where the method has none.
    param_groups: Callable[[Model, MethodConfig, float], list[dict]] | None = None
    disabled: Callable[[Model], ContextManager] | None = None   # yields a model acting as the base
    merge: Callable[[Model], Model] | None = None               # fold into the base weights
    closed_form: Callable[[Model, MethodConfig], int | None] | None = None  # trainable count by formula
    resolve: Callable[[Model, MethodConfig], MethodConfig] | None = None   # null keys the model decides, filled

    @property
    def has_off_switch(self) -> bool:
        return self.disabled is not None

    @property
    def can_merge(self) -> bool:
        return self.merge is not None


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in _REGISTRY:
        raise ValueError(f"method {method.name!r} registered twice")
    _REGISTRY[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name not in _REGISTRY:
        hint = difflib.get_close_matches(name.lower(), list(_REGISTRY), n=1)  # 'loRA' → 'lora'; names are lower case
        suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
        raise ConfigError(
            f"unknown method '{name}' in config key 'method.name'{suggestion} Known methods: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def method_names() -> list[str]:
    return sorted(_REGISTRY)


def check_task(method: Method, task: str) -> None:
    if task not in method.tasks:
        raise ConfigError(f"method '{method.name}' cannot train a {task} task (it serves: {', '.join(method.tasks)}); "
                          f"choose another method.name")


def method_config_from_dict(data: Any, prefix: str = "method.") -> MethodConfig:
    """The `method` section (a mapping with a `name`, or just the name) as that method's own config class."""
    if data is None:
        data = {}
    if isinstance(data, str):
        data = {"name": data}
    if not isinstance(data, dict):
        raise ConfigError(f"config key 'method' must be a mapping with a 'name', got {data!r}")
    name = data.get("name", MethodConfig.name)
    return from_dict(get_method(str(name)).config_cls, data, prefix)
