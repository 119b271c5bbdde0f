"""What importing a method's libraries adds to a CPU process's resident memory (`transferkit cost`'s LIBRARY_BYTES).

    .venv/bin/python benchmarks/import_memory.py [--libraries peft bitsandbytes] [--repeats 5]

A method built on peft (LoRA and its variants, IA3, prefix and prompt tuning) imports it when it is applied, after
torch and transformers are loaded; its modules and what they import stay resident for the whole run, so a run's
peak holds them beside the live tensors, and a method that does not import them (full fine-tuning, freeze, the
probe, bottleneck adapters) does not. Each repeat is a fresh process that imports torch, transformers and a model
class (what every run has loaded before a method is applied), reads its resident set (VmRSS), imports the
libraries one by one in the order given and reads it after each. The reference is the same process before the
import: printed per library, the increase in each repeat, their median and their spread (largest ÷ smallest).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = """
import importlib, json, sys
import torch, transformers
from transformers import AutoModel, AutoModelForCausalLM  # the auto classes every load uses
import transformers.models.bert.modeling_bert, transformers.models.llama.modeling_llama

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

before, out = rss(), {}
for name in sys.argv[1:]:
    importlib.import_module(name)
    now = rss()
    out[name], before = now - before, now
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--libraries", nargs="+", default=["peft", "bitsandbytes"],
                        help="imported in this order: each row is what it adds after the ones before it")
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes")
    args = parser.parse_args()
    runs = [json.loads(subprocess.run([sys.executable, "-c", CHILD, *args.libraries], capture_output=True, text=True,
                                      check=True).stdout) for _ in range(args.repeats)]
    for name in args.libraries:
        grown = [run[name] for run in runs]
        spread = f"spread {max(grown) / min(grown):.2f}×" if min(grown) > 0 else "nothing in some repeat"
        print(f"import {name}: +{statistics.median(grown) / 2**20:,.1f} MiB resident (median of {len(grown)}; "
              f"{', '.join(f'{g / 2**20:.1f}' for g in grown)}; {spread}) = {statistics.median(grown):,.0f} B")


if __name__ == "__main__":
    main()
