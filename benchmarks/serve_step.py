"""Where a served batch's time goes: one decoding step of the base alone, of one adapter, of mixed adapters.

    .venv/bin/python benchmarks/serve_step.py [--adapter NAME=RUN_DIR ...] [--rows 6] [--tokens 32]

In this process, on the server's own generation code (`serve.engine.generate_batch`), for one batch of `--rows`
quickstart test prompts (greedy): the base model alone (the reference), every row on one adapter, the rows spread
over the adapters and the base (peft's `adapter_names`, what `serve` does with a LoRA family), and one row alone.
Each is timed for 1 and for `--tokens` new tokens after a warm-up, so (t_tokens − t_1) / (tokens − 1) is the cost of
one decoding step and t_1 the prompt's; ratios are to the base alone; tokens/s counts the tokens generated (a row
ends at its stop token, its batch at the last row's). Without `--adapter`, the runs
benchmarks/serve_load.py trains (runs/serve-load/) are used.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from transferkit.data.tokenize import encode_chat
from transferkit.runtime import Runtime, cpu_name
from transferkit.serve import ModelPool, parse_adapter_args
from transferkit.serve.engine import Done, Job, generate_batch

ROOT = Path(__file__).resolve().parent.parent


def timed(pool: ModelPool, names: list[str], prompts: list[list[int]], tokens: int,
          runtime: Runtime) -> tuple[float, int]:
    """(seconds, tokens generated) of one batch."""
    done = []
    jobs = [Job(pool.get(name), lambda event: done.append(event) if isinstance(event, Done) else None, prompt_ids=ids,
                max_tokens=tokens) for name, ids in zip(names, prompts)]
    mixed = len({job.adapter_name() for job in jobs}) > 1
    family = jobs[0].served.family
    started = time.perf_counter()
    with family.activate(None if mixed else jobs[0].served.adapter, mixed) as model:
        generate_batch(model, family.tokenizer, jobs, runtime, mixed)
    return time.perf_counter() - started, sum(event.completion_tokens for event in done)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME=RUN_DIR")
    parser.add_argument("--rows", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=32)
    options = parser.parse_args()
    adapters = options.adapter or [f"json-r{r}={ROOT / 'runs' / 'serve-load' / f'json-r{r}'}" for r in (8, 16)]
    runtime = Runtime.resolve("cpu", "fp32")
    pool = ModelPool(options.model, parse_adapter_args(adapters), runtime.device)
    names = [name for name, _ in parse_adapter_args(adapters)]
    tokenizer = pool.get(options.model).family.tokenizer
    texts = [json.loads(line)["prompt"] for line in (ROOT / "data" / "quickstart" / "test.jsonl").read_text()
             .splitlines()[:options.rows]]
    prompts = [encode_chat(tokenizer, [{"role": "user", "content": t}], add_generation_prompt=True) for t in texts]
    print(f"{time.strftime('%Y-%m-%d')}, {cpu_name()}, {torch.get_num_threads()} threads; {options.rows} rows of "
          f"{min(map(len, prompts))}–{max(map(len, prompts))} prompt tokens, {options.tokens} new tokens, greedy, fp32")
    cases = [("base alone (reference)", [options.model] * options.rows),
             (f"one adapter ({names[0]})", [names[0]] * options.rows),
             (f"mixed: {', '.join(names)}, base", [([*names, options.model] * options.rows)[i]
                                                   for i in range(options.rows)]),
             ("one row, one adapter", [names[0]])]
    reference = None
    print(f"{'batch':<40}{'prompt s':>10}{'step ms':>9}{'× base':>8}{'tokens/s':>10}")
    for label, rows in cases:
        timed(pool, rows, prompts, 2, runtime)  # warm-up
        first, _ = timed(pool, rows, prompts, 1, runtime)
        whole, generated = timed(pool, rows, prompts, options.tokens, runtime)
        step = (whole - first) / (options.tokens - 1)
        reference = reference or step
        print(f"{label:<40}{first:>10.2f}{step * 1000:>9.0f}{step / reference:>8.2f}{generated / whole:>10.1f}")


if __name__ == "__main__":
    main()
