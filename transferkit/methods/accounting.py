"""`transferkit methods --model M`: trainable parameters of every method on one model,
counted on the instantiated model and by each method's closed form."""

from __future__ import annotations

from dataclasses import dataclass

from tqdm.auto import tqdm

from ..models import architecture, count_parameters, load_model, resolve_model, task_head_name
from .registry import Method, get_method, method_config_from_dict, method_names


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
    decoder = architecture(resolve_model(model_ref)) == "decoder"
    return "causal-lm" if decoder and "causal-lm" in method_tasks else "classification"


def head_parameters(model) -> int:
    return sum(p.numel() for p in getattr(model, task_head_name(model)).parameters())


def trainable_by_formula(method: Method, base, cfg, task: str) -> int | None:
    """The method's closed form on `base`, plus the new head where it trains beside the method's parameters."""
    if method.closed_form is None:
        return None
    count = method.closed_form(base, cfg)
    if count is not None and task == "classification" and method.separate_head:
        count += head_parameters(base)
    return count


def parameter_table(model_ref: str, options: dict[str, dict] | None = None,
                    num_classes: int = 2) -> list[MethodRow]:
    """One row per registered method, each applied with its default config to a fresh base.
    Classification rows use a new head over `num_classes` classes."""
    rows = []
    labels = [str(i) for i in range(num_classes)]
    for name in tqdm(method_names(), desc="instantiating methods", leave=False):
        method = get_method(name)
        cfg = method_config_from_dict({"name": name, **(options or {}).get(name, {})})
        task = task_for(model_ref, method.tasks)
        base, _, _ = load_model(model_ref, task=task, labels=labels)
        _, total = count_parameters(base)
        closed = trainable_by_formula(method, base, cfg, task)
        if method.quantize_base:
            base, _, _ = load_model(model_ref, task=task, labels=labels, quantize_4bit=True)
        trainable, _ = count_parameters(method.apply(base, cfg, task))
        rows.append(MethodRow(name, task, trainable, total, closed, method.summary))
    return rows


def format_table(rows: list[MethodRow]) -> str:
    lines = ["| method | task | trainable | % of total | closed form | agrees | what trains |",
             "|---|---|---:|---:|---:|---|---|"]
    for r in rows:
        closed = f"{r.closed_form:,}" if r.closed_form is not None else "—"
        agrees = {True: "yes", False: "NO", None: "—"}[r.agrees]
        lines.append(f"| {r.method} | {r.task} | {r.trainable:,} | {r.percent:.4f} | {closed} | {agrees} | {r.summary} |")
    return "\n".join(lines)
