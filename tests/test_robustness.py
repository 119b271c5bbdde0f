"""Graceful stop on SIGTERM/SIGINT and skipping of non-finite steps."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _events(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()] if path.exists() else []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_finishes_the_step_checkpoints_and_resumes(signum, tiny_model_dir, quick_data, tmp_path):
    run = tmp_path / "run"
    config = {"model": str(tiny_model_dir), "data": {k: str(v) for k, v in quick_data.items()},
              "method": {"name": "lora", "r": 4}, "output_dir": str(run),
              "train": {"max_steps": 40, "batch_size": 4, "lr": 1e-2, "log_every": 1, "eval_every": 0, "save_every": 0,
                        "precision": "fp32"},
              "eval": {"baseline": False, "max_new_tokens": 4}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "transferkit", "train", str(tmp_path / "c.yaml")]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not any(e["event"] == "train" for e in _events(run)) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err[-2000:]
    assert f"Resume with: transferkit train --resume {run}" in err
    checkpoints = sorted((run / "checkpoints").iterdir())
    stopped_at = int(checkpoints[-1].name.split("-")[1])
    assert 1 <= stopped_at < 40 and not (run / "summary.json").exists()
    assert max(e["step"] for e in _events(run)) == stopped_at  # the step in flight finished and was logged

    resumed = subprocess.run([sys.executable, "-m", "transferkit", "train", "--resume", str(run)], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    steps = [e["step"] for e in _events(run) if e["event"] == "train"]
    assert steps == list(range(1, 41))  # no gap, no duplicate
    assert json.loads((run / "summary.json").read_text())["steps"] == 40


def test_a_second_signal_stops_at_once():
    """The first signal is a request honoured after the step; a second one interrupts whatever runs."""
    import os

    from transferkit.train.signals import StopRequest

    previous = signal.getsignal(signal.SIGINT)
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # Python runs the handler between bytecodes
        assert stop.signum == signal.SIGTERM
        started = time.perf_counter()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # a long step: the second signal must not wait for it
        assert time.perf_counter() - started < 1
    assert signal.getsignal(signal.SIGINT) is previous  # handlers restored


def test_an_interrupt_exits_130(monkeypatch, capsys):
    from transferkit import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_keys", interrupted)
    assert cli.main(["keys"]) == 130 and "interrupted" in capsys.readouterr().err


def _nan_objective(monkeypatch, bad_calls):
    from transferkit import objectives

    real = objectives.OBJECTIVES["causal-lm"]
    calls = []

    def loss_sum(model, batch):
        calls.append(1)
        loss, n, figures = real.loss_sum(model, batch)
        return (loss * float("nan"), n, figures) if bad_calls(len(calls)) else (loss, n, figures)

    monkeypatch.setitem(objectives.OBJECTIVES, "causal-lm", objectives.Objective(real.collate, loss_sum))


def test_a_non_finite_step_is_skipped_and_counted(tiny_config, monkeypatch):
    from safetensors.torch import load_file

    from transferkit import train

    _nan_objective(monkeypatch, lambda call: call == 3)  # the third training step (no evaluation before it)
    cfg = tiny_config("train.max_steps=6", "eval.baseline=false", "train.eval_every=0", "train.save_every=0")
    summary = train(cfg)
    assert summary["skipped_steps"] == 1 and summary["steps"] == 6
    weights = load_file(str(Path(cfg.output_dir) / "checkpoints" / "step-000006" / "trainable.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_persistent_non_finite_loss_stops_with_a_clear_error(tiny_config, monkeypatch):
    from transferkit import train
    from transferkit.errors import UserError

    _nan_objective(monkeypatch, lambda call: call > 4)
    cfg = tiny_config("train.max_steps=20", "train.max_bad_steps=3", "eval.baseline=false", "train.eval_every=0",
                      "train.save_every=2")
    with pytest.raises(UserError, match=r"step 5: loss or gradients were not finite for 3 steps in a row.*"
                                        r"Last good checkpoint: .*step-000004"):
        train(cfg)


def test_a_partial_last_event_line_is_dropped_before_appending(tmp_path):
    from transferkit.rundir import RunDir

    run = RunDir(tmp_path)
    run.metrics.write_text('{"event": "baseline", "step": 0}\n{"event": "train", "st')  # killed mid-write
    run.log("general_base", 0, None)
    assert [e["event"] for e in run.read_events()] == ["baseline", "general_base"]
