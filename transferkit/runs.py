"""Runs read back: a finished run's trained model on its base, ready for inference or evaluation; and every
run under a folder at a glance (`transferkit runs`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from .config import load_config
from .errors import UserError
from .evaluate.comparison import headline_metric
from .methods import get_method
from .models import load_model
from .models.fingerprint import check_adapter_folder
from .options import RunConfig
from .rundir import RunDir


def finished_config(run: RunDir) -> RunConfig:
    """The config of a finished run directory; a `UserError` when it is not one."""
    if not run.config.is_file() or not run.adapter.is_dir():
        raise UserError(f"{run.path}: not a finished transferkit run (needs config.yaml and adapter/)")
    return load_config(run.config)


def load_base(run: RunDir, cfg: RunConfig, device: str | torch.device = "cpu"):
    """(base model, tokenizer) as the run trained on it: its task and labels, 4-bit storage for a method that
    quantizes the base, the same attention kernel (the same kernel gives the same numbers to the last digit)."""
    labels = run.read_labels()
    model, tokenizer, _ = load_model(cfg.model, task="classification" if labels else "causal-lm", labels=labels,
                                     device=device, quantize_4bit=get_method(cfg.method.name).quantize_base,
                                     attention=run.read_summary().get("attention"),
                                     trust_remote_code=cfg.trust_remote_code, pooling=cfg.method.pooling)
    return model, tokenizer


def adapter_misfit(run: RunDir, cfg: RunConfig, exc: Exception) -> UserError:
    """The error for an adapter whose shapes or names do not fit its base (raised inside a loader)."""
    return UserError(f"{run.adapter}: adapter does not fit base model {cfg.model} "
                     f"({str(exc).strip().splitlines()[0][:300]})")


def load_trained(run_path: str | Path, device: str | torch.device = "cpu"):
    """(model with adapter, tokenizer, config) from a finished run directory."""
    run = RunDir(run_path)
    cfg = finished_config(run)
    model, tokenizer = load_base(run, cfg, device)
    check_adapter_folder(run.adapter, model, cfg.model)
    try:
        model = get_method(cfg.method.name).load(model, run.adapter)
    except (RuntimeError, ValueError, KeyError) as exc:  # shape or name mismatches inside the loader
        raise adapter_misfit(run, cfg, exc) from None
    model.eval()
    return model, tokenizer, cfg


@dataclass(frozen=True)
class RunRow:
    """One run directory at a glance."""

    path: str
    method: str
    task: str
    headline: str          # "metric value" of the tuned model, or "" before it finished
    gain: float | None     # over the best baseline on the headline (positive: better)
    forgetting: float | None
    minutes: float | None
    status: str            # finished / stopped early at step N / not finished: last logged step N / ...


def find_runs(root: str | Path, depth: int = 3) -> list[RunRow]:
    """Every run directory (a folder with config.yaml and metrics.jsonl) at most `depth` levels under `root`."""
    root = Path(root).resolve()
    found = []
    for config in sorted(root.glob("config.yaml")) + sorted(
            p for level in range(1, depth + 1) for p in root.glob("/".join(["*"] * level) + "/config.yaml")):
        if (config.parent / "metrics.jsonl").is_file():
            found.append(describe_run(RunDir(config.parent), root))
    return found


def describe_run(run: RunDir, root: Path) -> RunRow:
    try:
        config = yaml.safe_load(run.config.read_text()) or {}
    except (OSError, yaml.YAMLError):
        config = {}
    method = (config.get("method") or {}).get("name", "?")
    choice = (config.get("eval") or {}).get("headline")
    summary = run.read_summary()
    name = str(run.path.relative_to(root)) if run.path != root else "."
    if not summary:
        steps = [e["step"] for e in run.read_events() if e.get("event") == "train"]
        status = f"not finished: last logged step {steps[-1]}" if steps else "not finished: no step logged"
        return RunRow(name, method, "classification" if run.labels.is_file() else "?", "", None, None, None, status)
    comparison = summary.get("comparison") or {}
    scored = summary.get("test") or summary.get("validation") or {}
    metric = comparison.get("metric") or (headline_metric(summary["schema"], scored, choice) if scored else None)
    value = comparison.get("tuned", scored.get(metric))
    forgetting = (summary.get("forgetting") or {}).get("forgetting")
    status = f"stopped early at step {summary['steps']}" if summary.get("stopped_early") else \
        f"out of time at step {summary['steps']}" if summary.get("out_of_time") else "finished"
    return RunRow(name, method, summary.get("schema", "?"), f"{metric} {value:.4g}" if value is not None else "",
                  comparison.get("gain"), forgetting, summary.get("wall_time_s", 0) / 60, status)


def format_runs(rows: list[RunRow]) -> str:
    """A plain-text table, columns as wide as their content."""
    def number(value: float | None, fmt: str) -> str:
        return "" if value is None else format(value, fmt)

    table = [("run", "method", "task", "headline", "gain", "forgetting", "minutes", "status")] + [
        (r.path, r.method, r.task, r.headline, number(r.gain, "+.4g"), number(r.forgetting, "+.2%"),
         number(r.minutes, ".1f"), r.status) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table)
