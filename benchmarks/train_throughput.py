"""Training throughput: transferkit against the textbook `transformers.Trainer` + `peft` recipe.

    .venv/bin/python benchmarks/train_throughput.py [--examples 256] [--lr 1e-3]

Both train SmolLM2-135M with LoRA r=16 on q_proj and v_proj, at the same
learning rate, on the same examples (the quickstart task, rendered with the
chat template), for one pass: the same real tokens. Each runs in its own
process so its peak RSS is its own.

1. reference: `Trainer` as tutorials write it — per_device_train_batch_size=8,
   fp32, `DataCollatorForLanguageModeling` (padded batches, no packing, no
   length grouping, loss on every token);
2. transferkit: `train()` with its defaults for the hardware (bf16 autocast
   where supported, frozen weights stored in bf16, length-grouped batches,
   micro-batches of 4 on CPU, eager attention for short sequences on CPU,
   completion-only loss computed only where labels exist, LoRA dropout 0 —
   peft's own default; the tutorial reference keeps its 0.05).

Printed for each: real (non-padding) tokens/s, peak memory (RSS on CPU,
max_memory_allocated on CUDA), and the loss of the final adapter on the same
held-out set (mean cross-entropy over completion tokens). Then the ratios and
transferkit's model-FLOPs utilisation against a matmul peak measured in this
run. The last line is one JSON object: throughput_ratio, mfu, memory_ratio,
heldout_loss_ratio (transferkit ÷ reference).

MFU (PaLM, Chowdhery et al. 2022, appendix B, adapted to frozen weights):
training with frozen base weights costs the forward (2N) and the
activation-gradient backward (2N) per token, 4N, plus attention scores and
values, 4·L·T·d forward and as much backward: 4N + 8·L·T·d FLOPs per token,
with T the mean sequence length.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "quickstart"
TARGETS = ["q_proj", "v_proj"]


def peak_memory_bytes(device) -> int:
    import torch

    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def write_subset(folder: Path, examples: int, heldout: int) -> tuple[Path, Path]:
    train = folder / "train.jsonl"
    test = folder / "heldout.jsonl"
    train.write_text("".join((DATA / "train.jsonl").read_text().splitlines(keepends=True)[:examples]))
    test.write_text("".join((DATA / "test.jsonl").read_text().splitlines(keepends=True)[:heldout]))
    return train, test


def heldout_loss(model, tokenizer, heldout: Path, device) -> float:
    """Completion-token cross-entropy of `model` on the held-out file (fp32, the same for both)."""
    import torch

    from transferkit.data import read_examples
    from transferkit.data.tokenize import tokenize_examples
    from transferkit.evaluate import mean_loss
    from transferkit.runtime import Runtime

    schema, examples = read_examples(str(heldout))
    tokenized = tokenize_examples(tokenizer, examples, schema, 1024)
    return mean_loss(model, tokenized, tokenizer.pad_token_id, 16, Runtime(torch.device(device)))["loss"]


def run_reference(train: Path, heldout: Path, lr: float, out: Path) -> None:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from transferkit.data import read_examples
    from transferkit.models import resolve_model
    from transferkit.models.loading import load_tokenizer

    folder = resolve_model("smollm2-135m")
    tokenizer = load_tokenizer(folder)
    _, examples = read_examples(str(train))
    texts = [tokenizer.apply_chat_template(list(ex.messages), tokenize=False) for ex in examples]
    dataset = Dataset.from_dict({"text": texts}).map(lambda b: tokenizer(b["text"]), batched=True, remove_columns=["text"])
    real_tokens = sum(len(ids) for ids in dataset["input_ids"])

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=TARGETS,
                                             task_type="CAUSAL_LM"))
    steps = -(-len(texts) // 8)
    args = TrainingArguments(output_dir=str(out.parent / "reference"), per_device_train_batch_size=8,
                             num_train_epochs=1, learning_rate=lr, lr_scheduler_type="cosine",
                             warmup_steps=max(1, round(0.05 * steps)), logging_steps=10, save_strategy="no",
                             report_to=[], use_cpu=not torch.cuda.is_available(), bf16=False, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=dataset,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    device = next(model.parameters()).device
    result = {"tokens_per_s": real_tokens / seconds, "real_tokens": real_tokens, "seconds": seconds,
              "peak_memory_bytes": peak_memory_bytes(device), "heldout_loss": heldout_loss(model, tokenizer, heldout, device)}
    out.write_text(json.dumps(result))


def run_transferkit(train: Path, heldout: Path, lr: float, out: Path) -> None:
    import torch

    from transferkit import load_config
    from transferkit import train as tk_train
    from transferkit.runs import load_trained

    run_dir = out.parent / "transferkit"
    cfg = load_config(None, [
        "model=smollm2-135m", f"data.train={train}", f"data.test={heldout}", "data.validation_fraction=0",
        "method={name: lora, r: 16, alpha: 32, target_modules: [q_proj, v_proj]}",  # dropout: our default (0)
        "train.epochs=1", "train.batch_size=8", f"train.lr={lr}", "train.eval_every=0", "train.save_every=0",
        "train.log_every=10", "eval.baseline=false", "eval.exact_match=false", f"output_dir={run_dir}"])
    summary = tk_train(cfg, overwrite=True)
    peak = summary["peak_memory_bytes"]  # measured before the held-out pass below
    model, tokenizer, _ = load_trained(run_dir)
    device = torch.device("cpu")
    result = {"tokens_per_s": summary["tokens_per_s"], "real_tokens": summary["train_tokens"],
              "seconds": summary["train_tokens"] / summary["tokens_per_s"], "peak_memory_bytes": peak,
              "heldout_loss": heldout_loss(model, tokenizer, heldout, device), "precision": summary["precision"],
              "mean_sequence_tokens": summary["train_tokens"] / len(train.read_text().splitlines())}
    out.write_text(json.dumps(result))


def matmul_peak_flops(dtype_name: str, size: int = 2048, repeats: int = 20) -> float:
    """Best sustained FLOP/s of a square matmul in `dtype_name` on this machine."""
    import torch

    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def flops_per_token(mean_tokens: float) -> float:
    """4N + 8·L·T·d for SmolLM2-135M (see the module docstring)."""
    from transformers import AutoConfig

    from transferkit.models import resolve_model

    config = AutoConfig.from_pretrained(str(resolve_model("smollm2-135m")))
    n_params = 134_515_008
    return 4 * n_params + 8 * config.num_hidden_layers * mean_tokens * config.hidden_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=256, help="training examples (one pass)")
    parser.add_argument("--heldout", type=int, default=100, help="held-out examples for the final loss")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--run", choices=["reference", "transferkit"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    if args.run:  # a child process: one side of the comparison
        train, heldout = args.out.parent / "train.jsonl", args.out.parent / "heldout.jsonl"
        (run_reference if args.run == "reference" else run_transferkit)(train, heldout, args.lr, args.out)
        return

    work = Path(tempfile.mkdtemp(prefix="tk-bench-"))
    write_subset(work, args.examples, args.heldout)
    results = {}
    for side in ("reference", "transferkit"):
        print(f"running {side} ...", flush=True)
        out = work / f"{side}.json"
        subprocess.run([sys.executable, __file__, "--run", side, "--out", str(out), "--lr", str(args.lr)],
                       check=True, stdout=subprocess.DEVNULL)
        results[side] = json.loads(out.read_text())

    ref, tk = results["reference"], results["transferkit"]
    peak_dtype = "bf16" if tk.get("precision") == "bf16" else "fp32"
    peak = matmul_peak_flops(peak_dtype)
    mfu = tk["tokens_per_s"] * flops_per_token(tk["mean_sequence_tokens"]) / peak
    print(f"\n{'':12} {'tokens/s':>10} {'peak mem GB':>12} {'held-out loss':>14} {'real tokens':>12}")
    for side, r in results.items():
        print(f"{side:12} {r['tokens_per_s']:10.1f} {r['peak_memory_bytes'] / 1e9:12.2f} {r['heldout_loss']:14.4f} "
              f"{r['real_tokens']:12,}")
    summary = {
        "throughput_ratio": tk["tokens_per_s"] / ref["tokens_per_s"],
        "mfu": mfu,
        "memory_ratio": tk["peak_memory_bytes"] / ref["peak_memory_bytes"],
        "heldout_loss_ratio": tk["heldout_loss"] / ref["heldout_loss"],
    }
    print(f"\nmeasured {peak_dtype} matmul peak: {peak / 1e9:.0f} GFLOP/s; transferkit precision: {tk.get('precision')}")
    print(f"throughput {summary['throughput_ratio']:.2f}x (target >= 4), MFU {100 * mfu:.1f}% (target >= 55%), "
          f"memory {summary['memory_ratio']:.2f}x (target <= 0.6), held-out loss {summary['heldout_loss_ratio']:.3f}x "
          f"(target within 2%)")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
