"""What glibc's allocator adds to a CPU run's peak, and what returning freed memory at once would cost in time.

    .venv/bin/python benchmarks/cpu_allocator.py [--shapes minilm-l6:full:256x4 smollm2-135m:lora:256x4 ...]
                                                 [--thresholds 131072 4194304] [--steps 8]
                                                 [--precision fp32|bf16|auto] [--out FILE]

On CPU a run's resident set holds more than its live tensors (`transferkit cost`'s `allocator` term). glibc
serves a request above its mmap threshold with a fresh mapping, returned to the system when freed, and smaller
ones from its heap, which keeps freed memory resident for reuse; the threshold starts at 128 KiB and rises, up
to 32 MiB, to the size of each mapped block that is freed — so which tensors stay resident after they are freed
depends on the order of earlier frees. `MALLOC_MMAP_THRESHOLD_` fixes it (and stops it moving).

Each row runs `transferkit cost CONFIG --calibrate STEPS --json` (as `cost_accuracy.py` does: its own process,
evaluation off) once with glibc's default and once per fixed threshold, and prints the measured peak, the peak
after each step, the mean step, and both as ratios to the default's. glibc only (Linux); elsewhere the variable
does nothing and the ratios are 1.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from cost_accuracy import TENSOR_KINDS, measure, write, write_data

DEFAULT_SHAPES = ["minilm-l6:full:256x4", "smollm2-135m:lora:256x4", "smollm2-135m:full:256x1"]


def parse_shape(text: str) -> tuple[str, str, int, int]:
    model, method, shape = text.split(":")
    length, micro = shape.split("x")
    return model, method, int(length), int(micro)


def child_env(threshold: str | None) -> dict[str, str]:
    """This process's environment with MALLOC_MMAP_THRESHOLD_ fixed at `threshold` (None: glibc's default)."""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    return env if threshold is None else {**env, "MALLOC_MMAP_THRESHOLD_": threshold}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, help="MODEL:METHOD:LENGTHxMICRO")
    parser.add_argument("--thresholds", nargs="+", default=["131072"], help="fixed MALLOC_MMAP_THRESHOLD_ values")
    parser.add_argument("--steps", type=int, default=8, help="measured steps per row (after one warm-up step)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"],
                        help="the rows' train.precision (bf16: autocast, frozen weights stored in bf16)")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="tk-alloc-") as tmp:
        folder = Path(tmp)
        for model, method, length, micro in map(parse_shape, args.shapes):
            data = write_data(folder, model, length, 2 * (args.steps + 2) * micro)
            default = None
            for threshold in [None, *args.thresholds]:
                row = measure(model, method, data, length, micro, args.steps, folder, precision=args.precision,
                              env=child_env(threshold))
                if "error" in row:
                    print(f"{model} {method} {length}x{micro} threshold {threshold or 'default'}: {row['error']}")
                    continue
                row["mmap_threshold"] = threshold or "default"
                row["tensors_bytes"] = sum(v for k, v in row["memory_bytes"].items() if k in TENSOR_KINDS)
                default = default or row
                print(f"{model} {method} {length}x{micro} {row['precision']} threshold {row['mmap_threshold']}: peak "
                      f"{row['measured_bytes'] / 2**20:,.0f} MiB "
                      f"(× {row['measured_bytes'] / default['measured_bytes']:.2f}; "
                      f"replayed tensors {row['tensors_bytes'] / 2**20:,.0f}, predicted "
                      f"{row['predicted_bytes'] / 2**20:,.0f}), after each step "
                      f"{[round(p / 2**20) for p in row['step_peak_bytes']]}; step {row['measured_s']:.2f} s "
                      f"(× {row['measured_s'] / default['measured_s']:.2f})", flush=True)
                rows.append(row)
                if args.out:
                    write(args.out, {"rows": rows})


if __name__ == "__main__":
    main()
