"""Penalties that hold weights near where training started, against catastrophic forgetting.

Both are a weighted squared distance to the starting weights θ₀ (taken after the method is applied,
so for PEFT methods θ₀ of an adapter is its initialisation):

    EWC   (Kirkpatrick et al. 2017):  λ · Σ_i F_i (θ_i − θ₀_i)²,  F = diagonal Fisher on general text at θ₀
    L2-SP (Li et al. 2018):           α/2 · Σ_i (θ_i − θ₀_i)²

The gradient 2·w·(θ − θ₀) is added straight into `.grad` after the task backward: no autograd graph
over every weight, so the only extra memory is θ₀ (and F for EWC), one copy each of the trained weights.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..data.general import general_sequences
from ..data.tokenize import Tokenized
from ..models.params import trainable_parameters
from ..objectives import Objective
from ..options import ForgettingConfig
from ..runtime import Runtime, eval_mode


class AnchorPenalty:
    """Σ_i w_i (θ_i − θ₀_i)² over `params`; each weight is a scalar or a tensor shaped like its parameter."""

    def __init__(self, name: str, params: list[torch.nn.Parameter], weights: list[torch.Tensor | float]):
        self.name = name
        self.params = params
        self.anchors = [p.detach().clone() for p in params]
        self.weights = weights

    @torch.no_grad()
    def value(self) -> torch.Tensor:
        return self._penalty(add_gradient=False)

    @torch.no_grad()
    def add_gradient(self) -> torch.Tensor:
        """Add ∂penalty/∂θ = 2·w·(θ − θ₀) to every parameter's gradient; returns the penalty."""
        return self._penalty(add_gradient=True)

    def _penalty(self, add_gradient: bool) -> torch.Tensor:
        total = None  # summed on the parameters' device: one host transfer per step, not one per tensor
        for p, anchor, w in zip(self.params, self.anchors, self.weights):
            diff = p.float() - anchor.float()
            term = (w * diff * diff).sum(dtype=torch.float64)
            total = term if total is None else total + term
            if add_gradient:
                grad = (2 * w * diff).to(p.dtype)
                if p.grad is None:
                    p.grad = grad
                else:
                    p.grad.add_(grad)
        return torch.zeros((), dtype=torch.float64) if total is None else total.cpu()


def l2sp_penalty(model: torch.nn.Module, alpha: float) -> AnchorPenalty:
    params = trainable_parameters(model)
    return AnchorPenalty("l2sp", params, [alpha / 2] * len(params))


def diagonal_fisher(model: torch.nn.Module, sequences: list[Tokenized], objective: Objective, pad_id: int,
                    runtime: Runtime) -> list[torch.Tensor]:
    """Empirical diagonal Fisher F_i = mean over sequences x of (∂ log p(x) / ∂θ_i)², one sequence at a time
    (a batch would give the square of a sum, not the sum of squares). log p(x) sums the sequence's tokens."""
    params = trainable_parameters(model)
    fisher = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    with eval_mode(model):  # no dropout: the Fisher of the model as it is
        for item in tqdm(sequences, desc="EWC Fisher", unit="seq", leave=False):
            batch = objective.collate([item], pad_id, runtime.device)
            with runtime.autocast():
                nll, _, _ = objective.loss_sum(model, batch)
            grads = torch.autograd.grad(nll, params, allow_unused=True)
            for f, g in zip(fisher, grads):
                if g is not None:
                    f.add_(g.float() ** 2)
    return [f / max(len(sequences), 1) for f in fisher]


def ewc_penalty(model: torch.nn.Module, lam: float, fisher: list[torch.Tensor]) -> AnchorPenalty:
    params = trainable_parameters(model)
    return AnchorPenalty("ewc", params, [lam * f for f in fisher])


def build_penalties(forgetting: ForgettingConfig, model: torch.nn.Module, tokenizer, objective: Objective,
                    max_length: int, runtime: Runtime) -> tuple[AnchorPenalty, ...]:
    """The penalties `forgetting` asks for, anchored at the model's current weights."""
    penalties = []
    if forgetting.ewc:
        sequences = general_sequences(tokenizer, forgetting.replay_data, "pool", max_length, "forgetting.replay_data")
        fisher = diagonal_fisher(model, sequences[: forgetting.ewc_samples], objective, tokenizer.pad_token_id,
                                 runtime)
        penalties.append(ewc_penalty(model, forgetting.ewc, fisher))
    if forgetting.l2sp:
        penalties.append(l2sp_penalty(model, forgetting.l2sp))
    return tuple(penalties)
