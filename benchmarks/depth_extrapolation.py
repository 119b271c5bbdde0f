"""How close the calculator's depth extrapolation comes to replaying every layer, and what each costs.

    .venv/bin/python benchmarks/depth_extrapolation.py [--model smollm2-135m] [--method full]
                                                       [--shape 4x112x37] [--precision bf16]

`transferkit cost` replays one optimizer step on fake tensors for a 2- and a 3-layer model and grows each phase's
peak to the full depth (`estimate.deepen`). The reference is the same step replayed at the full depth, in the same
run. Printed: the peak of each extrapolation as a ratio of the direct replay (phase by phase from 2 and 3 layers,
what the package does; kind by kind from 2 and 3, and from 1 and 2, what it did before), and the seconds of the
replays each needs. SHAPE is MICROxTOKENSxLABELLED: one micro-batch of the longest sequence and its labelled
tokens.
"""

from __future__ import annotations

import argparse
import time

import torch

from transferkit.config import load_config, with_method_defaults
from transferkit.cost.estimate import Workload, deepen, replay
from transferkit.cost.simulate import KINDS
from transferkit.models import skeleton_model
from transferkit.runtime import Runtime


def kind_by_kind(low, high, depth: int, from_depth: int) -> int:
    return sum(low.peak[k] + (depth - from_depth) * (high.peak[k] - low.peak[k]) for k in KINDS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--method", default="full")
    parser.add_argument("--shape", default="4x112x37", help="MICROxTOKENSxLABELLED")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    args = parser.parse_args()
    micro, tokens, labelled = (int(n) for n in args.shape.split("x"))
    cfg = load_config(None, [f"model={args.model}", "data.train=unread.jsonl", f"method.name={args.method}"])
    cfg = with_method_defaults(cfg, "instruction")
    work = Workload(micro, 1, tokens, labelled, float(tokens), 2, 2, "benchmark")
    runtime = Runtime(torch.device("cpu"), args.precision)
    depth = skeleton_model(args.model).config.num_hidden_layers
    replay(cfg, "causal-lm", None, work, runtime, "eager", 1)  # warm-up: imports, kernels
    traces, seconds = {}, {}
    for layers in (1, 2, 3, depth):
        start = time.perf_counter()
        traces[layers] = replay(cfg, "causal-lm", None, work, runtime, "eager", layers)
        seconds[layers] = time.perf_counter() - start
    direct = sum(traces[depth].peak.values())
    rows = [("direct replay of all layers (reference)", direct, seconds[depth]),
            ("phase by phase from 2 and 3 layers (deepen)", sum(deepen(traces[2], traces[3], depth).values()),
             seconds[2] + seconds[3]),
            ("kind by kind from 2 and 3 layers", kind_by_kind(traces[2], traces[3], depth, 2), seconds[2] + seconds[3]),
            ("kind by kind from 1 and 2 layers", kind_by_kind(traces[1], traces[2], depth, 1), seconds[1] + seconds[2])]
    print(f"{args.model} {args.method} {args.shape} {args.precision}, {depth} layers")
    for name, peak, took in rows:
        print(f"  {name:45s} {peak / 2**20:9,.0f} MiB  × {peak / direct:.3f}  replays {took:.1f} s")


if __name__ == "__main__":
    main()
