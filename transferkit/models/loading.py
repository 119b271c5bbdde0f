"""Resolve a model reference and load it with its tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import ModelError
from ..runtime import own_memory
from .classifier import SequenceClassifier, resolve_pooling
from .gguf import converted_folder
from .packaged import PACKAGED, packaged_names, packaged_path

# Families that are bidirectional encoders: they have no causal-LM head worth training.
ENCODER_TYPES = {"bert", "roberta", "distilbert", "electra", "deberta", "deberta-v2", "xlm-roberta", "mpnet", "albert"}


def resolve_model(ref: str) -> Path:
    """Short name, HF folder, .gguf file or a finished run directory → a local HF folder with float weights (a run
    directory: its `merged/` folder, the run's adapter folded into its base; `api.train` writes it when a run first
    names the directory as its model)."""
    if ref in PACKAGED:
        path = packaged_path(ref)
    else:
        path = Path(ref).expanduser()
        if not path.exists():
            raise ModelError(
                f"unknown model '{ref}': not a packaged short name ({', '.join(packaged_names())}) "
                f"and no such file or folder")
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelError(f"{path}: a model file must be .gguf; for other formats give the HF folder")
        return converted_folder(path)
    if (path / "config.yaml").is_file() and (path / "adapter").is_dir():
        if not (path / "merged" / "config.json").is_file():
            raise ModelError(f"{path}: a transferkit run directory whose merged model is not written yet; "
                             f"`transferkit train` writes it when a run names this directory as its model, or run "
                             f"`transferkit merge {path} --out {path / 'merged'}`")
        return path / "merged"
    if not (path / "config.json").is_file():
        raise ModelError(f"{path}: not a Hugging Face model folder (no config.json)")
    return path


def model_type(folder: Path) -> str:
    try:
        return json.loads((folder / "config.json").read_text())["model_type"]
    except (KeyError, json.JSONDecodeError) as exc:
        raise ModelError(f"{folder / 'config.json'}: unreadable model config ({exc})") from None


def architecture(folder: Path) -> str:
    """"encoder" (bidirectional, no language-model head worth using) or "decoder"."""
    return "encoder" if model_type(folder) in ENCODER_TYPES else "decoder"


def load_tokenizer(folder: Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        # Padding positions are masked out of attention and loss, so any id works;
        # EOS is the usual choice and keeps the vocabulary unchanged.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def nf4_config(compute_dtype: torch.dtype):
    """4-bit NormalFloat with double-quantized block scales (QLoRA's recipe)."""
    from transformers import BitsAndBytesConfig

    # The output head stays in float (a classifier's new head is outside the quantized backbone).
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype,
                              llm_int8_skip_modules=["lm_head"])


def keep_4bit_weights_trainable(model: torch.nn.Module) -> None:
    """Stop bitsandbytes repacking NF4 weights for CPU inference. On AVX512-BF16 CPUs its first eval-mode,
    no-grad forward (a baseline, a validation) converts each weight to a layout whose matmul has no backward:
    gradients would stop flowing through every quantized layer for the rest of training."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def load_model(ref: str, *, task: str = "causal-lm", labels: list[str] | None = None,
               dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
               quantize_4bit: bool = False, compute_dtype: torch.dtype = torch.float32,
               attention: str | None = None, tokenizer=None, trust_remote_code: bool = False,
               pooling: str = "auto"):
    """Load a model for `task` and its tokenizer; returns (model, tokenizer, folder).

    task "causal-lm": the model with its language-model head (decoders only).
    task "classification": a `SequenceClassifier`: the backbone, `pooling` of its hidden states ("auto": what
    the model declares, else its architecture's convention; see `classifier.py`) and a new head over `labels`.
    quantize_4bit: store the linear layers' weights in NF4 (for QLoRA); `compute_dtype`
    is what they are dequantized to for each matmul.
    attention: "eager" or "sdpa" (None: the library's default).
    tokenizer: one already loaded from this model (else it is loaded here).
    trust_remote_code: let Python code shipped in the model folder run (off unless the config says so).
    """
    from transformers import AutoModel, AutoModelForCausalLM

    folder = resolve_model(ref)
    if task == "causal-lm" and architecture(folder) == "encoder":
        raise ModelError(
            f"model '{ref}' is an encoder ({model_type(folder)}); instruction and language-modeling tasks need a decoder "
            f"such as smollm2-135m")
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(folder, trust_remote_code)
    extra = {"attn_implementation": attention} if attention else {}
    if quantize_4bit:
        extra.update(quantization_config=nf4_config(compute_dtype), device_map=str(torch.device(device)))
    if task == "classification":
        extra.update(label_fields(labels, tokenizer.pad_token_id))
    auto = AutoModel if task == "classification" else AutoModelForCausalLM
    model = auto.from_pretrained(str(folder), dtype=dtype, trust_remote_code=trust_remote_code,
                                 use_safetensors=True, **extra)
    if quantize_4bit:
        # bitsandbytes read the whole float file to quantize it, and what it left in float (embeddings, norms, the
        # head) are views of that map: before a classifier wraps the backbone, the rest is copied out of it
        own_memory([*model.parameters(), *model.buffers()])
    if task == "classification":
        model = with_classifier(model, folder, pooling)
        model.classifier.to(device)
    if quantize_4bit:
        keep_4bit_weights_trainable(model)
    else:
        model.to(device)
    return model, tokenizer, folder


def label_fields(labels: list[str] | None, pad_token_id: int | None) -> dict:
    """The config fields a classification backbone carries: its classes (and the pad id pooling needs)."""
    if not labels:
        raise ValueError("a classification model needs its labels")
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
            "label2id": {name: i for i, name in enumerate(labels)}, "pad_token_id": pad_token_id}


def with_classifier(backbone: torch.nn.Module, folder: Path, pooling: str) -> SequenceClassifier:
    decoder = architecture(folder) == "decoder"
    return SequenceClassifier(backbone, resolve_pooling(pooling, folder, decoder), decoder)


def skeleton_model(ref: str, *, task: str = "causal-lm", labels: list[str] | None = None,
                   num_layers: int | None = None, attention: str | None = None, pooling: str = "auto",
                   trust_remote_code: bool = False) -> torch.nn.Module:
    """The model `load_model` would build, on the meta device: every module, parameter shape and dtype
    (fp32), no weight read. `num_layers` overrides the depth (the cost calculator builds 1 and 2 layers and
    extrapolates)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    folder = resolve_model(ref)
    fields = label_fields(labels, None) if task == "classification" else {}
    config = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code, **fields)
    if num_layers is not None:
        config.num_hidden_layers = num_layers
    if attention:
        config._attn_implementation = attention
    auto = AutoModel if task == "classification" else AutoModelForCausalLM
    with torch.device("meta"):
        model = auto.from_config(config, dtype=torch.float32, trust_remote_code=trust_remote_code)
        if task == "classification":
            model = with_classifier(model, folder, pooling)
    return model
