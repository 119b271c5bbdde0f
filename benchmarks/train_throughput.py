"""Training throughput: transferkit against the textbook `transformers.Trainer` + `peft` recipe, like for like.

    .venv/bin/python benchmarks/train_throughput.py [--examples 256] [--lr 1e-3]

Every side trains SmolLM2-135M with LoRA r=16 (alpha 32) on q_proj and v_proj for one pass over the same
examples (the quickstart task), each in its own process so that its peak memory is its own:

1. `reference`: `transformers.Trainer` + `peft`, batches of 8, fp32 — trained on exactly transferkit's
   labelled tokens (the completion-only labels of `transferkit.data.tokenize`, padding never labelled, so
   the end-of-turn token is learned whatever the pad id is), LoRA dropout 0, and transferkit's optimizer and
   schedule (AdamW, 5 % linear warmup, cosine to 0.1 of the peak, clipping at 1.0, passed to the Trainer).
   What differs from transferkit is what transferkit itself brings: precision (fp32 here), data order (the
   Trainer's random sampler against length-grouped batches), batching (padded batches of 8 against
   micro-batches of 4), the full-vocabulary head at every position, SDPA attention;
2. `reference-tutorial`: the recipe as tutorials write it, kept for comparison only — the
   `DataCollatorForLanguageModeling` labels every token that is not the pad id (SmolLM2's pad is its
   end-of-turn token `<|im_end|>`, so that token is never learned) and the prompt tokens too, LoRA dropout
   0.05, the Trainer's own cosine schedule;
3. `transferkit`: `train()` with its defaults for the hardware.

Printed per side: real (non-padding) tokens/s, peak memory (RSS on CPU, max_memory_allocated on CUDA), the
held-out loss of the final adapter (one function for all: transferkit's completion-token loss on 100 test
examples, fp32, SDPA), and its MFU. Then transferkit ÷ reference ratios; the last line is one JSON object.

MFU = useful FLOPs per second / the bf16 (or fp32) matmul peak measured in this run. Useful FLOPs are counted
from the model and the data, per sequence of T tokens with K labelled positions (Kaplan et al. 2020, PaLM
appendix B, adapted to frozen weights and to a head applied only where labels are):

    frozen linear layers     4 · N_frozen · T       forward 2N, backward to the activations 2N (no weight grads)
    trained (LoRA) weights   6 · N_trained · T      forward 2N, backward to activations and weights 4N
    output head (V × h)      4 · V · h · K          frozen (tied to the embeddings); transferkit applies it at
                                                    the K labelled positions only, the Trainer at all T: 4·V·h·T
    causal attention         6 · L · h · T(T+1)     QKᵀ and AV over the positions each token sees, ×3 with backward

Padding, masked-out attention scores and the embedding lookup are not counted.
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
SIDES = ("reference", "reference-tutorial", "transferkit")


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


def tokenized(path: Path, tokenizer):
    """transferkit's tokenization of a quickstart file: input ids and completion-only labels."""
    from transferkit.data import read_examples
    from transferkit.data.tokenize import tokenize_examples

    schema, examples = read_examples(str(path))
    return tokenize_examples(tokenizer, examples, schema, 1024)


def heldout_loss(model, tokenizer, heldout: Path, device) -> float:
    """Completion-token cross-entropy on the held-out file: one function for every side (fp32, SDPA)."""
    import torch

    from transferkit.evaluate import mean_loss
    from transferkit.runtime import Runtime

    return mean_loss(model, tokenized(heldout, tokenizer), tokenizer.pad_token_id, 16,
                     Runtime(torch.device(device)))["loss"]


def reference_trainer(model, tokenizer, train: Path, lr: float, out: Path, tutorial: bool):
    """The Trainer of the `reference` side (transferkit's labels, optimizer and schedule) or of the tutorial."""
    import torch
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from transferkit.data.batching import collate
    from transferkit.methods import get_method
    from transferkit.options import TrainConfig
    from transferkit.train.schedule import lr_multiplier, warmup_steps

    warmup_ratio = get_method("lora").defaults.warmup_ratio  # what transferkit's LoRA run uses

    items = tokenized(train, tokenizer)
    steps = -(-len(items) // 8)
    args = TrainingArguments(output_dir=str(out.parent / "trainer"), per_device_train_batch_size=8,
                             num_train_epochs=1, learning_rate=lr, lr_scheduler_type="cosine",
                             warmup_steps=warmup_steps(steps, warmup_ratio), logging_steps=10,
                             save_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(), bf16=False,
                             disable_tqdm=True, remove_unused_columns=False, max_grad_norm=1.0)
    if tutorial:
        from transferkit.data import read_examples

        texts = [tokenizer.apply_chat_template(list(ex.messages), tokenize=False) for ex in read_examples(str(train))[1]]
        dataset = Dataset.from_dict({"text": texts}).map(lambda b: tokenizer(b["text"]), batched=True,
                                                          remove_columns=["text"])
        return Trainer(model=model, args=args, train_dataset=dataset,
                       data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    dataset = Dataset.from_dict({"input_ids": [t.input_ids for t in items], "labels": [t.labels for t in items]})
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    warmup = warmup_steps(steps, warmup_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, steps, warmup, TrainConfig.min_lr_ratio))
    return Trainer(model=model, args=args, train_dataset=dataset, optimizers=(optimizer, scheduler),
                   data_collator=lambda rows: collate([_item(r) for r in rows], tokenizer.pad_token_id))


def _item(row: dict):
    from transferkit.data.tokenize import Tokenized

    return Tokenized(row["input_ids"], row["labels"], "reference")


def run_reference(train: Path, heldout: Path, lr: float, out: Path, tutorial: bool) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from transferkit.models import resolve_model
    from transferkit.models.loading import load_tokenizer

    folder = resolve_model("smollm2-135m")
    tokenizer = load_tokenizer(folder)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05 if tutorial else 0.0,
                                             target_modules=TARGETS, task_type="CAUSAL_LM"))
    trainer = reference_trainer(model, tokenizer, train, lr, out, tutorial)
    real_tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    device = next(model.parameters()).device
    out.write_text(json.dumps({
        "tokens_per_s": real_tokens / seconds, "real_tokens": real_tokens, "seconds": seconds,
        "peak_memory_bytes": peak_memory_bytes(device), "heldout_loss": heldout_loss(model, tokenizer, heldout, device),
        "precision": "fp32", "head_everywhere": True}))


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
        "train.log_every=10", "eval.baseline=false", "eval.exact_match=false", "forgetting.reference=none",
        f"output_dir={run_dir}"])
    summary = tk_train(cfg, overwrite=True)
    peak = summary["peak_memory_bytes"]  # measured before the held-out pass below
    model, tokenizer, _ = load_trained(run_dir)
    out.write_text(json.dumps({
        "tokens_per_s": summary["tokens_per_s"], "real_tokens": summary["train_tokens"],
        "seconds": summary["train_tokens"] / summary["tokens_per_s"], "peak_memory_bytes": peak,
        "heldout_loss": heldout_loss(model, tokenizer, heldout, torch.device("cpu")),
        "precision": summary["precision"], "head_everywhere": False}))


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


def useful_flops(train: Path, head_everywhere: bool) -> float:
    """The training pass's useful FLOPs (see the module docstring), from the model and the data."""
    from transferkit.methods import get_method, method_config_from_dict
    from transferkit.models import count_parameters, load_model

    base, tokenizer, _ = load_model("smollm2-135m")
    config = base.config
    head = config.vocab_size * config.hidden_size            # tied to the embeddings: frozen, used as the head
    _, total = count_parameters(base)
    lora = get_method("lora").apply(base, method_config_from_dict(
        {"name": "lora", "r": 16, "alpha": 32, "target_modules": TARGETS}), "causal-lm")
    trained, _ = count_parameters(lora)
    frozen_linear = total - head - config.hidden_size * (2 * config.num_hidden_layers + 1)  # less norms
    flops = 0.0
    for item in tokenized(train, tokenizer):
        tokens, labels = len(item.input_ids), item.num_labels
        flops += 4 * frozen_linear * tokens + 6 * trained * tokens
        flops += 4 * head * (tokens if head_everywhere else labels)
        flops += 6 * config.num_hidden_layers * config.hidden_size * tokens * (tokens + 1)
    return flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=256, help="training examples (one pass)")
    parser.add_argument("--heldout", type=int, default=100, help="held-out examples for the final loss")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--run", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    if args.run:  # a child process: one side of the comparison
        train, heldout = args.out.parent / "train.jsonl", args.out.parent / "heldout.jsonl"
        if args.run == "transferkit":
            run_transferkit(train, heldout, args.lr, args.out)
        else:
            run_reference(train, heldout, args.lr, args.out, tutorial=args.run == "reference-tutorial")
        return

    work = Path(tempfile.mkdtemp(prefix="tk-bench-"))
    train, _ = write_subset(work, args.examples, args.heldout)
    results = {}
    for side in SIDES:
        print(f"running {side} ...", flush=True)
        out = work / f"{side}.json"
        subprocess.run([sys.executable, __file__, "--run", side, "--out", str(out), "--lr", str(args.lr)],
                       check=True, stdout=subprocess.DEVNULL)
        results[side] = json.loads(out.read_text())
    report(results, train)


def report(results: dict, train: Path) -> None:
    peaks = {dtype: matmul_peak_flops(dtype) for dtype in {r["precision"] for r in results.values()}}
    print(f"\n{'':19} {'tokens/s':>9} {'peak mem GB':>12} {'held-out loss':>14} {'MFU':>6} {'precision':>10} "
          f"{'real tokens':>12}")
    for side, r in results.items():
        r["mfu"] = useful_flops(train, r["head_everywhere"]) / r["seconds"] / peaks[r["precision"]]
        print(f"{side:19} {r['tokens_per_s']:9.1f} {r['peak_memory_bytes'] / 1e9:12.2f} {r['heldout_loss']:14.4f} "
              f"{100 * r['mfu']:5.1f}% {r['precision']:>10} {r['real_tokens']:12,}")
    print("matmul peak measured here: " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in sorted(peaks.items())))
    ref, tk = results["reference"], results["transferkit"]
    summary = {"throughput_ratio": tk["tokens_per_s"] / ref["tokens_per_s"], "mfu": tk["mfu"],
               "memory_ratio": tk["peak_memory_bytes"] / ref["peak_memory_bytes"],
               "heldout_loss_ratio": tk["heldout_loss"] / ref["heldout_loss"]}
    print(f"transferkit vs reference: throughput {summary['throughput_ratio']:.2f}x (target >= 4), "
          f"MFU {100 * summary['mfu']:.1f}% (target >= 55%), memory {summary['memory_ratio']:.2f}x (target <= 0.6), "
          f"held-out loss {summary['heldout_loss_ratio']:.3f}x (target within 2%)")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
