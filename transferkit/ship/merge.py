"""`transferkit merge`: a run's adapter folded into its base, saved as a plain Hugging Face folder.

    OUT/
      config.json, model.safetensors, generation_config.json    the merged model (causal LM: AutoModelForCausalLM
                                                                 loads it; classification: the backbone, AutoModel)
      tokenizer.json, tokenizer_config.json, chat template       the run's tokenizer as trained
      classifier.safetensors, classifier.json                    classification only: the head (weight, bias) and
                                                                 how it reads the backbone (pooling, labels)
      merge_report.json                                          the fidelity below, the run, dtype, versions

How each method folds in: LoRA / rsLoRA / DoRA / IA3 through peft's `merge_and_unload`; QLoRA onto its dequantized
base (`merge_dequantized`: every NF4 weight dequantized to float — the weights the run computed with — and s·B A
added in float; never re-quantized, which is where peft's own 4-bit merge loses accuracy); full fine-tuning and
freeze are already their own merged form. Prefix and
prompt tuning, bottleneck adapters and the probe add parameters beside the base rather than changing its weights:
they cannot merge, and say so.

Fidelity, measured before anything is written: the merged model in the requested dtype against the run's model as
it trained (its adapter unmerged; a QLoRA run's on its 4-bit base) on up to `SAMPLE` examples of the run's test file
(else validation, else train: `DataConfig.held_out_file`), teacher-forced:

    max |Δlogit|           the largest difference of any logit at any position (classification: any class logit)
    equal greedy tokens    the share of positions whose argmax agrees (classification: of examples whose class agrees)

The merge is refused (exit 2) when either misses `TOLERANCE[dtype]`, unless forced; merge_report.json records both.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..data import read_examples
from ..data.batching import collate
from ..data.tokenize import tokenize_examples
from ..errors import UserError
from ..files import write_dir_atomic
from ..methods import Method, get_method
from ..models import task_of
from ..rundir import RunDir
from ..runs import finished_config, load_trained
from ..runtime import underlying_model

SAMPLE = 16
# (max |Δlogit|, least share of equal greedy tokens). fp32: float rounding only (LoRA on SmolLM2-135M: 1e-4; a QLoRA
# merge onto the dequantized base: < 1e-3; onto the original float weights it would drift by the quantization error
# and be refused). bf16: 8 bits of mantissa cost the base model alone 1.7 logits / 1.7 % of greedy tokens on the
# quickstart sample (benchmarks/merge_fidelity.py, docs/ship.md); the tolerance allows that and the merge's rounding.
TOLERANCE = {"fp32": (0.01, 0.99), "bf16": (3.0, 0.95)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Fidelity:
    max_abs_logit: float
    equal_greedy: float
    positions: int          # positions (causal LM) or examples (classification) compared
    tolerance: tuple[float, float]

    @property
    def within(self) -> bool:
        return self.max_abs_logit <= self.tolerance[0] and self.equal_greedy >= self.tolerance[1]


def folding(method: Method):
    """How `method`'s trained model becomes a plain model, or None when it cannot."""
    if method.can_merge:
        return method.merge
    if method.quantize_base:
        return merge_dequantized
    if method.trains_base_weights:
        return lambda model: model
    return None


def merge_dequantized(model: torch.nn.Module) -> torch.nn.Module:
    """A QLoRA model as a plain float model: each 4-bit linear layer becomes an `nn.Linear` with its dequantized
    weight, plus s·B A where LoRA adapted it; peft's fully trained modules (a classification head) are kept as
    trained; the quantization config is dropped so that transformers loads the result as float."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as F
    from peft.utils.other import ModulesToSaveWrapper

    def float_weight(layer) -> torch.Tensor:
        if isinstance(layer, bnb.nn.Linear4bit):
            return F.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
        return layer.weight.detach().float()

    def plain(layer, weight: torch.Tensor) -> torch.nn.Linear:
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=layer.bias is not None)
        linear.weight.data = weight.contiguous()
        if layer.bias is not None:
            linear.bias.data = layer.bias.detach().float().clone()
        return linear

    inner = model.get_base_model()
    for parent in list(inner.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, ModulesToSaveWrapper):
                setattr(parent, name, child.modules_to_save[child.active_adapter])
            elif hasattr(child, "base_layer") and hasattr(child, "lora_A"):
                (adapter,) = child.active_adapters
                b, a = child.lora_B[adapter].weight.float(), child.lora_A[adapter].weight.float()
                delta = child.scaling[adapter] * b @ a
                setattr(parent, name, plain(child.base_layer, float_weight(child.base_layer) + delta.detach()))
            elif isinstance(child, bnb.nn.Linear4bit):
                setattr(parent, name, plain(child, float_weight(child)))
    for module in (inner, getattr(inner, "backbone", inner)):  # a classifier's transformers model is its backbone
        if hasattr(module.config, "quantization_config"):
            del module.config.quantization_config
        for attribute in ("is_loaded_in_4bit", "is_quantized", "hf_quantizer", "quantization_method"):
            if attribute in vars(module):
                vars(module)[attribute] = None if attribute in ("hf_quantizer", "quantization_method") else False
    return inner


def refuse_unmergeable(method: Method) -> None:
    if folding(method) is None:
        raise UserError(f"method '{method.name}' cannot be merged: it trains parameters beside the base's weights "
                        f"({method.summary}), not a change of them. Ship the adapter instead (`transferkit export "
                        f"RUN_DIR --target peft` where it is in PEFT format), or use the run as it is "
                        f"(`transferkit generate --adapter RUN_DIR`, `transferkit predict RUN_DIR`)")


def check_free(out: Path) -> None:
    """An output folder must be new or empty: nothing of the user's is replaced."""
    if out.is_file() or (out.is_dir() and any(out.iterdir())):
        raise UserError(f"{out}: already exists and is not empty; choose a new or empty folder")


@torch.no_grad()
def sample_logits(model, batch: dict) -> torch.Tensor:
    """Logits over the sample, float32: [rows, T, vocab] (causal LM) or [rows, classes]."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()


def sample_batch(cfg, tokenizer, labels: list[str] | None) -> dict:
    """Up to SAMPLE examples of the run's held-out file, tokenized and padded as in training."""
    schema, examples = read_examples(cfg.data.held_out_file)
    items = tokenize_examples(tokenizer, examples[:SAMPLE], schema, cfg.data.max_length, labels=labels)
    return collate(items, tokenizer.pad_token_id)


def compare(reference: torch.Tensor, merged: torch.Tensor, mask: torch.Tensor, tolerance) -> Fidelity:
    if reference.dim() == 3:  # causal LM: every real position
        keep = mask.bool()
        reference, merged = reference[keep], merged[keep]                   # [positions, vocab]
    return Fidelity(float((reference - merged).abs().max()), float((reference.argmax(-1) == merged.argmax(-1))
                                                                   .float().mean()), len(reference), tolerance)


def merge_run(run_dir: str | Path, out: str | Path, dtype: str = "fp32", force: bool = False) -> dict:
    """Fold the run's adapter into its base and save OUT (module docstring); returns merge_report.json's content."""
    run = RunDir(run_dir)
    method = get_method(finished_config(run).method.name)
    refuse_unmergeable(method)
    check_free(Path(out))
    trained, tokenizer, cfg = load_trained(run.path)
    labels = run.read_labels()
    batch = sample_batch(cfg, tokenizer, labels)
    reference = sample_logits(trained, batch)
    merged = folding(method)(trained).to(DTYPES[dtype])
    fidelity = compare(reference, sample_logits(merged, batch), batch["attention_mask"], TOLERANCE[dtype])
    report = {"run": str(run.path), "method": method.name, "base": cfg.model, "dtype": dtype,
              "fidelity": asdict(fidelity), "within_tolerance": fidelity.within,
              "forced": force and not fidelity.within}
    if not fidelity.within and not force:
        raise UserError(f"merge refused: max |Δlogit| {fidelity.max_abs_logit:.3g} (tolerance "
                        f"{fidelity.tolerance[0]:g}), equal greedy tokens {fidelity.equal_greedy:.1%} (at least "
                        f"{fidelity.tolerance[1]:.0%}) against the unmerged run on {fidelity.positions} positions; "
                        f"--dtype fp32 keeps more, --force writes it anyway")
    write_dir_atomic(out, lambda tmp: save_merged(merged, tokenizer, labels, tmp, report))
    return report


def save_merged(model, tokenizer, labels: list[str] | None, folder: Path, report: dict) -> None:
    """The merged model as a plain Hugging Face folder (module docstring)."""
    from safetensors.torch import save_file

    if task_of(model) == "classification":
        inner = underlying_model(model)
        inner.backbone.save_pretrained(str(folder), safe_serialization=True)
        head = {name: p.detach().contiguous() for name, p in inner.classifier.named_parameters()}
        save_file(head, str(folder / "classifier.safetensors"))
        (folder / "classifier.json").write_text(json.dumps(
            {"pooling": inner.pooling, "labels": labels, "reads": "the backbone's last hidden state, pooled ('mean' "
             "over real tokens, 'last' real token, 'cls' first token), then logits = pooled @ weight.T (+ bias)"},
            indent=2) + "\n")
    else:
        model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    (folder / "merge_report.json").write_text(json.dumps(report, indent=2) + "\n")
