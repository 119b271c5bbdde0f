"""`transferkit recommend`: which method to try first, from the data, the model and the machine.

The decision framework of the project's seeds (DESIGN.md "Decision rules"): measure the data and its shift
from what the model already knows, try the cheapest rung that can work, step up only if it is needed, within
the machine and the budget — and beat the prompting baseline and the probe first.

    measured                 how
    data                     schema, examples, tokens, label balance, duplicate rows (the training file)
    domain shift (decoder)   the base's perplexity on the data's labelled tokens ÷ its perplexity on general
                             English (Jane Austen); ≥ LARGE_SHIFT is a large shift
    domain shift (encoder)   a logistic-regression probe on the frozen, pooled features, 5-fold cross-validated
                             accuracy: ≥ PROBE_ENOUGH the features already separate the classes, < PROBE_WEAK
                             they need adapting
    what fits                every candidate priced by `transferkit cost` on the hardware

Rules, in order (each a named constant below):

1. the capacity the data needs: a probe when its features suffice; LoRA otherwise; on a large shift LoRA at
   twice the rank (decoders), and full fine-tuning with layer-wise LR decay only with ≥ SMALL_DATA examples
   (below it, PEFT: fewer parameters than examples can pin down);
2. forgetting matters (`--forgetting low`): full fine-tuning is left out (PEFT keeps the base intact;
   replay / EWC are the remedies when it must be full);
3. a candidate that does not fit the memory, or takes longer than the budget, is ranked last, with why;
   LoRA that does not fit is replaced by QLoRA on a 4-bit base.

The answer is every rung ranked — the rung the data needs first, then by distance from it and cost — each
with its reasons in one line; the top one can be written as a ready-to-run recipe.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass, field

from .config import with_method
from .cost import Cost, Hardware, estimate
from .data import TASK_OF_SCHEMA, read_train
from .data.schema import label_vocabulary
from .errors import UserError
from .options import RunConfig

SMALL_DATA = 10_000      # examples: below, parameter-efficient methods (seeds: "< 10k examples → PEFT")
FEW_EXAMPLES = 32        # examples: below, too few to train on; a decoder is prompted with them as shots
LARGE_SHIFT = 2.0        # data perplexity ÷ general-text perplexity at or above which the shift is large
# Probe accuracy at or above which the frozen features suffice (a probe first). 0.90 at first; measured by
# experiments/recommend_check.py (2026-11-30): austen-speech's probe had 0.92 and the probe then scored 95.3 %
# macro-F1 against 97.7 % for freeze / full and 97.3 % for LoRA r=8 (faster than both) — 2.4 points lost.
PROBE_ENOUGH = 0.95
PROBE_WEAK = 0.70        # probe accuracy below which the features need adapting (more capacity)
SHIFT_SAMPLE = 128       # training examples the shift is measured on (the first ones, in file order)
BASE_RANK = 8            # LoRA rank for a small shift; twice it for a large one

# The ladder, cheapest first: (rung, method, overrides). A rung's capacity is its index; the prompting
# baseline (index 0) trains nothing: every run measures it (eval.baseline) and must beat it.
PROMPTING = "prompting (k-shot, nothing trained)"
LADDER = [
    (PROMPTING, None, {}),
    ("probe", "probe", {}),
    ("freeze top 2", "freeze", {"method.train_top": 2}),
    (f"LoRA r={BASE_RANK}", "lora", {"method.r": BASE_RANK}),
    (f"LoRA r={2 * BASE_RANK}", "lora", {"method.r": 2 * BASE_RANK}),
    ("full, LLRD 0.9", "full", {"method.llrd": 0.9}),
]


@dataclass
class DataFacts:
    schema: str
    task: str
    examples: int
    tokens: int
    label_counts: dict[str, int] | None
    duplicates: int


@dataclass
class Shift:
    kind: str            # "perplexity ratio" or "probe accuracy"
    value: float
    large: bool
    detail: str


@dataclass
class Option:
    rung: str
    method: str
    overrides: dict
    reasons: list[str]
    cost: Cost | None = None
    usable: bool = True   # fits the memory and the budget


@dataclass
class Recommendation:
    data: DataFacts
    shift: Shift
    need: str                        # the rung the data calls for
    options: list[Option] = field(default_factory=list)

    def trainable_top(self) -> Option:
        """The best-ranked option that trains something (the recipe's), usable ones first."""
        return next(option for option in self.options if option.method is not None)


def data_facts(cfg: RunConfig, train: tuple[str, list], tokenizer) -> DataFacts:
    from .data.tokenize import tokenize_examples

    schema, examples = train
    labels = label_vocabulary(examples, cfg.data.train) if schema == "classification" else None
    tokenized = tokenize_examples(tokenizer, examples, schema, cfg.data.max_length, "truncate", labels)
    counts = dict(Counter(ex.label for ex in examples)) if labels else None
    keys = [tuple(t.input_ids) for t in tokenized]
    return DataFacts(schema, TASK_OF_SCHEMA[schema], len(examples), sum(map(len, keys)), counts,
                     len(keys) - len(set(keys)))


def balanced_sample(examples: list, size: int) -> list:
    """Up to `size` examples taken in turn from each class (in file order within a class)."""
    by_label: dict[str, list] = {}
    for ex in examples:
        by_label.setdefault(ex.label, []).append(ex)
    queues, sample = list(by_label.values()), []
    for i in range(max(map(len, queues))):
        sample.extend(queue[i] for queue in queues if i < len(queue))
    return sample[:size]


def measure_shift(cfg: RunConfig, train: tuple[str, list], tokenizer, runtime) -> Shift:
    """How far the data is from what the base already does (see the module docstring)."""
    from .data.tokenize import tokenize_examples
    from .evaluate.forgetting import general_ability, pooled_hidden_states, probe_accuracy
    from .evaluate.metrics import mean_loss
    from .models import load_model

    schema, examples = train
    if schema == "classification":
        sample = balanced_sample(examples, SHIFT_SAMPLE)
        folds = min(5, min(Counter(ex.label for ex in sample).values()))
        if folds < 2:
            raise UserError(f"{cfg.data.train}: every class needs at least 2 examples to measure a probe")
        labels = label_vocabulary(examples, cfg.data.train)
        model, tokenizer, _ = load_model(cfg.model, task="classification", labels=labels, device=runtime.device,
                                         tokenizer=tokenizer, trust_remote_code=cfg.trust_remote_code)
        features = pooled_hidden_states(model, tokenizer, [ex.text for ex in sample], runtime)
        accuracy = probe_accuracy(features, [ex.label for ex in sample], folds)
        return Shift("probe accuracy", accuracy, accuracy < PROBE_WEAK,
                     f"{folds}-fold logistic regression on the frozen mean-pooled features of {len(sample)} examples")
    model, tokenizer, _ = load_model(cfg.model, device=runtime.device, tokenizer=tokenizer,
                                     trust_remote_code=cfg.trust_remote_code)
    tokenized = tokenize_examples(tokenizer, examples[:SHIFT_SAMPLE], schema, cfg.data.max_length)
    data = mean_loss(model, tokenized, tokenizer.pad_token_id, 8, runtime, desc="the data: perplexity")
    general = general_ability(model, tokenizer, "causal-lm", "general", runtime, max_length=cfg.data.max_length)
    ratio = data["perplexity"] / general["perplexity"]
    return Shift("perplexity ratio", ratio, ratio >= LARGE_SHIFT,
                 f"perplexity {data['perplexity']:.1f} on {len(tokenized)} training examples' labelled tokens ÷ "
                 f"{general['perplexity']:.1f} on {general['text']}")


def recommend(cfg: RunConfig, hardware: Hardware, *, forgetting: str = "any",
              budget_minutes: float | None = None) -> Recommendation:
    """Measure the data, its shift and what fits, and rank the ladder (see the module docstring)."""
    from .models import load_tokenizer, resolve_model
    from .runtime import Runtime

    check_budget(budget_minutes)
    if forgetting not in ("low", "any"):
        raise UserError(f"--forgetting must be low or any, got {forgetting!r}")
    train = read_train(cfg.data)
    tokenizer = load_tokenizer(resolve_model(cfg.model), cfg.trust_remote_code)
    facts = data_facts(cfg, train, tokenizer)
    shift = measure_shift(cfg, train, tokenizer, Runtime.resolve("auto", "auto"))
    need, why = needed_rung(facts, shift, forgetting)
    options = rank(facts, need, why, forgetting)
    price(options, cfg, hardware, budget_minutes)
    return Recommendation(facts, shift, LADDER[need][0], options)


def needed_rung(facts: DataFacts, shift: Shift, forgetting: str) -> tuple[int, list[str]]:
    """(index into LADDER of the rung the data calls for, why)."""
    why = []
    if facts.task == "causal-lm" and facts.examples < FEW_EXAMPLES:
        return 0, [f"{facts.examples} examples (< {FEW_EXAMPLES}) are too few to train on: show them as shots"]
    if facts.task == "classification" and shift.value >= PROBE_ENOUGH:
        return 1, [f"the frozen features already separate the classes (probe {shift.value:.0%} ≥ "
                   f"{PROBE_ENOUGH:.0%})"]
    if facts.task == "classification" and shift.value >= PROBE_WEAK:
        why.append(f"the frozen features separate the classes only partly (probe {shift.value:.0%})")
        need = 3
    elif shift.large:
        why.append(f"large domain shift ({shift.kind} {shift.value:.2f})")
        need = 4
    else:
        why.append(f"small domain shift ({shift.kind} {shift.value:.2f})")
        need = 3
    if need == 4 and facts.examples >= SMALL_DATA and forgetting != "low":
        why.append(f"{facts.examples:,} examples (≥ {SMALL_DATA:,}) can train every weight")
        need = 5
    elif facts.examples < SMALL_DATA:
        why.append(f"{facts.examples:,} examples (< {SMALL_DATA:,}): parameter-efficient")
    if forgetting == "low":
        why.append("forgetting must stay low: the base stays frozen")
    return need, why


def rank(facts: DataFacts, need: int, why: list[str], forgetting: str) -> list[Option]:
    """The ladder in order of preference: the needed rung, then by distance from it, cheaper first."""
    options = []
    for index, (rung, method, overrides) in enumerate(LADDER):
        if method == "probe" and facts.task != "classification" or method is None and facts.task != "causal-lm":
            continue  # a probe classifies; prompting needs a decoder's generation
        if method == "full" and forgetting == "low":
            continue
        if index == need:
            reasons = list(why)
        elif index < need:
            reasons = ["cheaper, but less capacity than the data calls for"]
        else:
            reasons = ["more capacity than the data calls for, at more cost"]
        options.append((abs(index - need) + (0.5 if index > need else 0), Option(rung, method, overrides, reasons)))
    return [option for _, option in sorted(options, key=lambda pair: pair[0])]


def price(options: list[Option], cfg: RunConfig, hardware: Hardware, budget_minutes: float | None) -> None:
    """Each option's cost on `hardware`; one that does not fit or overruns the budget is marked unusable (LoRA
    that does not fit becomes QLoRA when that fits)."""
    for option in options:
        if option.method is None:  # prompting trains nothing
            continue
        option.cost = estimate(option_config(cfg, option), hardware)
        if not option.cost.fits and option.method == "lora":
            qlora = dataclasses.replace(option, method="qlora", rung=option.rung.replace("LoRA", "QLoRA"))
            qcost = estimate(option_config(cfg, qlora), hardware)
            if qcost.fits:
                option.method, option.rung, option.cost = qlora.method, qlora.rung, qcost
                option.reasons.append("LoRA's float base does not fit: QLoRA's 4-bit base does")
        if not option.cost.fits:
            option.usable = False
            option.reasons.append(f"does not fit {hardware.name}'s memory")
        elif budget_minutes is not None and option.cost.seconds > budget_minutes * 60:
            option.usable = False
            option.reasons.append(f"over the {budget_minutes:g}-minute budget ({option.cost.seconds / 60:.0f} min)")
    options.sort(key=lambda option: not option.usable)  # stable: usable ones keep their order


def option_config(cfg: RunConfig, option: Option) -> RunConfig:
    return with_method(cfg, option.method, option.overrides)


def check_budget(budget_minutes: float | None) -> None:
    if budget_minutes is not None and not (budget_minutes > 0 and math.isfinite(budget_minutes)):
        raise UserError(f"--budget-minutes must be a positive number of minutes, got {budget_minutes}")


def as_dict(rec: Recommendation) -> dict:
    return {"data": dataclasses.asdict(rec.data), "shift": dataclasses.asdict(rec.shift), "needs": rec.need,
            "options": [{"rung": o.rung, "method": o.method, "overrides": o.overrides, "usable": o.usable,
                         "reasons": o.reasons, "cost": None if o.cost is None else o.cost.as_dict()}
                        for o in rec.options]}


def format_recommendation(rec: Recommendation) -> str:
    from .cost.format import duration, mib

    d, shift = rec.data, rec.shift
    balance = "" if d.label_counts is None else ", classes " + ", ".join(
        f"{name} {count}" for name, count in sorted(d.label_counts.items()))
    lines = [f"data         {d.examples:,} {d.schema} examples, {d.tokens:,} tokens{balance}; {d.duplicates} "
             f"duplicate rows",
             f"shift        {shift.kind} {shift.value:.2f} ({'large' if shift.large else 'not large'}): {shift.detail}",
             f"needs        {rec.need}", ""]
    for number, option in enumerate(rec.options, 1):
        price = "" if option.cost is None else (f" — peak {mib(option.cost.peak_bytes)}, "
                                                f"{duration(option.cost.seconds)}, ${option.cost.dollars:,.2f}")
        mark = "" if option.usable else "  [not usable]"
        lines.append(f"{number}. {option.rung}{price}{mark}\n   {'; '.join(option.reasons)}")
    return "\n".join(lines)


def recipe_text(rec: Recommendation, cfg: RunConfig, date: str) -> str:
    """The top trainable option as a config file that `transferkit train` runs as written."""
    from .config import dump_config

    top = rec.trainable_top()
    chosen = option_config(cfg, top)
    chosen = dataclasses.replace(chosen, output_dir=f"runs/{top.method}")
    header = [f"# Written by `transferkit recommend` on {date}: {top.rung}.",
              *(f"#   {reason}" for reason in top.reasons),
              f"# Data: {rec.data.examples:,} examples; {rec.shift.kind} {rec.shift.value:.2f}.",
              "# Train with: transferkit train THIS_FILE"]
    return "\n".join(header) + "\n" + dump_config(chosen)
