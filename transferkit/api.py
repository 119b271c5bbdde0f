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
from .evaluate.baseline import compare, prompting_baseline, prompting_model
from .evaluate.forgetting import forgetting, general_ability
from .methods import get_method
from .models import load_model, resolve_model
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
                 eval_cfg: EvalConfig | None = None, max_length: int = 1024, precision: str = "auto",
                 baseline: bool = False, shots_from: str | None = None, reference: str = "general"
                 ) -> tuple[dict, list[dict]]:
    """Evaluate a run (or a base model) on a data file: ({"metrics", "general", "forgetting"[, "baseline",
    "comparison"]}, per-example predictions).

    A run is compared with its base model: general ability of both and forgetting. `baseline` adds the
    base model's zero- and k-shot prompting scores (shots from `shots_from`, default the run's training data)
    and the comparison with the evaluated model."""
    eval_cfg = eval_cfg or EvalConfig()
    device = pick_device("auto")
    autocast = _autocast_for(device, precision)
    labels = None
    base_ref, trust, seed, quantized = model, False, 0, False
    if run_dir is not None:
        lm, tokenizer, cfg = load_trained(run_dir, device)
        max_length, base_ref, trust, seed = cfg.data.max_length, cfg.model, cfg.trust_remote_code, cfg.seed
        quantized = get_method(cfg.method.name).quantize_base  # QLoRA: compare with the 4-bit base it trained on
        shots_from = shots_from or cfg.data.train
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
    task = "classification" if labels else "causal-lm"
    split = Split(Path(data).name, examples, tokenize_examples(tokenizer, examples, schema, max_length, labels=labels))
    metrics, predictions = evaluate_split(lm, tokenizer, split, schema, eval_cfg, device, autocast=autocast,
                                          label="eval", labels=labels)

    def ability(m) -> dict | None:
        return general_ability(m, tokenizer, task, reference, device, autocast=autocast, max_length=max_length,
                               batch_size=eval_cfg.batch_size)

    tuned_general = ability(lm)
    result: dict = {"data": data, "metrics": metrics, "general": {"evaluated": tuned_general}, "forgetting": None}
    base = None
    if run_dir is not None:
        base, _, _ = load_model(base_ref, task=task, labels=labels, device=device, tokenizer=tokenizer,
                                quantize_4bit=quantized, trust_remote_code=trust)
        result["general"]["base"] = ability(base)
        result["forgetting"] = forgetting(result["general"]["base"], tuned_general)
    if baseline:
        prompter, is_decoder = prompting_model(base_ref, resolve_model(base_ref), task,
                                               base if base is not None else lm, tokenizer, device, trust)
        shots = read_examples(shots_from)[1] if shots_from and eval_cfg.shots else []
        result["baseline"] = prompting_baseline(prompter, tokenizer, split, schema, shots, eval_cfg, device,
                                                autocast=autocast, labels=labels, is_decoder=is_decoder, seed=seed)
        result["comparison"] = compare(schema, metrics, result["baseline"])
    return result, predictions
