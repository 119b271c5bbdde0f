"""The library functions behind the CLI verbs."""

from __future__ import annotations

from pathlib import Path

import torch

from .config import EvalConfig, RunConfig
from .data import Split, read_examples
from .data.schema import check_known_labels
from .errors import UserError
from .data.tokenize import tokenize_examples
from .evaluate import evaluate_split, generate_completions
from .models import load_model
from .train.hardware import autocast_for, pick_device, resolve_precision
from .train.loop import load_trained
from .train.loop import train as _train


def train(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False) -> dict:
    """Fine-tune as `cfg` says; writes the run directory and returns its summary."""
    return _train(cfg, resume=resume, overwrite=overwrite)


def _autocast_for(device: torch.device, precision: str):
    return autocast_for(device, resolve_precision(precision, device))


def generate(prompts: list[str], *, model: str | None = None, adapter: str | None = None,
             max_new_tokens: int = 128, precision: str = "auto") -> list[str]:
    """Greedy replies to user prompts from a base model or a run's adapter."""
    device = pick_device("auto")
    if adapter is not None:
        lm, tokenizer, _ = load_trained(adapter, device)
        if getattr(lm, "transferkit_task", "causal-lm") != "causal-lm":
            raise UserError(f"{adapter}: a classification run does not generate text; use `transferkit eval`")
    elif model is not None:
        lm, tokenizer, _ = load_model(model, device=device)
    else:
        raise ValueError("give a model or an adapter run directory")
    chats = [[{"role": "user", "content": p}] for p in prompts]
    return generate_completions(lm, tokenizer, chats, max_new_tokens=max_new_tokens, batch_size=8, device=device,
                                autocast=_autocast_for(device, precision))


def evaluate_run(data: str, *, run_dir: str | None = None, model: str | None = None,
                 eval_cfg: EvalConfig | None = None, max_length: int = 1024, precision: str = "auto") -> tuple[dict, list[dict]]:
    """Loss, perplexity and (instruction data) exact match of a run or a base model on a data file."""
    eval_cfg = eval_cfg or EvalConfig()
    device = pick_device("auto")
    labels = None
    if run_dir is not None:
        lm, tokenizer, cfg = load_trained(run_dir, device)
        max_length = cfg.data.max_length
        if getattr(lm, "transferkit_task", "causal-lm") == "classification":
            labels = [lm.config.id2label[i] for i in range(lm.config.num_labels)]
    elif model is not None:
        lm, tokenizer, _ = load_model(model, device=device)
    else:
        raise ValueError("give a run directory or a model")
    schema, examples = read_examples(data)
    if (schema == "classification") != (labels is not None):
        raise UserError(f"{data}: {schema} data does not fit this {'classifier' if labels else 'language model'}")
    if labels is not None:
        check_known_labels(examples, labels)
    split = Split(Path(data).name, examples, tokenize_examples(tokenizer, examples, schema, max_length, labels=labels))
    return evaluate_split(lm, tokenizer, split, schema, eval_cfg, device,
                          autocast=_autocast_for(device, precision), label="eval", labels=labels)
