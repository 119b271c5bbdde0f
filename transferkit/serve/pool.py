"""The models a server holds: one base in memory, the runs' adapters loaded into it once and switched per batch.

A *family* is one loaded model several runs share. Runs join a family when everything the shared model fixes
is equal:

    family key = (base folder, task, class labels, 4-bit base?, peft type)

    smollm2-135m ─┬─ (base: adapters off)             one PeftModel, adapters added by
                  ├─ lora-json    LoRA  r=8          `load_adapter(dir, adapter_name=NAME)` and
                  ├─ lora-tone    LoRA  r=16         chosen per row by `adapter_names=[…]` (a mixed batch)
                  └─ dora-sql     DoRA  r=8          or per batch by `set_adapter(NAME)` (DoRA: peft has no
                                                     mixed-batch DoRA; DoRA and rsLoRA are LoRA's peft type)
    full-ft     (own copy)  full fine-tuning: its weights are not the base's
    minilm/news (own family) a classifier: its head is sized to its own labels

A run no family can hold — the methods that train or extend the base's own weights (full, freeze, bottleneck
adapters, the probe), a second peft type, another label set — is loaded as its own model and `/v1/models`
says so (`shares_base: false`): it costs a whole copy of the base. Every run must be trained on the served base.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.tokenize import ensure_chat_template
from ..errors import UserError
from ..methods import get_method
from ..methods.lora import lean_dora
from ..models import load_model
from ..models.fingerprint import check_adapter_folder
from ..models.loading import resolve_model
from ..rundir import RunDir
from ..runs import adapter_misfit, finished_config, load_base, load_trained


@dataclass
class Family:
    """One model in memory and the runs' adapters it holds (empty: the plain base)."""

    model: torch.nn.Module
    tokenizer: object
    method: str | None = None                       # the method whose `disabled` switch gives the base back
    adapters: list[str] = field(default_factory=list)
    mixable: bool = False   # rows of different adapters (and the base) can share one batch: peft's `adapter_names`

    def __post_init__(self):
        ensure_chat_template(self.tokenizer)  # once here, not per request: chat prompts need one

    @contextlib.contextmanager
    def activate(self, adapter: str | None, mixed: bool = False):
        """Yields the module to run: `adapter` switched on, the base (adapters off) for None, or the model whose
        rows each name their adapter when `mixed`."""
        if mixed:
            yield self.model
            return
        if adapter is None and self.adapters:
            with get_method(self.method).disabled(self.model) as base:
                yield base
            return
        if adapter is not None and len(self.adapters) > 1:
            self.model.set_adapter(adapter)
        yield self.model


@dataclass(frozen=True)
class Served:
    """One name a client can put in `model`."""

    name: str
    task: str                   # "causal-lm" | "classification"
    family: Family
    adapter: str | None         # the adapter's name inside its family; None for the base or a run's own copy
    method: str                 # "base" for the base model
    labels: tuple[str, ...] | None = None
    run: str | None = None
    max_length: int = 512       # classification: texts are cut to the length the run trained with

    def describe(self, base_name: str, shares_base: bool) -> dict:
        """Its `/v1/models` entry; `shares_base`: False when a whole copy of the base is held for it alone."""
        return {"id": self.name, "object": "model", "owned_by": "transferkit", "root": base_name,
                "parent": None if self.method == "base" else base_name, "task": self.task, "method": self.method,
                "shares_base": shares_base, "labels": list(self.labels) if self.labels else None,
                "run": Path(self.run).name if self.run else None}


def parse_adapter_args(values: list[str]) -> list[tuple[str, Path]]:
    """`NAME=RUN_DIR` pairs (a bare RUN_DIR is named after its folder), names unique."""
    pairs = []
    for value in values:
        name, sep, path = value.partition("=")
        name, path = (name, path) if sep else (Path(value).name, value)
        if not name or not path:
            raise UserError(f"--adapter '{value}': write NAME=RUN_DIR")
        if name in {n for n, _ in pairs}:
            raise UserError(f"--adapter '{value}': the name '{name}' is given twice")
        pairs.append((name, Path(path)))
    return pairs


class ModelPool:
    """Every served name and the families holding them; built once at start-up, read-only afterwards."""

    def __init__(self, base: str | None, adapters: list[tuple[str, Path]], device: torch.device,
                 serve_base: bool = True):
        if base is None and not adapters:
            raise UserError("serve: give --model, at least one --adapter NAME=RUN_DIR, or both")
        self.device = device
        self.created = int(time.time())  # OpenAI's `created` of every model: when this server loaded it
        self.served: dict[str, Served] = {}
        self.families: dict[tuple, Family] = {}
        configs = [(name, RunDir(path), finished_config(RunDir(path))) for name, path in adapters]
        self.base_name = base if base is not None else configs[0][2].model
        self.base_folder = resolve_model(self.base_name)
        for name, run, cfg in configs:
            if resolve_model(cfg.model) != self.base_folder:
                raise UserError(f"{run.path}: trained on '{cfg.model}', not on the served base '{self.base_name}'; "
                                f"serve it with --model {cfg.model}")
            if name == self.base_name:
                raise UserError(f"--adapter {name}=…: the name '{name}' is the base model's")
            self.add_run(name, run, cfg)
        if serve_base or not adapters:
            self.add_base()

    def add_run(self, name: str, run: RunDir, cfg) -> None:
        method = get_method(cfg.method.name)
        labels = run.read_labels()
        task = "classification" if labels else "causal-lm"
        peft_type = self.peft_type(run) if method.peft_format else None
        if peft_type is None:  # its own copy: the run as it trained
            model, tokenizer, _ = load_trained(run.path, self.device)
            self.served[name] = Served(name, task, Family(model, tokenizer), None, method.name,
                                       tuple(labels) if labels else None, str(run.path), cfg.data.max_length)
            return
        key = (task, tuple(labels or ()), method.quantize_base, peft_type)
        family = self.families.get(key)
        if family is None:
            family = self.families[key] = Family(*load_base(run, cfg, self.device), method.name)
        self.load_adapter(family, name, run, cfg)
        self.served[name] = Served(name, task, family, name, method.name, tuple(labels) if labels else None,
                                   str(run.path), cfg.data.max_length)

    @staticmethod
    def peft_type(run: RunDir) -> str:
        return json.loads((run.adapter / "adapter_config.json").read_text()).get("peft_type", "?")

    @staticmethod
    def load_adapter(family: Family, name: str, run: RunDir, cfg) -> None:
        from peft import PeftModel

        check_adapter_folder(run.adapter, family.model if not family.adapters else family.model.get_base_model(),
                             cfg.model)
        try:
            if not family.adapters:
                family.model = PeftModel.from_pretrained(family.model, str(run.adapter), adapter_name=name)
            else:
                family.model.load_adapter(str(run.adapter), adapter_name=name)
        except (RuntimeError, ValueError, KeyError) as exc:  # shapes or names that do not fit
            raise adapter_misfit(run, cfg, exc) from None
        config = family.model.peft_config[name]
        if getattr(config, "use_dora", False):
            lean_dora(family.model)  # the norm as training computed it (methods/dora.py)
        family.model.eval()
        family.adapters.append(name)
        family.mixable = (len(family.adapters) == 1 or family.mixable) and config.peft_type == "LORA" and \
            not getattr(config, "use_dora", False)

    def add_base(self) -> None:
        """The base under its own name: a causal-LM family with its adapters off, else the plain model. An encoder
        base has no head of its own, so only its classification runs are served."""
        from ..models.loading import architecture

        if architecture(self.base_folder) == "encoder":
            return
        shared = next((f for key, f in self.families.items() if key[0] == "causal-lm" and not key[2]), None)
        if shared is None:
            model, tokenizer, _ = load_model(self.base_name, device=self.device)
            shared = Family(model.eval(), tokenizer)
        self.served[self.base_name] = Served(self.base_name, "causal-lm", shared, None, "base")

    def get(self, name: str) -> Served | None:
        return self.served.get(name)

    def models(self) -> list[dict]:
        everyone = list(self.served.values())
        return [{**served.describe(self.base_name, sum(other.family is served.family for other in everyone) > 1),
                 "created": self.created} for served in everyone]
