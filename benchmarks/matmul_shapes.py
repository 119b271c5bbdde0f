"""Does the CPU's matmul probe (`hardware.measure_cpu`: a 1024² square matmul) run at the rate of the matmuls a
training step runs? Times, in one process, the probe and the linear layers' matmuls of each packaged model at
the accuracy table's largest shape (forward, and backward's input and weight gradients), in the precision
`auto` trains in here, and prints each one's rate ÷ the probe's.

    .venv/bin/python benchmarks/matmul_shapes.py                  # 4 × 256 tokens, both packaged models
    .venv/bin/python benchmarks/matmul_shapes.py --tokens 64      # 1 × 64

The shapes come from each model's config (hidden, intermediate and vocabulary sizes; every linear of a block
and the LM head for SmolLM2, every linear of a block for MiniLM), not from a replay. A rate here is the median
of `--repeats` timed calls after one untimed call, each call repeated until it takes ≥ 20 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from transferkit.models.loading import resolve_model
from transferkit.runtime import bf16_supported


def shapes(model: str) -> dict[str, tuple[int, int]]:
    """{layer: (in features, out features)} of one block's linears (and the LM head) of a packaged model."""
    config = json.loads((resolve_model(model) / "config.json").read_text())
    hidden, inner = config["hidden_size"], config["intermediate_size"]
    heads, kv = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    out = {"query/output": (hidden, hidden), "key/value": (hidden, hidden // heads * kv),
           "up": (hidden, inner), "down": (inner, hidden)}
    if "vocab_size" in config and config.get("model_type") != "bert":
        out["head"] = (hidden, config["vocab_size"])
    return out


def rate(m: int, k: int, n: int, dtype: torch.dtype, repeats: int) -> float:
    """FLOP/s of [m, k] @ [k, n]: the median of `repeats` timings, each of enough calls to take ≥ 20 ms."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    a @ b
    calls = max(1, int(0.02 / max(time_once(a, b), 1e-6)))
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            a @ b
        timings.append((time.perf_counter() - started) / calls)
    return 2 * m * k * n / statistics.median(timings)


def time_once(a: torch.Tensor, b: torch.Tensor) -> float:
    started = time.perf_counter()
    a @ b
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "minilm-l6"])
    parser.add_argument("--tokens", type=int, default=1024, help="rows of the activations: micro-batch × length")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    dtype = torch.bfloat16 if bf16_supported(torch.device("cpu")) else torch.float32
    probe = rate(1024, 1024, 1024, dtype, args.repeats)
    print(f"probe 1024² {str(dtype).removeprefix('torch.')}: {probe / 1e9:,.0f} GFLOP/s "
          f"({torch.get_num_threads()} threads)")
    print("| model | layer | matmul | m × k × n | GFLOP/s | ÷ probe |")
    print("|---|---|---|---|---|---|")
    for model in args.models:
        flops = seconds = 0.0
        for layer, (fan_in, fan_out) in shapes(model).items():
            t = args.tokens
            for which, (m, k, n) in {"forward": (t, fan_in, fan_out), "input gradient": (t, fan_out, fan_in),
                                     "weight gradient": (fan_out, t, fan_in)}.items():
                r = rate(m, k, n, dtype, args.repeats)
                flops, seconds = flops + 2 * m * k * n, seconds + 2 * m * k * n / r
                print(f"| {model} | {layer} | {which} | {m} × {k} × {n} | {r / 1e9:,.0f} | {r / probe:.2f} |")
        print(f"| {model} | all, FLOP-weighted | | | {flops / seconds / 1e9:,.0f} | {flops / seconds / probe:.2f} |")


if __name__ == "__main__":
    main()
