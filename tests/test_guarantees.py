"""The README's guarantees that are about where transferkit writes and what it reads:

- a run writes inside its run directory and transferkit's cache, nowhere else (checked from outside, on a
  real process with its own HOME, TMPDIR and working directory);
- checkpoints and adapters go through the run directory's confinement check like every other file;
- `--overwrite` never replaces the working directory, a parent of it, or a folder holding the model;
- weights are read from safetensors only: pickle files planted beside them are never loaded.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tiny import save_tiny_model_folder, write_jsonl

from transferkit.data.synthetic import topic_splits
from transferkit.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_a_run_writes_only_its_run_directory_and_the_cache(tmp_path):
    """A classification run (baseline, training, checkpoints, test predictions, the reliability plot) in a
    subprocess: afterwards every new or changed file under the sandbox lies in the run directory or the cache."""
    model = save_tiny_model_folder(tmp_path / "model", family="bert")
    data = tmp_path / "data"
    data.mkdir()
    for split, rows in topic_splits({"train": 32, "test": 8}, seed=1).items():
        write_jsonl(data / f"{split}.jsonl", rows)
    for name in ("home", "work", "tmp", "cache"):
        (tmp_path / name).mkdir()
    config = {"model": str(model), "data": {"train": str(data / "train.jsonl"), "test": str(data / "test.jsonl")},
              "method": {"name": "lora", "r": 4}, "output_dir": str(tmp_path / "run"),
              "train": {"max_steps": 2, "batch_size": 4, "save_every": 1, "precision": "fp32"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    before = _files(tmp_path)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path / "home"),
           "TMPDIR": str(tmp_path / "tmp"), "TRANSFERKIT_CACHE": str(tmp_path / "cache"),
           "PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "transferkit", "train", str(tmp_path / "c.yaml")],
                            cwd=tmp_path / "work", env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    after = _files(tmp_path)
    written = {name for name, mtime in after.items() if before.get(name) != mtime}
    assert any(name.startswith("run/") for name in written)
    assert any(name.startswith("cache/") for name in written)  # the plotting library's font cache
    assert {name for name in written if not name.startswith(("run/", "cache/"))} == set()


@pytest.mark.parametrize("part", ["checkpoints", "adapter"])
def test_checkpoints_and_adapters_cannot_be_written_outside_the_run(tiny_config, tmp_path, part):
    """A run folder whose checkpoints/ or adapter/ is a link to elsewhere: the write is refused."""
    from transferkit import train

    cfg = tiny_config("train.max_steps=2", "train.save_every=1", "eval.baseline=false", "eval.exact_match=false")
    train(cfg)
    run, outside = Path(cfg.output_dir), tmp_path / "outside"
    outside.mkdir()
    shutil.rmtree(run / part)
    (run / part).symlink_to(outside, target_is_directory=True)
    if part == "adapter":  # keep the checkpoints: resuming at the last step goes straight to writing the adapter
        (run / "summary.json").unlink()  # as if killed after the last checkpoint, before the adapter was written
        resume = tiny_config("train.max_steps=2", "train.save_every=1", "eval.baseline=false",
                             "eval.exact_match=false")
    else:
        resume = tiny_config("train.max_steps=4", "train.save_every=1", "eval.baseline=false",
                             "eval.exact_match=false")
    with pytest.raises(UserError, match="outside the run directory"):
        train(resume, resume=True)
    assert list(outside.iterdir()) == []


def test_overwrite_never_replaces_the_working_directory_its_parents_or_the_model(tiny_config, tiny_model_dir,
                                                                                  tmp_path, monkeypatch):
    from transferkit import train

    run = tmp_path / "parent" / "work"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("model: x\n")   # looks like a run directory
    (run / "notes.txt").write_text("keep me")
    monkeypatch.chdir(run)
    for output in (run, run.parent):
        (output / "config.yaml").write_text("model: x\n")
        with pytest.raises(UserError, match="contains the working directory"):
            train(tiny_config(f"output_dir={output}", "train.max_steps=1"), overwrite=True)
    assert (run / "notes.txt").read_text() == "keep me"

    holder = tmp_path / "holder"
    shutil.copytree(tiny_model_dir, holder / "model")
    (holder / "config.yaml").write_text("model: x\n")
    with pytest.raises(UserError, match="an input of this run"):
        train(tiny_config(f"output_dir={holder}", f"model={holder / 'model'}", "train.max_steps=1"), overwrite=True)
    assert (holder / "model" / "model.safetensors").is_file()


class _Planted:
    """Unpickling this writes a marker file: proof that a pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


def test_pickle_files_beside_the_weights_are_never_loaded(tiny_config, tiny_model_dir, tmp_path, monkeypatch):
    from transferkit import load_trained, train

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    marker = tmp_path / "unpickled.txt"
    payload = pickle.dumps(_Planted(marker))
    (model / "pytorch_model.bin").write_bytes(payload)
    cfg = tiny_config(f"model={model}", "train.max_steps=2", "eval.baseline=false", "eval.exact_match=false")

    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    train(cfg)
    adapter = Path(cfg.output_dir) / "adapter"
    (adapter / "adapter_model.bin").write_bytes(payload)
    load_trained(cfg.output_dir)
    assert loads == [] and not marker.exists()
