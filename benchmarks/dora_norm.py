"""DoRA's column norm: transferkit's (`methods/dora.py`, [d, r] and [r, r] products) against peft's own layer
(B·A through an identity matrix, W + s·BA: d × k temporaries), like for like.

    .venv/bin/python benchmarks/dora_norm.py [--shapes smollm2-135m:64x1 ...] [--steps 4] [--repeats 3]
                                             [--precision bf16] [--out FILE]

Each shape is the row `cost_accuracy.py` measures (the same data, config and DoRA rank and targets), trained
for STEPS + 1 optimizer steps in its own process by the calibration's measuring run (`transferkit cost
--calibrate`'s `measure_steps`: evaluation off, the first step a warm-up): once as transferkit trains it, once
with peft's DoRA layer kept (this script's `--child peft`, which makes `lean_dora` a no-op before training; the
only difference). The two alternate, `--repeats` times, so that a slow spell of the machine falls on both.
Printed per shape: the medians over the repeats of the training phase's peak over the process before the model
(RSS on CPU; both sides' processes hold peft by then, so the peaks are lower than `cost_accuracy.py`'s by what
importing it leaves resident) and of the mean step after the warm-up, for each side, and transferkit ÷ peft;
the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from cost_accuracy import TASKS, write, write_config, write_data

DEFAULT_SHAPES = ["smollm2-135m:64x1", "smollm2-135m:64x4", "smollm2-135m:256x1", "minilm-l6:64x1",
                  "minilm-l6:64x4"]
SIDES = ("transferkit", "peft")


def child(side: str, config: str) -> int:
    """`transferkit train CONFIG`, with peft's DoRA layer kept when `side` is "peft". Both sides import the
    DoRA module (and so peft) before the run measures its baseline, so that their peaks are over the same."""
    import transferkit.methods.dora as dora

    if side == "peft":
        dora.lean_dora = lambda model: model  # methods/lora.py looks it up at every apply and load
    from transferkit.cli import main

    return main(["train", config])


def parse_shape(text: str) -> tuple[str, int, int]:
    model, shape = text.split(":")
    length, micro = shape.split("x")
    return model, int(length), int(micro)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, help="MODEL:LENGTHxMICRO")
    parser.add_argument("--steps", type=int, default=4, help="measured steps per process (after one warm-up)")
    parser.add_argument("--repeats", type=int, default=3, help="processes per side and shape, alternating")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "auto"])
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    parser.add_argument("--child", nargs=2, metavar=("SIDE", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.exit(child(*args.child))

    from tqdm import tqdm

    from transferkit.config import load_config
    from transferkit.cost.calibrate import measure_steps

    unknown = sorted({model for model, _, _ in map(parse_shape, args.shapes)} - set(TASKS))
    if unknown:
        parser.error(f"{', '.join(unknown)}: not one of {', '.join(TASKS)}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="tk-dora-") as tmp:
        folder = Path(tmp)
        plan = [(shape, number, side) for shape in map(parse_shape, args.shapes) for number in range(args.repeats)
                for side in SIDES]
        data = {}
        for (model, length, micro), number, side in tqdm(plan, desc="processes", unit="process"):
            if (model, length) not in data:
                data[model, length] = write_data(folder, model, length, 2 * (args.steps + 2) * micro)
            cfg = load_config(write_config(model, "dora", data[model, length], length, micro, folder, args.precision))
            command = [sys.executable, str(Path(__file__).resolve()), "--child", side]
            measured = measure_steps(cfg, args.steps, f"dora_norm {side}", command)
            rows.append({"model": model, "length": length, "micro": micro, "side": side, "repeat": number,
                         "peak_bytes": measured.peak_bytes, "step_seconds": measured.step_seconds})
    summary = []
    print("| model | length | micro | peak MiB transferkit | peak MiB peft | ratio | step s transferkit | step s peft "
          "| ratio |\n|---|---|---|---|---|---|---|---|---|")
    for model, length, micro in map(parse_shape, args.shapes):
        mine = [r for r in rows if (r["model"], r["length"], r["micro"]) == (model, length, micro)]
        peak = {s: statistics.median(r["peak_bytes"] for r in mine if r["side"] == s) for s in SIDES}
        step = {s: statistics.median(statistics.fmean(r["step_seconds"]) for r in mine if r["side"] == s)
                for s in SIDES}
        summary.append({"model": model, "length": length, "micro": micro, "peak_bytes": peak, "step_seconds": step,
                        "peak_ratio": peak["transferkit"] / peak["peft"],
                        "step_ratio": step["transferkit"] / step["peft"]})
        print(f"| {model} | {length} | {micro} | {peak['transferkit'] / 2**20:,.0f} | {peak['peft'] / 2**20:,.0f} | "
              f"{summary[-1]['peak_ratio']:.2f} | {step['transferkit']:.3f} | {step['peft']:.3f} | "
              f"{summary[-1]['step_ratio']:.2f} |")
    print(json.dumps(summary))
    if args.out:
        write(args.out, {"summary": summary, "rows": rows})


if __name__ == "__main__":
    main()
