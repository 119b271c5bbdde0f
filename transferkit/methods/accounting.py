"""`transferkit methods --model M`: trainable parameters of every method on one model,
counted on the instantiated model and by each method's closed form."""

from __future__ import annotations

from dataclasses import dataclass

from tqdm.auto import tqdm

from ..config import method_config_from_dict
from . import count_parameters, get_method, method_names


@dataclass
class MethodRow:
    method: str
    trainable: int
    total: int           # parameters of the float base (the same denominator for every row)
    closed_form: int | None
    summary: str

    @property
    def percent(self) -> float:
        return 100 * self.trainable / self.total

    @property
    def agrees(self) -> bool | None:
        return None if self.closed_form is None else self.closed_form == self.trainable


def parameter_table(model_ref: str, options: dict[str, dict] | None = None) -> list[MethodRow]:
    """One row per registered method, each applied with its default config to a fresh base."""
    from ..models import load_model

    rows = []
    for name in tqdm(method_names(), desc="instantiating methods", leave=False):
        method = get_method(name)
        cfg = method_config_from_dict({"name": name, **(options or {}).get(name, {})})
        base, _, _ = load_model(model_ref)
        _, total = count_parameters(base)
        closed = method.closed_form(base, cfg) if method.closed_form else None
        if method.quantize_base:
            base, _, _ = load_model(model_ref, quantize_4bit=True)
        trainable, _ = count_parameters(method.apply(base, cfg))
        rows.append(MethodRow(name, trainable, total, closed, method.summary))
    return rows


def format_table(rows: list[MethodRow]) -> str:
    lines = ["| method | trainable | % of total | closed form | agrees | what trains |", "|---|---:|---:|---:|---|---|"]
    for r in rows:
        closed = f"{r.closed_form:,}" if r.closed_form is not None else "—"
        agrees = {True: "yes", False: "NO", None: "—"}[r.agrees]
        lines.append(f"| {r.method} | {r.trainable:,} | {r.percent:.4f} | {closed} | {agrees} | {r.summary} |")
    return "\n".join(lines)
