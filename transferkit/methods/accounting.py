"""`transferkit methods --model M`: trainable parameters of every method on one model,
counted on the instantiated model and by each method's closed form."""

from __future__ import annotations

from dataclasses import dataclass

from tqdm.auto import tqdm

from ..config import method_config_from_dict
from . import count_parameters, get_method, method_names
from .targets import task_head_name


@dataclass
class MethodRow:
    method: str
    task: str
    trainable: int
    total: int           # parameters of the float base for that task (the denominator)
    closed_form: int | None
    summary: str

    @property
    def percent(self) -> float:
        return 100 * self.trainable / self.total

    @property
    def agrees(self) -> bool | None:
        return None if self.closed_form is None else self.closed_form == self.trainable


def task_for(model_ref: str, method_tasks: tuple[str, ...]) -> str:
    """Causal LM for decoders where the method serves it; classification otherwise."""
    from ..models.loading import ENCODER_TYPES, model_type, resolve_model

    encoder = model_type(resolve_model(model_ref)) in ENCODER_TYPES
    return "causal-lm" if not encoder and "causal-lm" in method_tasks else "classification"


def parameter_table(model_ref: str, options: dict[str, dict] | None = None,
                    num_classes: int = 2) -> list[MethodRow]:
    """One row per registered method, each applied with its default config to a fresh base.
    Classification rows use a new head over `num_classes` classes."""
    from ..models import load_model

    rows = []
    labels = [str(i) for i in range(num_classes)]
    for name in tqdm(method_names(), desc="instantiating methods", leave=False):
        method = get_method(name)
        cfg = method_config_from_dict({"name": name, **(options or {}).get(name, {})})
        task = task_for(model_ref, method.tasks)
        base, _, _ = load_model(model_ref, task=task, labels=labels)
        _, total = count_parameters(base)
        closed = method.closed_form(base, cfg) if method.closed_form else None
        if closed is not None and task == "classification" and name not in ("probe", "full", "freeze"):
            closed += head_parameters(base)  # the new head trains alongside the method's own parameters
        if method.quantize_base:
            base, _, _ = load_model(model_ref, task=task, labels=labels, quantize_4bit=True)
        trainable, _ = count_parameters(method.apply(base, cfg))
        rows.append(MethodRow(name, task, trainable, total, closed, method.summary))
    return rows


def head_parameters(model) -> int:
    return sum(p.numel() for p in getattr(model, task_head_name(model)).parameters())


def format_table(rows: list[MethodRow]) -> str:
    lines = ["| method | task | trainable | % of total | closed form | agrees | what trains |",
             "|---|---|---:|---:|---:|---|---|"]
    for r in rows:
        closed = f"{r.closed_form:,}" if r.closed_form is not None else "—"
        agrees = {True: "yes", False: "NO", None: "—"}[r.agrees]
        lines.append(f"| {r.method} | {r.task} | {r.trainable:,} | {r.percent:.4f} | {closed} | {agrees} | {r.summary} |")
    return "\n".join(lines)
