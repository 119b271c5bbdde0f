"""How far a merged model is from the run it came from, beside how far bf16 alone moves the base model.

    .venv/bin/python benchmarks/merge_fidelity.py RUN_DIR [RUN_DIR ...]

For each run, on `transferkit merge`'s own sample (up to 16 examples of the run's test file, teacher-forced), prints
max |Δlogit| and the share of equal greedy tokens of: the merged model in fp32 and in bf16 against the unmerged run
(what `merge` checks), and the base model cast to bf16 against itself in fp32 (the floor any bf16 model of that base
sits on). No folder is written. The tolerances in transferkit/ship/merge.py are read against these figures.
"""

from __future__ import annotations

import copy
import sys
import time

import torch

from transferkit.config import load_config
from transferkit.methods import get_method
from transferkit.models import load_model, task_of
from transferkit.rundir import RunDir
from transferkit.runs import load_trained
from transferkit.ship.merge import DTYPES, compare, folding, sample_batch, sample_logits


def measure(run_dir: str) -> list[tuple[str, object]]:
    run = RunDir(run_dir)
    cfg = load_config(run.config)
    trained, tokenizer, _ = load_trained(run.path)
    batch = sample_batch(cfg, tokenizer, run.read_labels())
    reference = sample_logits(trained, batch)
    merged = folding(get_method(cfg.method.name))(trained)
    rows = [(f"merged {name}", compare(reference, sample_logits(copy.deepcopy(merged).to(dtype), batch),
                                       batch["attention_mask"], (0, 0))) for name, dtype in DTYPES.items()]
    base, _, _ = load_model(cfg.model, task=task_of(trained), labels=run.read_labels(), tokenizer=tokenizer,
                            pooling=cfg.method.pooling)
    torch.manual_seed(0)
    floor = sample_logits(base, batch)
    rows.append(("base in bf16 vs base in fp32", compare(floor, sample_logits(base.to(torch.bfloat16), batch),
                                                         batch["attention_mask"], (0, 0))))
    return rows


def main() -> None:
    started = time.perf_counter()
    for run_dir in sys.argv[1:]:
        print(f"{run_dir}:")
        for name, f in measure(run_dir):
            print(f"  {name:<30} max |Δlogit| {f.max_abs_logit:9.3g}   equal greedy {f.equal_greedy:7.2%}   "
                  f"({f.positions} positions)")
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
