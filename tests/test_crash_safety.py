"""SIGKILL at random moments, some of them during checkpoint writes: every resume
continues from the last complete checkpoint, and the run ends where an
uninterrupted run ends (same adapter, one metrics event per step)."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
STEPS = 60
KILLS = 12


def _train_steps(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:  # a line torn by the kill
            continue
        if event.get("event") == "train":
            steps.append(event["step"])
    return steps


def _command(config: Path, run: Path) -> list[str]:
    if (run / "config.yaml").is_file():
        return [sys.executable, "-m", "transferkit", "train", "--resume", str(run)]
    return [sys.executable, "-m", "transferkit", "train", str(config), "--overwrite"]  # killed before it began


def _kill_when(proc: subprocess.Popen, ready, deadline: float, delay: float = 0.0) -> bool:
    """Poll until ready() or the process ends; `delay` seconds later SIGKILL it if it is
    still running. True if killed."""
    while proc.poll() is None and time.time() < deadline:
        if ready():
            time.sleep(delay)
            if proc.poll() is not None:
                return False
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.0005)
    return False


def _config(tmp_path: Path, tiny_model_dir: Path, quick_data: dict, run: Path) -> Path:
    config = {"model": str(tiny_model_dir), "data": {"train": str(quick_data["train"]), "validation_fraction": 0},
              "output_dir": str(run),
              "method": {"name": "lora", "r": 4},
              "train": {"max_steps": STEPS, "batch_size": 4, "lr": 1e-2, "log_every": 1, "eval_every": 0,
                        "save_every": 1, "keep_checkpoints": 2, "precision": "fp32"}}
    path = tmp_path / f"{run.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_sigkill_at_random_moments_loses_nothing(tiny_model_dir, quick_data, tmp_path):
    rng = random.Random(7)
    straight_run, killed_run = tmp_path / "straight", tmp_path / "killed"
    straight = subprocess.run(_command(_config(tmp_path, tiny_model_dir, quick_data, straight_run), straight_run),
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-2000:]

    config = _config(tmp_path, tiny_model_dir, quick_data, killed_run)
    kills = during_writes = 0
    deadline = time.time() + 600
    while kills < KILLS and time.time() < deadline:
        seen = len(_train_steps(killed_run))
        proc = subprocess.Popen(_command(config, killed_run), cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        checkpoints = killed_run / "checkpoints"
        if kills == 0:  # once during start-up, before any step
            time.sleep(rng.uniform(0.5, 2.0))
            killed = _kill_when(proc, lambda: True, deadline)
        elif kills % 2:  # while a checkpoint is being written: its temporary folder exists
            killed = _kill_when(proc, lambda: len(_train_steps(killed_run)) > seen and checkpoints.is_dir()
                                and any(p.name.startswith(".tmp-") for p in checkpoints.iterdir()), deadline)
            during_writes += killed
        else:  # at a random moment a few steps later
            target = seen + rng.randint(1, 4)
            killed = _kill_when(proc, lambda: len(_train_steps(killed_run)) >= target, deadline,
                                delay=rng.uniform(0, 0.02))
        if not killed:  # it finished before the kill
            assert proc.wait() == 0, proc.stderr.read()[-2000:]
            break
        kills += 1

    # All 12 kills happened: one at start-up, six while a checkpoint was being written, five a few steps later.
    assert kills == KILLS and during_writes == KILLS // 2, (kills, during_writes)
    final = subprocess.run(_command(config, killed_run), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr[-2000:]

    assert _train_steps(killed_run) == list(range(1, STEPS + 1))  # no gaps, no duplicates
    assert not any(p.name.startswith((".tmp-", ".old-")) for p in (killed_run / "checkpoints").iterdir())
    expected = load_file(str(straight_run / "adapter" / "adapter_model.safetensors"))
    got = load_file(str(killed_run / "adapter" / "adapter_model.safetensors"))
    assert expected.keys() == got.keys() and expected
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
    summary = json.loads((killed_run / "summary.json").read_text())
    assert summary["steps"] == STEPS
