"""Resumable checkpoints, written atomically, without pickle.

    checkpoints/step-000050/
        trainable.safetensors   the trainable parameters (the model's delta from its base)
        optimizer.safetensors   optimizer state tensors, keyed "<param index>.<name>"
        rng.safetensors         torch CPU (and CUDA) generator states
        best.safetensors        the trainable parameters at the best validation so far (when there is one)
        state.json              step, data position, scheduler, optimizer hyper-parameters,
                                Python RNG state, the model selection's counters (`selection.py`),
                                seconds spent in optimizer steps so far

Each checkpoint is written into a hidden temporary folder and renamed into
place, so a crash leaves either the previous complete checkpoint or the new
complete one; `latest()` only ever sees complete ones.

With several processes every rank calls `save_checkpoint` (FSDP-sharded
parameters and optimizer state are gathered whole, a collective) and only the
main process writes (`write=False` elsewhere); the files are those of a
one-process run, so a run resumes on any number of processes. Every rank loads
the same files and keeps its own shard (`like`).
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..files import write_dir_atomic
from ..models.params import like, load_trainable_tensors, trainable_tensors, whole
from .selection import Selection

STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class TrainState:
    step: int          # optimizer steps completed
    epoch: int         # data position: epoch ...
    batch_index: int   # ... and index of the next batch within it
    selection: Selection = field(default_factory=Selection)  # the best validation so far and its weights
    seconds: float = 0.0  # time in optimizer steps so far, over every resumed segment (train.max_minutes)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    state = optimizer.state_dict()
    tensors = {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            value = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{index}.{key}"] = whole(value).contiguous().cpu()
    return tensors, state["param_groups"]


def save_checkpoint(folder: Path, model, optimizer, scheduler, state: TrainState, write: bool = True) -> None:
    """`write=False`: take part in gathering the tensors (every rank must), write nothing."""
    trainable = trainable_tensors(model)
    tensors, groups = _optimizer_tensors(optimizer)
    if not write:
        return

    def write_files(tmp: Path) -> None:
        save_file(trainable, str(tmp / "trainable.safetensors"))
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        save_file(rng, str(tmp / "rng.safetensors"))
        if state.selection.weights:
            save_file(state.selection.weights, str(tmp / "best.safetensors"))
        py_version, py_state, py_gauss = random.getstate()
        meta = {
            "step": state.step, "epoch": state.epoch, "batch_index": state.batch_index,
            "scheduler": scheduler.state_dict(),
            "optimizer_param_groups": groups,
            "python_rng": [py_version, list(py_state), py_gauss],
            "selection": state.selection.state(),
            "seconds": state.seconds,
        }
        (tmp / "state.json").write_text(json.dumps(meta))

    write_dir_atomic(folder, write_files)


def checkpoint_dirs(checkpoints: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders are ignored)."""
    if not checkpoints.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in checkpoints.iterdir() if (m := STEP_DIR.match(p.name)) and (p / "state.json").is_file()]
    return [p for _, p in sorted(found)]


def step_of(folder: Path) -> int:
    """The optimizer step a checkpoint folder (`step-000050`) was written after."""
    return int(STEP_DIR.match(folder.name).group(1))


def latest(checkpoints: Path) -> Path | None:
    dirs = checkpoint_dirs(checkpoints)
    return dirs[-1] if dirs else None


def prune(checkpoints: Path, keep: int) -> None:
    for old in checkpoint_dirs(checkpoints)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stray in checkpoints.glob(".tmp-*"):  # left by a crash mid-write
        shutil.rmtree(stray, ignore_errors=True)


def load_checkpoint(folder: Path, model, optimizer, scheduler, selection: Selection) -> TrainState:
    """The state saved in `folder`, loaded into the model, optimizer, scheduler, RNGs and `selection`."""
    load_trainable_tensors(model, load_file(str(folder / "trainable.safetensors")), f"{folder}: checkpoint")
    meta = json.loads((folder / "state.json").read_text())
    tensors = load_file(str(folder / "optimizer.safetensors"))
    opt_state: dict[int, dict] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        opt_state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": meta["optimizer_param_groups"]})
    for param, entries in optimizer.state.items():  # FSDP: each rank keeps its shard of the whole state
        for name, value in entries.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.dim():
                entries[name] = like(value, param)
    scheduler.load_state_dict(meta["scheduler"])
    rng = load_file(str(folder / "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    version, py_state, gauss = meta["python_rng"]
    random.setstate((version, tuple(py_state), gauss))
    if "selection" in meta:  # checkpoints written before model selection existed have none
        best = folder / "best.safetensors"
        selection.load_state(meta["selection"], load_file(str(best)) if best.is_file() else {})
    return TrainState(meta["step"], meta["epoch"], meta["batch_index"], selection, meta.get("seconds", 0.0))
