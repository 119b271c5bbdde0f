"""`transferkit diagnose` and `transferkit probe`: where the task lives in a network and where training changed it.

    diagnose(base, tuned, …)   for the same examples through both models:
        probes      per layer, a cross-validated logistic-regression probe on pooled hidden states
                    (`evaluate.forgetting.probe_accuracy`) for base and tuned: where task information appears
        similarity  linear CKA between base layer i and tuned layer j (`similarity.py`): the diagonal says how
                    much each layer's representation changed, the matrix where it moved
        weights     per block matrix ‖ΔW‖/‖W‖, effective rank and rank for 90 % (`weights.py`)
        reading     one paragraph: which layers changed most, where task information appears, and the freeze depth
                    the run suggests (the lowest layers whose representation kept CKA ≥ `UNCHANGED`)
    probe_curve(model, …)      the probe curve of one model alone: which layers already carry the task

Memory: the hidden states are streamed in batches and only each example's pooled vector per layer is kept: at most
`max_examples` × layers × hidden float32 numbers per model (all-MiniLM-L6-v2, 512 examples: 512 × 7 × 384 × 4 B =
5.5 MB; SmolLM2-135M: 512 × 31 × 576 × 4 B = 37 MB), plus one [n, n] Gram matrix per layer for CKA.

    <run>/diagnostics/
        diagnostics.json   everything below, with the examples' file and count
        diagnostics.png    probe accuracy by layer, CKA by layer, relative weight change by layer, CKA matrix
"""

from __future__ import annotations

import copy
import json
import random
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..data import read_examples
from ..data.schema import prompt_and_reference
from ..errors import ConfigError, DataError, UserError
from ..evaluate.forgetting import layer_states, probe_accuracy
from ..methods import get_method
from ..models import load_model, task_of
from ..models.loading import architecture
from ..options import DiagnoseConfig, RunConfig
from ..rundir import RunDir
from ..runtime import Runtime, store_like, underlying_model
from .similarity import cka_matrix
from .weights import by_layer, lora_updates, weight_changes

UNCHANGED = 0.99     # a layer whose base/tuned CKA stays at or above this counts as unchanged (freeze suggestion)
FOLDS = 5            # cross-validation folds of each probe (fewer when a class has fewer examples)


@dataclass(frozen=True)
class Sample:
    """The examples every measurement uses: the model's input text and, where there is one, a label to probe."""

    source: str
    texts: list[str]
    labels: list[str] | None


def read_sample(path: str, label_column: str | None, max_examples: int, seed: int = 0) -> Sample:
    """Up to `max_examples` examples of `path` (a seeded random subset when there are more): classification text
    with its label, an instruction's prompt, or plain text; `label_column` names a column to probe instead of
    (or, for instruction and text data, as) the label. A row without it is refused by file and line."""
    schema, examples = read_examples(path, slice_column=label_column or "slice")
    if len(examples) > max_examples:
        examples = random.Random(seed).sample(examples, max_examples)
    if schema == "instruction":
        texts = ["\n".join(m["content"] for m in prompt_and_reference(ex)[0]) for ex in examples]
    else:
        texts = [ex.text if ex.text_pair is None else f"{ex.text}\n{ex.text_pair}" for ex in examples]
    if label_column:
        missing = next((ex for ex in examples if ex.slice is None), None)
        if missing is not None:
            raise DataError(missing.source, "no value to probe (the label column)", missing.line, label_column)
        labels = [ex.slice for ex in examples]
    else:
        labels = [ex.label for ex in examples] if schema == "classification" else None
    return Sample(path, texts, labels)


def check_probe_labels(labels: list[str]) -> Counter:
    """The examples per label, when a probe can be cross-validated on them (two labels, two examples each)."""
    counts = Counter(labels)
    if len(counts) < 2 or min(counts.values()) < 2:
        raise UserError(f"probes need at least two labels with two examples each; the sample has {dict(counts)}")
    return counts


def probe_curve(states: np.ndarray, labels: list[str], desc: str) -> list[float]:
    """Cross-validated probe accuracy at every layer of `states`: [n, layers, hidden]."""
    folds = min(FOLDS, min(check_probe_labels(labels).values()))
    return [probe_accuracy(states[:, i], labels, folds) for i in tqdm(range(states.shape[1]), desc=desc, unit="layer")]


def probe_model(model, tokenizer, sample: Sample, runtime: Runtime, pooling: str, layers: list[int] | None = None,
                batch_size: int = 16) -> dict:
    """`transferkit probe`: the probe accuracy of one model at every layer, before any training."""
    require_labels(sample)
    states = layer_states(model, tokenizer, sample.texts, runtime, batch_size, layers, pooling, desc="hidden states")
    curve = probe_curve(states, sample.labels, "probes")
    numbers, best = layer_numbers(states.shape[1], layers), int(np.argmax(curve))
    return {"examples": len(sample.texts), "source": sample.source, "pooling": pooling, "layers": numbers,
            "probe": curve, "chance": max(Counter(sample.labels).values()) / len(sample.labels),
            "reading": f"The task is most linearly readable at layer {numbers[best]} (probe accuracy "
                       f"{curve[best]:.3f})."}


def require_labels(sample: Sample) -> None:
    if sample.labels is None:
        raise UserError(f"{sample.source}: no labels to probe; give classification data (text, label) or "
                        f"--label-column")


def layer_numbers(count: int, layers: list[int] | None) -> list[int]:
    """The hidden-state indices measured (0 the embeddings, i the output of block i): `layers`, or all `count`."""
    return list(range(count)) if layers is None else list(layers)


def diagnose(base, tuned, tokenizer, sample: Sample, runtime: Runtime, *, pooling: str, merge=None,
             layers: list[int] | None = None, debiased: bool = False, batch_size: int = 16) -> dict:
    """The module docstring's measurements of `tuned` against its `base` on `sample`. `merge`: the method's merge
    (a copy of `tuned` is merged for the weight change where LoRA's factors are not read directly); neither model
    is changed."""
    base_states = layer_states(base, tokenizer, sample.texts, runtime, batch_size, layers, pooling,
                               desc="base: hidden states")
    tuned_states = layer_states(tuned, tokenizer, sample.texts, runtime, batch_size, layers, pooling,
                                desc="tuned: hidden states")
    numbers = layer_numbers(base_states.shape[1], layers)
    matrix = cka_matrix(base_states, tuned_states, debiased)
    defined = [[None if np.isnan(v) else float(v) for v in row] for row in matrix]  # None: a constant layer
    result = {"examples": len(sample.texts), "source": sample.source, "pooling": pooling, "layers": numbers,
              "cka": {"debiased": debiased, "by_layer": [defined[i][i] for i in range(len(numbers))],
                      "matrix": defined}}
    if sample.labels is not None:
        result["probes"] = {"base": probe_curve(base_states, sample.labels, "probes: base"),
                            "tuned": probe_curve(tuned_states, sample.labels, "probes: tuned")}
    weighed = tuned
    if merge is not None and not lora_updates(tuned):
        weighed = merge(copy.deepcopy(tuned))
    changes = weight_changes(base, weighed)
    result["weights"] = {"matrices": [asdict(c) for c in changes], "by_layer": by_layer(changes)}
    result["suggested_freeze_bottom"] = unchanged_bottom(numbers, result["cka"]["by_layer"])
    result["reading"] = reading(result)
    return result


def unchanged_bottom(numbers: list[int], cka: list[float]) -> int:
    """How many of the lowest blocks kept CKA ≥ `UNCHANGED` (block i is hidden-state index i; index 0, the
    embeddings, does not count as a block): `method.freeze_bottom` for a freeze run."""
    blocks = 0
    for number, value in zip(numbers, cka):
        if number == 0:
            continue
        if value is None or value < UNCHANGED or number != blocks + 1:
            break
        blocks = number
    return blocks


def reading(result: dict) -> str:
    """One paragraph from the numbers: where the representation changed, where the task is readable, how the
    weights moved, and the freeze depth it suggests."""
    numbers, cka = result["layers"], result["cka"]["by_layer"]
    order = sorted((i for i, v in enumerate(cka) if v is not None), key=lambda i: cka[i])
    moved = ", ".join(f"{numbers[i]} (CKA {cka[i]:.3f})" for i in order[:2])
    text = [f"The representation changed most at layer{'s' if len(order) > 1 else ''} {moved}; "
            f"the least at layer {numbers[order[-1]]} (CKA {cka[order[-1]]:.3f})." if order else ""]
    undefined = [str(numbers[i]) for i, v in enumerate(cka) if v is None]
    if undefined:
        text.append(f"CKA is undefined at layer {', '.join(undefined)}: every example has the same representation "
                    f"there (with last-token pooling, the same last token).")
    if "probes" in result:
        base, tuned = result["probes"]["base"], result["probes"]["tuned"]
        text.append(f"The task is most readable at layer {numbers[int(np.argmax(base))]} of the base (probe "
                    f"{max(base):.3f}) and layer {numbers[int(np.argmax(tuned))]} after tuning ({max(tuned):.3f}).")
    layers = result["weights"]["by_layer"]
    if layers and max(row["relative"] for row in layers) > 0:
        top = max(layers, key=lambda row: row["relative"])
        ranks = [m["effective_rank"] for m in result["weights"]["matrices"] if m["delta_norm"] > 0]
        text.append(f"The weights moved most in block {top['layer']} (‖ΔW‖/‖W‖ {top['relative']:.2e}); the "
                    f"{len(ranks)} changed matrices' updates have median effective rank {np.median(ranks):.1f}.")
    else:
        text.append("No block weight changed: the method trained parameters of its own beside frozen weights.")
    freeze = result["suggested_freeze_bottom"]
    text.append(f"The lowest {freeze} block{'s' if freeze != 1 else ''} kept CKA ≥ {UNCHANGED}: "
                f"method.freeze_bottom={freeze} would keep {'them' if freeze != 1 else 'it'} frozen."
                if freeze else f"Already block 1 changed (CKA < {UNCHANGED}): freezing blocks would cost this run "
                               f"something.")
    return " ".join(t for t in text if t)


def write_diagnostics(run: RunDir, result: dict) -> Path:
    """<run>/diagnostics/ (diagnostics.json, diagnostics.png), replaced atomically; the JSON's path."""
    from .plots import plot_diagnostics

    def write(tmp: Path) -> None:
        (tmp / "diagnostics.json").write_text(json.dumps(result, indent=2) + "\n")
        plot_diagnostics(result, tmp / "diagnostics.png")

    run.write_dir_atomic(run.diagnostics, write)
    return run.diagnostics / "diagnostics.json"


def parse_layers(text: str, count: int) -> list[int] | None:
    """--layers: "all" (None) or comma-separated hidden-state indices within 0..count-1."""
    if text == "all":
        return None
    try:
        layers = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        layers = []
    if not layers or not all(0 <= i < count for i in layers):
        raise ConfigError(f"--layers '{text}': give 'all' or layer numbers within 0..{count - 1} (0: the embeddings), "
                          f"e.g. 0,3,6")
    return layers


def diagnose_run(run: RunDir, tuned, tokenizer, cfg: RunConfig, runtime: Runtime, options: DiagnoseConfig,
                 layers: str = "all") -> dict:
    """`diagnose` of a run's tuned model (in memory: at the end of training, or loaded back by `transferkit
    diagnose`) against a fresh load of its base, on `options.data` (default: the run's test, validation or training
    file); written to <run>/diagnostics/."""
    base, _, folder = load_model(cfg.model, task=task_of(tuned), labels=run.read_labels(), device=runtime.device,
                                 tokenizer=tokenizer, attention=underlying_model(tuned).config._attn_implementation,
                                 trust_remote_code=cfg.trust_remote_code, pooling=cfg.method.pooling)
    store_like(base, tuned)  # bf16-stored frozen weights: the base in the same storage, or they would count as moved
    data = options.data or cfg.data.held_out_file
    sample = read_sample(data, options.label_column, options.max_examples, cfg.seed)
    result = diagnose(base, tuned, tokenizer, sample, runtime, pooling=pooling_for(folder, options.pooling),
                      merge=get_method(cfg.method.name).merge,
                      layers=parse_layers(layers, base.config.num_hidden_layers + 1), debiased=options.debiased)
    write_diagnostics(run, result)
    return result


def pooling_for(folder: Path, choice: str) -> str:
    """`choice`, or for "auto" the mean over tokens for an encoder, the last token for a decoder (the model in
    `folder`)."""
    return choice if choice != "auto" else "last" if architecture(folder) == "decoder" else "mean"
