"""Model selection: which weights a run ends with, and early stopping.

Every validation (each `train.eval_every` steps and the final one) is scored by its headline as measured
during training — accuracy for classification, perplexity of the reference completions for instruction
and language-modeling data (no generation: cheap enough to run often):

    improved   value better than the best so far, or equal (a tie goes to the later step)
    select     `best`: the trainable weights of the best validation are kept (a CPU copy) and restored
               before the adapter is written and the test split evaluated; `last`: the final step's
    patience   after `train.patience` validations in a row without improvement, training stops early
               (0: never)

The best weights and the counters travel in every checkpoint (`best.safetensors`, `state.json`), so a
resumed run selects exactly as the uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..evaluate.comparison import LOWER_IS_BETTER
from ..models.params import load_trainable_tensors, trainable_tensors


@dataclass
class Selection:
    keep_weights: bool = True          # `select: best` needs them; `last` only scores (and may stop early)
    best_step: int | None = None       # step of the best validation so far
    best_value: float | None = None    # its headline value
    metric: str | None = None          # the headline's name
    since_best: int = 0                # validations since the best one
    last_step: int | None = None       # step of the latest validation scored (a repeat is not scored twice)
    last_metrics: dict = field(default_factory=dict)  # all metrics of that validation
    best_metrics: dict = field(default_factory=dict)  # all metrics of the best validation
    weights: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # trainable weights at best_step

    def observe(self, step: int, metrics: dict, metric: str, model: torch.nn.Module) -> bool:
        """Score one validation of `model` at `step` by its headline `metric`; keeps a copy of the trainable
        weights when it is the best so far. Returns whether it was."""
        if step == self.last_step:
            return False
        self.last_step, self.last_metrics = step, dict(metrics)
        lower = metric in LOWER_IS_BETTER
        value = float(metrics[metric])
        improved = self.best_value is None or (value <= self.best_value if lower else value >= self.best_value)
        if improved:
            self.best_step, self.best_value, self.metric, self.since_best = step, value, metric, 0
            self.best_metrics = dict(metrics)
            if self.keep_weights:
                self.weights = {name: t.clone() for name, t in trainable_tensors(model).items()}
        else:
            self.since_best += 1
        return improved

    def exhausted(self, patience: int) -> bool:
        """Whether `patience` validations in a row have not improved (never with patience 0)."""
        return patience > 0 and self.since_best >= patience

    def restore_best(self, model: torch.nn.Module) -> None:
        """Put the best validation's trainable weights back into `model`."""
        load_trainable_tensors(model, self.weights, f"the best validation's (step {self.best_step})")

    def facts(self, final_step: int, select: str) -> dict:
        """summary.json's `selection`: what was chosen, on which metric and step."""
        chosen = self.best_step if select == "best" and self.best_step is not None else final_step
        return {"select": select, "metric": self.metric, "best_step": self.best_step, "best_value": self.best_value,
                "chosen_step": chosen}

    def state(self) -> dict:
        return {"best_step": self.best_step, "best_value": self.best_value, "metric": self.metric,
                "since_best": self.since_best, "last_step": self.last_step, "last_metrics": self.last_metrics,
                "best_metrics": self.best_metrics}

    def load_state(self, state: dict, weights: dict[str, torch.Tensor]) -> None:
        self.best_step, self.best_value = state["best_step"], state["best_value"]
        self.metric, self.since_best = state["metric"], state["since_best"]
        self.last_step, self.last_metrics = state["last_step"], state["last_metrics"]
        self.best_metrics = state["best_metrics"]
        self.weights = weights
