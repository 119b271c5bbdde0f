"""Training on several processes (gloo on the CPU): 2 processes × micro-batch 2 train exactly what 1 process ×
micro-batch 4 trains, for LoRA and full fine-tuning under DDP and FSDP; labels are normalised over the global step;
a rank stopped or killed mid-run leaves a checkpoint that resumes on 2 processes and on 1 alike."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from safetensors.torch import load_file

from tiny import write_jsonl
from transferkit.config import config_to_dict, with_overrides
from transferkit.errors import ConfigError
from transferkit.options import DistributedConfig
from transferkit.train.distributed import World, check_strategy, micro_batches, share

ROOT = Path(__file__).resolve().parents[1]


def write_config(cfg, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    return path


def launch(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "transferkit", "train", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def train_events(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").is_file() else []
    return [e for e in map(json.loads, lines) if e["event"] == "train"]


def final_tensors(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step-{step:06d}" / "trainable.safetensors"))


def assert_same_run(one: Path, two: Path, steps: int) -> None:
    """Equal losses per step and equal trainable weights at the end."""
    a, b = train_events(one), train_events(two)
    assert [e["step"] for e in a] == [e["step"] for e in b] == list(range(1, steps + 1))
    for x, y in zip(a, b):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5), (x["step"], x["loss"], y["loss"])
        assert y["labelled_tokens"] == x["labelled_tokens"]
    wa, wb = final_tensors(one, steps), final_tensors(two, steps)
    assert wa.keys() == wb.keys() and wa
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert worst < 1e-5, worst
    moved = max(float((wa[k] - final_tensors(one, steps // 2)[k]).abs().max()) for k in wa)
    assert moved > 100 * max(worst, 1e-7)  # the weights did change: equality is not trivial


# ---------------------------------------------------------------- the sharding arithmetic (no processes)


def test_shares_cover_the_step_once_and_passes_are_equal_on_every_rank():
    items = list(range(7))
    for size in (1, 2, 3, 4):
        shares = [share(items, World(rank, size, "ddp")) for rank in range(size)]
        assert sum(shares, []) == items  # contiguous, in order, every sequence once
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
        for micro in (1, 2, 3):
            passes = [micro_batches(items, World(rank, size, "ddp"), micro) for rank in range(size)]
            assert len({len(p) for p in passes}) == 1  # FSDP's gathers need the same count everywhere
            for rank, rank_passes in enumerate(passes):
                real = [x for batch, weight in rank_passes if weight for x in batch]
                assert real == shares[rank]
                assert all(len(batch) <= micro for batch, _ in rank_passes)
                assert all(batch == items[:1] for batch, weight in rank_passes if not weight)
    # 3 sequences on 4 ranks: the last rank has none and runs one zero-weighted pass
    assert micro_batches([0, 1, 2], World(3, 4, "ddp"), 2) == [([0], 0.0)]


def test_strategy_problems_are_named_together(monkeypatch):
    check_strategy(DistributedConfig(strategy="deepspeed"), True, True)  # one process: nothing to check
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError) as err:
        check_strategy(DistributedConfig(strategy="fsdp"), True, True, max_minutes=5)
    message = str(err.value)
    assert "4-bit" in message and "forgetting.ewc" in message
    assert "train.max_minutes" in message
    with pytest.raises(ConfigError, match="deepspeed is not available yet"):
        check_strategy(DistributedConfig(strategy="deepspeed"), False, False)
    check_strategy(DistributedConfig(strategy="ddp"), True, True)


def test_processes_must_be_positive(tiny_config, tmp_path):
    from transferkit.cli import main

    config = write_config(tiny_config(), tmp_path / "c.yaml")
    assert main(["train", "--processes", "0", str(config)]) == 2


def test_a_refused_strategy_is_one_line_and_exit_code_2_through_the_launcher(tiny_config, tmp_path):
    run = tmp_path / "run"
    config = write_config(tiny_config("distributed.strategy=deepspeed", f"output_dir={run}"), tmp_path / "ds.yaml")
    done = launch("--processes", "2", str(config))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "error: config key 'distributed.strategy': deepspeed is not available yet" in done.stderr
    assert "Traceback" not in done.stderr
    assert not run.exists()  # refused before anything was written


# ---------------------------------------------------------------- 2 processes == 1 process


@pytest.mark.parametrize("method,strategy", [("lora", "ddp"), ("lora", "fsdp"), ("full", "ddp"), ("full", "fsdp")])
def test_two_processes_train_what_one_does(tiny_config, tmp_path, method, strategy):
    from transferkit.api import train
    from transferkit.config import with_method

    def make(*overrides: str):
        cfg = tiny_config("eval.baseline=false", "forgetting.reference=none", "eval.max_new_tokens=4", *overrides)
        return with_method(cfg, "full", {"train.lr": 1e-3}) if method == "full" else cfg

    train(make("train.micro_batch_size=4", f"output_dir={tmp_path / 'one'}"))
    two_cfg = make("train.micro_batch_size=2", f"distributed.strategy={strategy}", f"output_dir={tmp_path / 'two'}")
    done = launch("--processes", "2", str(write_config(two_cfg, tmp_path / "two.yaml")))
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(tmp_path / "one", tmp_path / "two", 6)
    one, two = (json.loads((tmp_path / r / "summary.json").read_text()) for r in ("one", "two"))
    assert one["distributed"] == {"world_size": 1, "strategy": "none"}
    assert two["distributed"] == {"world_size": 2, "strategy": strategy}
    assert two["test"]["loss"] == pytest.approx(one["test"]["loss"], rel=1e-5)
    assert two["selection"]["chosen_step"] == one["selection"]["chosen_step"]
    # written once: one line per event; the adapter holds the whole trained tensors (not a rank's empty shard)
    assert [e["step"] for e in train_events(tmp_path / "two")] == list(range(1, 7))
    weights = "adapter_model.safetensors" if method == "lora" else "trainable.safetensors"
    saved_one, saved_two = (load_file(str(tmp_path / r / "adapter" / weights)) for r in ("one", "two"))
    assert saved_one.keys() == saved_two.keys() and saved_one
    for name, tensor in saved_one.items():
        assert saved_two[name].shape == tensor.shape
        assert torch.allclose(saved_two[name], tensor, atol=1e-5), name
    assert (tmp_path / "two" / "report.html").is_file()


def test_two_machines_on_one_host_train_what_one_process_does(tiny_config, tmp_path):
    """docs/distributed.md's two-machine commands, both machines on this host (one process each, rank 0's address
    127.0.0.1): the same run as one process."""
    from transferkit.api import train
    from transferkit.cli import free_port

    overrides = ("eval.baseline=false", "forgetting.reference=none", "eval.max_new_tokens=4")
    train(tiny_config(*overrides, "train.micro_batch_size=4", f"output_dir={tmp_path / 'one'}"))
    config = write_config(tiny_config(*overrides, "train.micro_batch_size=2", f"output_dir={tmp_path / 'two'}"),
                          tmp_path / "two.yaml")
    port = free_port()
    machines = [subprocess.Popen([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines",
                                  "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
                                  "--main_process_port", str(port), "--num_processes", "2", "--mixed_precision", "no",
                                  "--dynamo_backend", "no", "-m", "transferkit", "train", str(config)],
                                 cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                for rank in (0, 1)]
    for machine in machines:
        _, err = machine.communicate(timeout=300)
        assert machine.returncode == 0, err[-3000:]
    assert_same_run(tmp_path / "one", tmp_path / "two", 6)
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["distributed"]["world_size"] == 2


# ---------------------------------------------------------------- the global step's label count


def test_labels_are_normalised_over_the_global_step(tiny_model_dir, tmp_path):
    """Rank 0 gets the two long answers, rank 1 the two short ones: averaging per-rank means would weigh a short
    answer's tokens ~10× more. The 2-process gradient norm is the 1-process one and not the per-rank one."""
    from transferkit.api import train
    from transferkit.config import load_config
    from transferkit.objectives import OBJECTIVES
    from transferkit.rundir import RunDir
    from transferkit.train import checkpoint as ckpt
    from transferkit.train.setup import setup

    long = "the quick brown fox jumps over the lazy dog " * 4
    rows = [{"instruction": "Repeat the sentence.", "output": long.strip()},
            {"instruction": "Repeat the sentence twice.", "output": (long + long).strip()},
            {"instruction": "Say yes.", "output": "yes"}, {"instruction": "Say no.", "output": "no"}]
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    base = {"model": str(tiny_model_dir), "data": {"train": str(data), "validation_fraction": 0},
            "method": {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
            "train": {"max_steps": 1, "batch_size": 4, "micro_batch_size": 4, "lr": 1e-2, "log_every": 1,
                      "precision": "fp32"},
            "eval": {"baseline": False}, "forgetting": {"reference": "none"}, "output_dir": str(tmp_path / "one")}
    cfg = load_config(None, [], base=base)
    train(cfg)
    two = load_config(None, ["train.micro_batch_size=2", f"output_dir={tmp_path / 'two'}"], base=base)
    done = launch("--processes", "2", str(write_config(two, tmp_path / "two.yaml")))
    assert done.returncode == 0, done.stderr[-3000:]
    (norm_one,), (norm_two,) = ([e["grad_norm"] for e in train_events(tmp_path / r)] for r in ("one", "two"))
    assert norm_two == pytest.approx(norm_one, rel=1e-5)

    # By hand, on the same initial model: the rank shares' gradients, normalised globally and per rank.
    session = setup(load_config(None, [f"output_dir={tmp_path / 'hand'}"], base=base), RunDir(tmp_path / "hand"))
    items, _ = session.batches.next(ckpt.TrainState(0, 0, 0))
    shares = [share(items, World(rank, 2, "ddp")) for rank in range(2)]
    counts = [sum(t.num_labels for t in s) for s in shares]
    assert counts[0] > 8 * counts[1]
    params = [p for p in session.parts.model.parameters() if p.requires_grad]
    grads = []
    for rank_items in shares:
        batch = session.parts.objective.collate(rank_items, session.parts.pad_id, "cpu")
        loss_sum, _, _ = OBJECTIVES["causal-lm"].loss_sum(session.parts.model, batch)
        grads.append(torch.autograd.grad(loss_sum, params))
    global_norm = torch.cat([((a + b) / sum(counts)).flatten() for a, b in zip(*grads)]).norm()
    per_rank = torch.cat([((a / counts[0] + b / counts[1]) / 2).flatten() for a, b in zip(*grads)]).norm()
    assert norm_one == pytest.approx(float(global_norm), rel=1e-4)
    # The per-rank normalisation would give a norm 5 % away (measured): 5,000 × the tolerance above.
    assert abs(float(per_rank) - norm_two) > 0.02 * norm_two


# ---------------------------------------------------------------- a rank stopped or killed, then resumed


def rank_pids(launcher: subprocess.Popen) -> dict[int, int]:
    """{rank: pid} of the launched training processes."""
    found = {}
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            env = child.environ()
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            continue
        if "RANK" in env and "transferkit" in " ".join(child.cmdline()):
            found[int(env["RANK"])] = child.pid
    return found


def start_and_signal(config: Path, run: Path, signum: int, after_step: int) -> int:
    """Launch 2 processes, send `signum` to rank 1 once `after_step` steps are logged; the launcher's exit code."""
    launcher = subprocess.Popen([sys.executable, "-m", "transferkit", "train", "--processes", "2", str(config)],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while launcher.poll() is None and time.time() < deadline and len(train_events(run)) < after_step:
        time.sleep(0.05)
    pids = rank_pids(launcher)
    assert launcher.poll() is None and 1 in pids, "the run ended before the signal"
    os.kill(pids[1], signum)
    return launcher.wait(timeout=120)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_rank_stopped_mid_run_resumes_on_two_processes_and_on_one(tiny_config, tmp_path, signum):
    from transferkit.api import train

    steps = 40
    overrides = ["eval.baseline=false", "forgetting.reference=none", "data.validation=null", "data.test=null",
                 "data.validation_fraction=0", f"train.max_steps={steps}", "train.save_every=1",
                 "train.micro_batch_size=2"]
    train(tiny_config(*overrides, f"output_dir={tmp_path / 'straight'}"))
    run = tmp_path / "run"
    config = write_config(tiny_config(*overrides, f"output_dir={run}"), tmp_path / "run.yaml")
    code = start_and_signal(config, run, signum, after_step=3)
    assert code == 128 + signum
    assert not (run / "summary.json").exists()
    assert not [p for p in (run / "checkpoints").iterdir() if not p.name.startswith("step-")]
    stopped_at = max(int(p.name.split("-")[1]) for p in (run / "checkpoints").iterdir())
    assert 3 <= stopped_at < steps
    if signum == signal.SIGTERM:  # both ranks agreed to stop after the same step, which was checkpointed
        assert [e["step"] for e in train_events(run)] == list(range(1, stopped_at + 1))
    on_one = tmp_path / "on-one"
    shutil.copytree(run, on_one)
    resumed = launch("--resume", str(run), "--processes", "2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    resumed = launch("--resume", str(on_one))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for finished in (run, on_one):
        assert [e["step"] for e in train_events(finished)] == list(range(1, steps + 1))
        summary = json.loads((finished / "summary.json").read_text())
        assert summary["resumed_from_step"] == stopped_at
        straight, got = final_tensors(tmp_path / "straight", steps), final_tensors(finished, steps)
        assert max(float((straight[k] - got[k]).abs().max()) for k in straight) < 1e-5
    assert json.loads((on_one / "summary.json").read_text())["distributed"]["world_size"] == 1
    assert json.loads((run / "summary.json").read_text())["distributed"]["world_size"] == 2


# ---------------------------------------------------------------- what `transferkit cost` charges one rank


@pytest.mark.parametrize("method", ["lora", "full"])
def test_cost_per_rank_under_ddp_and_fsdp(tiny_config, method):
    """Each rank running the same passes as one process (batch 8 on 2 ranks = batch 4 on 1, micro-batch 2): DDP
    adds its gradient buckets; FSDP divides weights, gradients and optimizer state by 2 and adds the root and two
    blocks gathered — sizes read here from the loaded model's own modules."""
    from transferkit.config import with_method
    from transferkit.cost import custom_hardware, estimate
    from transferkit.methods import get_method
    from transferkit.models import load_model

    hardware = custom_hardware(memory_gb=64, tflops=1, price_per_hour=0, mfu=0.5, device="cpu")
    cfg = tiny_config("train.micro_batch_size=2")
    cfg = with_method(cfg, "full") if method == "full" else cfg
    one = estimate(with_overrides(cfg, ["train.batch_size=4"]), hardware)
    ddp = estimate(with_overrides(cfg, ["train.batch_size=8"]), hardware, processes=2)
    fsdp = estimate(with_overrides(cfg, ["train.batch_size=8", "distributed.strategy=fsdp"]), hardware, processes=2)
    model, _, _ = load_model(cfg.model, task="causal-lm")
    model = get_method(cfg.method.name).apply(model, cfg.method, "causal-lm")
    trainable = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    layers = [sum(p.numel() * 4 for p in layer.parameters()) for layer in model.get_decoder().layers]
    weights = one.memory["weights"]
    assert ddp.memory["gradients"] == one.memory["gradients"] + trainable
    assert {k: ddp.memory[k] for k in ("weights", "optimizer", "activations", "logits")} == \
        {k: one.memory[k] for k in ("weights", "optimizer", "activations", "logits")}
    assert fsdp.memory["weights"] == weights // 2 + (weights - sum(layers)) + 2 * max(layers)
    assert fsdp.memory["gradients"] == one.memory["gradients"] // 2
    assert fsdp.memory["optimizer"] == one.memory["optimizer"] // 2
    vocab = model.get_output_embeddings().weight.shape[0]
    assert fsdp.memory["logits"] == one.memory["logits"] + 8 * 2 * one.workload.longest * vocab
    assert fsdp.seconds_per_step == pytest.approx(one.seconds_per_step)  # each rank runs what one process ran
    assert (one.processes, ddp.strategy, fsdp.strategy) == (1, "ddp", "fsdp")
