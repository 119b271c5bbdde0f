"""IA3 (Liu et al. 2022, arXiv:2205.05638) through `peft`: learned vectors that
rescale keys, values and the feed-forward activations. Trainable parameters:
one per output feature of each attention target, one per input feature of
each feed-forward target. Mergeable: the vectors fold into the weights."""

from __future__ import annotations

from dataclasses import dataclass

from ..options import MethodConfig, opt
from .peft_common import PEFT_FUNCTIONS, classifier_modules, merge, peft_task_type, wrap
from .registry import Defaults, Method, register
from .targets import adapted_linears, default_ia3_targets


@dataclass
class IA3MethodConfig(MethodConfig):
    target_modules: list[str] = opt([], "modules to rescale; empty: keys, values and MLP down-projection")
    feedforward_modules: list[str] = opt([], "subset of target_modules scaled on their input (feed-forward)")


def _targets(model, cfg: IA3MethodConfig) -> tuple[list[str], list[str]]:
    if cfg.target_modules:
        return cfg.target_modules, cfg.feedforward_modules
    return default_ia3_targets(model)


def apply(model, cfg: IA3MethodConfig, task: str):
    from peft import IA3Config

    targets, feedforward = _targets(model, cfg)
    return wrap(model, IA3Config(target_modules=targets, feedforward_modules=feedforward,
                                 task_type=peft_task_type(task), modules_to_save=classifier_modules(model, task)))


def closed_form(model, cfg: IA3MethodConfig) -> int:
    targets, feedforward = _targets(model, cfg)
    ff = set(adapted_linears(model, feedforward))
    return sum(m.in_features if m in ff else m.out_features for m in adapted_linears(model, targets))


# Defaults: lr 5e-3 (recipes/ia3.yaml; T-Few, Liu et al. 2022, trained (IA)³ at 3e-3): rescaling vectors start at 1
# and move little per step. Checked by experiments/defaults.py.
DEFAULTS = Defaults(lr=5e-3)


register(Method("ia3", IA3MethodConfig, apply=apply, defaults=DEFAULTS, summary="learned rescaling of keys, values and MLP (peft)",
                merge=merge, closed_form=closed_form, **PEFT_FUNCTIONS))
