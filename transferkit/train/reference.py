"""The reference a preference run is measured against, without a second copy of the model.

DPO and IPO compare the policy's answer log-probabilities with a frozen reference's (the model the run starts
from). transferkit gets them from the one model in memory, with the method switched off (an adapter method's
`disabled` switch; full fine-tuning and freeze before their first step, when they still are the reference):

    preference.reference = cached       before the first step, one no-grad forward pass over every pair of every
                                        split; the numbers go into the run directory and onto each pair
    preference.reference = adapter_off  the held-out splits as above; training pairs recomputed every step
                                        through the off switch (adapter methods only)
    preference.reference = auto         cached when training passes over every pair at least once or the method
                                        has no off switch, else adapter_off: the fewer forward passes

    <run>/reference_logprobs.json       {"train": [[chosen, rejected], ...] | null, "validation": [...] | null,
                                         "test": [...] | null, "where": {split: [file:line, ...]}}

Costs: `cached` adds one forward pass over the training pairs once (an epoch of training costs about three), and
2 floats per pair; `adapter_off` adds one forward pass per step instead — the same as `cached` after one epoch,
more after that. Neither keeps a second model: a frozen copy would double the weights' memory. The pass runs before
a resumed run restores its checkpoint (the model is still the reference then); a resumed run reads the file back
instead of repeating it.
"""

from __future__ import annotations

import dataclasses
import json

import torch

from ..data import Split, Splits
from ..errors import UserError
from ..evaluate.assessment import switched_off
from ..evaluate.metrics import pair_log_probs
from ..methods import Method
from ..objectives import ReferenceOf
from ..objectives.preference import PairLogProbs, pair_logprobs
from ..rundir import RunDir
from ..runtime import Runtime


def with_references(splits: Splits, run: RunDir, method: Method, model: torch.nn.Module, pad_id: int,
                    runtime: Runtime, batch_size: int, mode: str) -> Splits:
    """`splits` with every pair carrying its reference log-probabilities (`mode` adapter_off: not the training
    pairs), read from the run directory when there, else computed from `model` switched off and written."""
    path = run.reference_logprobs
    wanted = {"train": mode == "cached", "validation": True, "test": True}
    if path.is_file():
        known = json.loads(path.read_text())
    else:
        known = {"train": None, "validation": None, "test": None, "where": {}}
        with switched_off(method, model) as reference:
            for split in (splits.train, splits.validation, splits.test):
                if split is not None and wanted[split.name]:
                    scored = pair_log_probs(reference, split.tokenized, pad_id, batch_size, runtime,
                                            desc=f"reference log-probs: {split.name}")
                    known[split.name] = torch.stack([scored.chosen, scored.rejected], 1).tolist()
                    known["where"][split.name] = [t.where for t in split.tokenized]
        run.write_json(path, known)
    return dataclasses.replace(splits, **{name: attach(getattr(splits, name), known, path)
                                          for name in ("train", "validation", "test")
                                          if getattr(splits, name) is not None and known.get(name) is not None})


def attach(split: Split, known: dict, path) -> Split:
    """The split with each pair's reference (chosen, rejected) from `known`; refuses numbers of other data."""
    if known.get("where", {}).get(split.name) != [t.where for t in split.tokenized]:
        raise UserError(f"{path}: its {split.name} pairs are not this run's data (the data files changed since "
                        f"the run began); start a new run or restore the data")
    tokenized = [dataclasses.replace(t, reference=tuple(ref)) for t, ref in zip(split.tokenized, known[split.name])]
    return dataclasses.replace(split, tokenized=tokenized)


def reference_mode(method: Method, steps: int, steps_per_epoch: int) -> str:
    """`preference.reference: auto`: `cached` when training passes over every pair at least once (one forward per
    pair up front, none per step) or the method has no off switch, else `adapter_off` (one per trained pair)."""
    return "cached" if steps >= steps_per_epoch or not method.has_off_switch else "adapter_off"


def adapter_off(method: Method) -> ReferenceOf:
    """The reference recomputed on a training batch through the method's off switch (`preference.reference:
    adapter_off`)."""
    def reference(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> PairLogProbs:
        with torch.no_grad(), method.disabled(model) as base:
            return pair_logprobs(base, batch)
    return reference
