"""The quickstart's figures and where its time goes: runs `transferkit train recipes/quickstart.yaml` as a new
user does (a fresh process; the converted model already in the cache, as after the first run) and prints every
figure the README's quickstart section quotes, then the wall time of each phase against the 3-minute target.

    .venv/bin/python benchmarks/quickstart_phases.py [--out runs/quickstart-bench]

Phases (summary.json "timings_s"): load (data, tokenizer, model), baseline (zero- and 4-shot answers of the
untrained model), general_base (its perplexity on the general-English reference), train (the optimizer steps,
with validation and checkpoints), evaluate (validation and test, greedy answers), general_tuned (the tuned
model on the reference); process start-up and imports are the difference to the process's wall time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from train_throughput import matmul_peak_flops  # benchmarks/ is on sys.path when run as a script

from transferkit.runtime import cpu_name

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 180.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "quickstart-bench")
    args = parser.parse_args()
    conversion = first_conversion_seconds()
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "transferkit", "train", "recipes/quickstart.yaml", f"output_dir={args.out}",
                    "--overwrite"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    summary = json.loads((args.out / "summary.json").read_text())
    phases = dict(summary["timings_s"])
    phases["start-up, imports, writing"] = wall - sum(phases.values())
    print(f"quickstart on {cpu_name()}, {summary['device']}, {summary['precision']}, {date.today()}\n")
    print(f"{'phase':28} {'seconds':>8} {'share':>7}")
    for name, seconds in phases.items():
        print(f"{name:28} {seconds:8.1f} {seconds / wall:7.1%}")
    print(f"{'total (process wall time)':28} {wall:8.1f}   target <= {TARGET_S:.0f} s: "
          f"{'met' if wall <= TARGET_S else 'NOT met'}")
    print_figures(summary)
    print(f"a fresh machine first converts the packaged GGUF to a float checkpoint: {conversion:.1f} s, once")
    peak = matmul_peak_flops(summary["precision"])  # after the run: nothing else competes for the cores
    print(f"matmul peak here ({summary['precision']}, 2,048-square): {peak / 1e9:.0f} GFLOP/s")
    print(json.dumps({"wall_s": wall, "phases_s": phases, "target_s": TARGET_S, "first_conversion_s": conversion,
                      "matmul_peak_flops": peak}))


def first_conversion_seconds() -> float:
    """The one-off GGUF → float conversion of SmolLM2, timed into an empty cache folder (a fresh process)."""
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "from transferkit.models import resolve_model; "
                        "resolve_model('smollm2-135m')"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, "TRANSFERKIT_CACHE": cache})
        return time.perf_counter() - started


def print_figures(summary: dict) -> None:
    """The README's quickstart table and the sentences under it."""
    columns = {"base, zero-shot": summary["baseline"]["zero_shot"], "base, 4-shot prompt": summary["baseline"]["4_shot"],
               "after LoRA": summary["test"]}
    print(f"\n{'test split':32}" + "".join(f"{name:>22}" for name in columns))
    for key, label in (("json_field_accuracy", "JSON field accuracy"), ("exact_match", "exact match"),
                       ("json_valid", "valid JSON"), ("loss", "loss on the reference completions")):
        cells = [f"{m[key]:.1%}" if key != "loss" else f"{m[key]:.4f}" if key in m else "-" for m in columns.values()]
        print(f"{label:32}" + "".join(f"{c:>22}" for c in cells))
    c, f, p = summary["comparison"], summary["forgetting"], summary["params"]
    print(f"comparison: {c['metric']} {c['tuned']:.4f} vs the best baseline ({c['baseline_prompt']}) "
          f"{c['baseline']:.4f}, gain {c['gain']:+.4f}, beats_baseline {c['beats_baseline']}")
    print(f"forgetting: perplexity {f['base_perplexity']:.2f} -> {f['tuned_perplexity']:.2f} ({f['forgetting']:+.2%}) "
          f"on {summary['general']['base'].get('text', 'general text')}")
    print(f"trainable {p['trainable']:,} of {p['total']:,} parameters ({p['trainable_percent']:.2f} %); "
          f"{summary['train_tokens']:,} training tokens at {summary['tokens_per_s']:.0f} tokens/s; "
          f"peak RSS {summary['peak_memory_bytes'] / 1e9:.1f} GB")


if __name__ == "__main__":
    main()
