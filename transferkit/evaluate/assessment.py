"""What a run measures besides its loss, done the same way by `train` and by `eval`:

    base model    → prompting baseline on the scored split, zero- and k-shot       Assessment.baseline
                  → general ability: general-text perplexity or a topic probe       Assessment.general
    tuned model   → general ability                                                 Assessment.general
    both          → forgetting (tuned vs base), comparison with the best baseline   Assessment.verdict
                    on the headline metric, and flags for what the user must know

`train` measures the base before its method touches the model and the tuned model after training;
`eval RUN_DIR` loads the base beside the run's model. Both write the same entries.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch

from ..data import TASK_OF_SCHEMA, Split
from ..data.schema import Example
from ..methods import Method
from ..options import EvalConfig
from ..runtime import Runtime
from .baseline import Prompted, prompting_baseline, prompting_model
from .comparison import collapse_flag, compare
from .forgetting import forgetting, general_ability


@contextlib.contextmanager
def switched_off(method: Method, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """`model`, adapted by `method` but not yet trained (or trained), acting as the base: through the method's
    off switch, or the model itself for the methods that start equal to their base (full, freeze, probe)."""
    with method.disabled(model) if method.has_off_switch else contextlib.nullcontext(model) as base:
        yield base


@dataclass(frozen=True)
class BaseModel:
    """The untrained model a run starts from, as loaded for the run's task."""

    ref: str                       # what the config names: short name, HF folder or GGUF file
    architecture: str              # "decoder" | "encoder"
    model: torch.nn.Module
    tokenizer: object
    trust_remote_code: bool = False


@dataclass(frozen=True)
class Assessment:
    """The settings every measurement around a run shares."""

    schema: str
    eval_cfg: EvalConfig
    reference: str                 # forgetting.reference: 'general', a text file, or 'none'
    max_length: int
    runtime: Runtime
    labels: list[str] | None = None

    @property
    def task(self) -> str:
        return TASK_OF_SCHEMA[self.schema]

    def general(self, model, tokenizer) -> dict | None:
        """General ability (None when the reference is 'none')."""
        return general_ability(model, tokenizer, self.task, self.reference, self.runtime, max_length=self.max_length,
                               batch_size=self.eval_cfg.batch_size)

    def baseline(self, base: BaseModel, split: Split, train: list[Example], seed: int) -> tuple[dict, dict]:
        """({"zero_shot": metrics, "<k>_shot": metrics}, the same keys: per-example predictions) of the untrained
        base on `split`, shots from `train`."""
        prompter = prompting_model(self.schema, base.architecture, base.ref, base.model, base.tokenizer, self.runtime,
                                   base.trust_remote_code)
        prompted = Prompted(prompter, base.tokenizer, split, self.schema, self.eval_cfg, self.runtime, self.labels)
        return prompting_baseline(prompted, base.architecture, train, seed)

    def verdict(self, tuned: dict | None, baseline: dict | None, general_base: dict | None,
                general_tuned: dict | None, no_baseline_reason: str | None = None,
                from_labels: dict | None = None) -> dict:
        """{"forgetting", "comparison" (when there are tuned metrics), "label_baselines", "flags"}. `baseline`:
        each prompt's metrics, and the "split" they were measured on if known (the comparison then names it);
        without one, `no_baseline_reason` (if given) becomes a flag. `from_labels`: classification's baselines
        from the training labels alone (`label_baselines`), compared with like the prompts."""
        result: dict = {"forgetting": forgetting(general_base, general_tuned), "flags": []}
        if from_labels is not None:
            result["label_baselines"] = from_labels
        if tuned is None:
            return result
        prompts = {name: metrics for name, metrics in (baseline or {}).items() if name != "split"}
        split = {"split": baseline["split"]} if baseline and "split" in baseline else {}
        candidates = {**prompts, **(from_labels or {})}
        comparison = None
        if candidates:
            comparison = {**split, **compare(self.schema, tuned, candidates, self.eval_cfg.headline)}
        result["comparison"] = comparison
        if comparison is not None and comparison["beats_baseline"] is False:
            kind = "prompting baseline" if comparison["baseline_prompt"] in prompts else "baseline from the labels alone"
            result["flags"].append(
                f"the tuned model does not beat its {kind}: {comparison['metric']} "
                f"{comparison['tuned']:.4g} vs {comparison['baseline']:.4g} ({comparison['baseline_prompt']})")
        if baseline is None and no_baseline_reason is not None:
            result["flags"].append(f"no prompting baseline to compare with ({no_baseline_reason})")
        if self.schema == "classification" and (collapsed := collapse_flag(tuned)):
            result["flags"].append(collapsed)
        return result
