"""Finished runs, read back: the trained model on its base, ready for inference or evaluation."""

from __future__ import annotations

from pathlib import Path

import torch

from .config import load_config
from .errors import UserError
from .methods import get_method
from .models import load_model
from .models.fingerprint import check_adapter_folder
from .rundir import RunDir


def load_trained(run_path: str | Path, device: str | torch.device = "cpu"):
    """(model with adapter, tokenizer, config) from a finished run directory."""
    run = RunDir(run_path)
    if not run.config.is_file() or not run.adapter.is_dir():
        raise UserError(f"{run.path}: not a finished transferkit run (needs config.yaml and adapter/)")
    cfg = load_config(run.config)
    method = get_method(cfg.method.name)
    labels = run.read_labels()
    # The attention kernel training ran with: the same kernel gives the same numbers to the last digit.
    model, tokenizer, _ = load_model(cfg.model, task="classification" if labels else "causal-lm", labels=labels,
                                     device=device, quantize_4bit=method.quantize_base,
                                     attention=run.read_summary().get("attention"),
                                     trust_remote_code=cfg.trust_remote_code, pooling=cfg.method.pooling)
    check_adapter_folder(run.adapter, model, cfg.model)
    try:
        model = method.load(model, run.adapter)
    except (RuntimeError, ValueError, KeyError) as exc:  # shape or name mismatches inside the loader
        raise UserError(f"{run.adapter}: adapter does not fit base model {cfg.model} "
                        f"({str(exc).strip().splitlines()[0][:300]})") from None
    model.eval()
    return model, tokenizer, cfg
