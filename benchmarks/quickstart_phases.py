"""Where the quickstart's time goes: runs `transferkit train recipes/quickstart.yaml` as a new user does (a
fresh process; the converted model already in the cache, as after the first run) and prints the wall time of
each phase from the run's summary, against the 3-minute target, with the test metrics the time bought.

    .venv/bin/python benchmarks/quickstart_phases.py [--out runs/quickstart-bench]

Phases (summary.json "timings_s"): load (data, tokenizer, model), baseline (zero- and 4-shot answers of the
untrained model), general_base (its perplexity on the general-English reference), train (the optimizer steps,
with validation and checkpoints), evaluate (validation and test, greedy answers), general_tuned (the tuned
model on the reference); process start-up and imports are the difference to the process's wall time.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 180.0


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "quickstart-bench")
    args = parser.parse_args()
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
    test, baseline = summary["test"], summary["baseline"]
    print(f"\ntest: JSON field accuracy {test['json_field_accuracy']:.2%}, exact match {test['exact_match']:.2%}; "
          f"baseline zero-shot {baseline['zero_shot']['json_field_accuracy']:.2%}, "
          f"4-shot {baseline['4_shot']['json_field_accuracy']:.2%}; forgetting "
          f"{summary['forgetting']['forgetting']:+.2%} on {summary['general']['base'].get('text', 'general text')}")
    print(json.dumps({"wall_s": wall, "phases_s": phases, "target_s": TARGET_S}))


if __name__ == "__main__":
    main()
