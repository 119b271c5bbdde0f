"""What each training lever does to speed and memory, and where a step's time goes.

    .venv/bin/python benchmarks/levers.py              # every lever, then the profile (about 12 minutes on 2 cores)
    .venv/bin/python benchmarks/levers.py --profile    # the profile only

The setup of benchmarks/train_throughput.py (SmolLM2-135M, LoRA r=16 on q_proj/v_proj, one pass over 256
quickstart examples, batches of 8), trained by transferkit with its defaults and then with one setting changed
at a time, each in its own process: real tokens/s and peak RSS against the defaults. Then a profile of a few
default training steps (torch.profiler, self CPU time by operator group).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = ["model=smollm2-135m", "data.validation_fraction=0", "train.batch_size=8",
        "train.lr=1e-3", "train.eval_every=0", "train.save_every=0", "train.log_every=10", "eval.baseline=false",
        "eval.exact_match=false", "forgetting.reference=none",
        "method={name: lora, r: 16, alpha: 32, target_modules: [q_proj, v_proj]}"]
LEVERS = {
    "defaults": [],
    "fp32 (no bf16 autocast)": ["train.precision=fp32"],
    "frozen weights kept in fp32": ["train.frozen_bf16=false"],
    "SDPA attention in training": ["train.attention=sdpa"],
    "LoRA dropout 0.05": ["method={name: lora, r: 16, alpha: 32, dropout: 0.05, target_modules: [q_proj, v_proj]}"],
    "micro-batch 8 (no accumulation)": ["train.micro_batch_size=8"],
    "gradient checkpointing": ["train.gradient_checkpointing=true"],
    "packing into 1,024-token rows": ["train.pack_tokens=1024"],
    "batch 16 (half the steps)": ["train.batch_size=16"],
}
GROUPS = {"matmul": ("mm", "addmm", "bmm", "matmul", "linear", "baddbmm"),
          "attention softmax and masking": ("softmax", "_softmax", "masked_fill", "where"),
          "norms and activations": ("rsqrt", "pow", "mean", "silu", "sigmoid", "mul", "add", "div", "neg", "cat"),
          "casts and copies": ("to", "_to_copy", "copy_", "clone", "contiguous"),
          "embedding and loss": ("embedding", "cross_entropy", "log_softmax", "nll_loss", "index")}


def train_once(overrides: list[str], out: Path) -> None:
    from transferkit import load_config, train

    data = tempfile.mkdtemp(prefix="tk-levers-")
    train_file = Path(data) / "train.jsonl"
    train_file.write_text("".join((ROOT / "data/quickstart/train.jsonl").read_text().splitlines(keepends=True)[:256]))
    summary = train(load_config(None, BASE + ["train.epochs=1", f"data.train={train_file}",
                                              f"output_dir={Path(data) / 'run'}"] + overrides), overwrite=True)
    out.write_text(json.dumps({k: summary[k] for k in ("tokens_per_s", "peak_memory_bytes", "train_loss")}))


def profile(steps: int = 6) -> dict[str, float]:
    """Share of self CPU time by operator group over `steps` default training steps (after one warm-up step)."""
    import dataclasses

    import torch

    from transferkit import load_config
    from transferkit.rundir import RunDir
    from transferkit.train.loop import fit
    from transferkit.train.setup import setup
    from transferkit.train.signals import StopRequest

    data = Path(tempfile.mkdtemp(prefix="tk-profile-"))
    (data / "train.jsonl").write_text((ROOT / "data/quickstart/train.jsonl").read_text())
    cfg = load_config(None, BASE + [f"train.max_steps={steps + 1}", f"data.train={data / 'train.jsonl'}",
                                    f"output_dir={data / 'run'}"])
    session = setup(cfg, RunDir(cfg.output_dir))
    plan = session.plan
    with StopRequest() as stop:
        warm = dataclasses.replace(plan, steps=1)
        fit(session.parts, session.batches, warm, session.run, session.state, cfg.train, None, stop)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            fit(session.parts, session.batches, plan, session.run, session.state, cfg.train, None, stop)
    shares: dict[str, float] = defaultdict(float)
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in events)
    for e in events:
        op = e.key.removeprefix("aten::")
        group = next((g for g, ops in GROUPS.items() if op in ops), "other")
        shares[group] += e.self_cpu_time_total / total
    return dict(sorted(shares.items(), key=lambda kv: -kv[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", action="store_true", help="only the profile")
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run is not None:
        train_once(LEVERS[args.run], args.out)
        return
    if not args.profile:
        work = Path(tempfile.mkdtemp(prefix="tk-levers-"))
        results = {}
        for name in LEVERS:
            print(f"running: {name} ...", flush=True)
            out = work / f"{len(results)}.json"
            subprocess.run([sys.executable, __file__, "--run", name, "--out", str(out)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            results[name] = json.loads(out.read_text())
        base = results["defaults"]
        print(f"\n{'lever':34} {'tokens/s':>9} {'vs default':>10} {'peak GB':>8} {'vs default':>10} {'final loss':>10}")
        for name, r in results.items():
            print(f"{name:34} {r['tokens_per_s']:9.1f} {r['tokens_per_s'] / base['tokens_per_s'] - 1:+10.1%} "
                  f"{r['peak_memory_bytes'] / 1e9:8.2f} {r['peak_memory_bytes'] / base['peak_memory_bytes'] - 1:+10.1%} "
                  f"{r['train_loss']['final']:10.4f}")
    print("\nprofile of 6 default training steps, self CPU time by operator group:")
    for group, share in profile().items():
        print(f"  {group:32} {share:6.1%}")


if __name__ == "__main__":
    main()
