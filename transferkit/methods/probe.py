"""Linear probe (feature extraction): the backbone is frozen and only a new task
head trains, on the features the backbone gives for each example.

Because the backbone never changes, each distinct input's feature vector is
computed once and cached; every later epoch trains the head on cached
features. Features are what the classifier's head sees: the backbone's last
hidden states pooled as `method.pooling` says (`models/classifier.py`).
`head: mlp` puts a small MLP there instead of a linear layer. Classification
only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from ..models.heads import task_head_name
from ..options import MethodConfig, opt
from ..runtime import for_inference
from .registry import Defaults, Method, register
from .selective import load_trainable, save_trainable, saved_config


@dataclass
class ProbeMethodConfig(MethodConfig):
    head: Literal["linear", "mlp"] = opt("linear", "task head on the frozen features")
    hidden: int = opt(256, "width of the MLP head's hidden layer", gt=0)


def head_name(model: nn.Module) -> str:
    name = task_head_name(model)
    if name is not None:
        return name
    raise ValueError("probe needs a sequence classifier (a model with a 'classifier' head)")


class CachedFeatureProbe(nn.Module):
    """A frozen classification model whose head runs on cached pooled features."""

    def __init__(self, model: nn.Module, head: str):
        super().__init__()
        self.model = model
        self.head_name = head
        self.config = model.config
        self._cache: dict[bytes, torch.Tensor] = {}

    @property
    def head(self) -> nn.Module:
        return getattr(self.model, self.head_name)

    def get_base_model(self) -> nn.Module:
        """The classifier inside, as peft wrappers expose theirs."""
        return self.model

    @torch.no_grad()
    def _compute(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled head inputs [B, H] from one frozen forward pass."""
        captured = {}
        hook = self.head.register_forward_pre_hook(lambda module, args: captured.setdefault("x", args[0]))
        try:
            with for_inference(self.model):  # features must not depend on dropout, or caching would change them
                self.model(input_ids=input_ids, attention_mask=attention_mask)
        finally:
            hook.remove()
        return captured["x"].float()

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        from torch._subclasses.fake_tensor import is_fake

        if is_fake(input_ids):  # shapes without data (`transferkit cost`'s replay): the first epoch, uncached
            return self._compute(input_ids, attention_mask)
        keys = [input_ids[b][attention_mask[b].bool()].cpu().numpy().tobytes() for b in range(input_ids.shape[0])]
        missing = [b for b, k in enumerate(keys) if k not in self._cache]
        if missing:
            computed = self._compute(input_ids[missing], attention_mask[missing])
            for row, b in enumerate(missing):
                self._cache[keys[b]] = computed[row]
        return torch.stack([self._cache[k] for k in keys])  # [B, H]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, output_hidden_states: bool = False,
                **_) -> SequenceClassifierOutput:
        if output_hidden_states:  # asked for the backbone's states (forgetting probe): a plain, uncached pass
            return self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return SequenceClassifierOutput(logits=self.head(self.features(input_ids, attention_mask)))


def apply(model: nn.Module, cfg: ProbeMethodConfig, task: str) -> nn.Module:
    name = head_name(model)
    old = getattr(model, name)
    if cfg.head == "mlp":
        mlp = nn.Sequential(nn.Linear(old.in_features, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, old.out_features))
        setattr(model, name, mlp.to(old.weight.device))
    for param in model.parameters():
        param.requires_grad_(False)
    getattr(model, name).requires_grad_(True)
    return CachedFeatureProbe(model, name)


def load(base: nn.Module, adapter_dir) -> nn.Module:
    return load_trainable(apply(base, saved_config(ProbeMethodConfig, adapter_dir), "classification"), adapter_dir)


def closed_form(model: nn.Module, cfg: ProbeMethodConfig) -> int:
    head = getattr(model, head_name(model))
    h, c = head.in_features, head.out_features
    if cfg.head == "mlp":
        return h * cfg.hidden + cfg.hidden + cfg.hidden * c + c
    return h * c + (c if head.bias is not None else 0)


# Defaults: a logistic regression trained with Adam on fixed features, trained long, because every epoch after the
# first costs only the head (the features are cached): 3 epochs at 1e-2 scored 61.0 % on data/austen-novel with
# minilm-l6 where scikit-learn's logistic regression on the same features scores 65.0 %, 20 epochs 64.8 %
# (2026-11-30). It ends with its last step, not the best validation's (`select: last`): the head's problem is convex
# and its schedule decays to the end, so an early checkpoint is chosen only by the noise of a small validation set —
# SmolLM2 on data/austen-speech kept step 150 of 380 at 3e-2 (validation accuracy 0.925 on 160 passages) and scored
# 79.0 % on test against 86.3 % at its last step, where scikit-learn scores 86.7 %. Ending at the last step, 1e-2
# scored best or tied among 1e-2 / 3e-2 / 9e-2 on three of the four Austen task × packaged model pairs and 0.3 point
# (one passage) under 9e-2 on the fourth (SmolLM2, austen-speech: 86.3 against 86.7 %; 2026-12-07, bf16). Around
# 1e-2, SmolLM2 did no worse a step lower: 3.3e-3 tied 1e-2 on austen-novel (40.4 %) and beat it on austen-speech
# (87.7 against 86.3 %), so a decoder's probe trains at 3e-3, chosen before its sweep, which then measured 1e-3 /
# 3e-3 / 9e-3 at 89.3 / 88.3 / 85.7 % on austen-speech and 40.4 / 40.8 / 41.0 % on austen-novel. Why lower: a step
# moves the logits by about lr × the features' size, and a decoder's last-token features are large — SmolLM2's have
# an L2 norm of about 43, most of it in one outlier dimension, against 2.6 for MiniLM's mean-pooled embedding
# (median over 64 austen-speech passages).
# experiments/defaults.py checks both (docs/defaults.md).
DEFAULTS = Defaults(lr=1e-2, epochs=20, select="last", lr_by_pair=(("decoder", "classification", 3e-3),))


register(Method("probe", ProbeMethodConfig, apply=apply, save=save_trainable, load=load, tasks=("classification",),
                defaults=DEFAULTS, summary="frozen backbone, cached features, only a new head trains", separate_head=False,
                closed_form=closed_form, caches_features=True))
