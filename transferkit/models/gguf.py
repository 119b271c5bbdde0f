"""GGUF → plain float Hugging Face checkpoint, converted once and cached.

`transformers` loads a GGUF with `gguf_file=` and dequantizes it to float, but
the result carries a `quantization_config` (GGUF) that marks it untrainable and
unsaveable. We rebuild a plain model from its config (without
`quantization_config`) and its state dict, save it as safetensors into the
cache, and load that afterwards (~0.3 s instead of ~3 s per load).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch

from ..files import cache_root, write_dir_atomic

log = logging.getLogger(__name__)  # the CLI shows INFO on stdout; a library user chooses


def _fingerprint(gguf_path: Path) -> str:
    stat = gguf_path.stat()
    key = f"{gguf_path.resolve()}:{stat.st_size}:{int(stat.st_mtime)}"
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def converted_folder(gguf_path: Path) -> Path:
    """The cached float checkpoint for `gguf_path`, converting it if needed."""
    gguf_path = Path(gguf_path)
    target = cache_root() / "models" / f"{gguf_path.stem}-{_fingerprint(gguf_path)}"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    log.info(f"converting {gguf_path.name} to a float checkpoint in {target} (once)")
    kwargs = {"gguf_file": gguf_path.name}
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kwargs)
    quantized = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.float32, **kwargs)
    config = AutoConfig.from_pretrained(str(gguf_path.parent), **kwargs)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    # Tied output embeddings appear as "missing" lm_head.weight; anything else is a real mismatch.
    real_missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if real_missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={real_missing} unexpected={unexpected}")
    if config.tie_word_embeddings:
        plain.tie_weights()

    # Written to a temporary folder next to the target and renamed: a crash never
    # leaves a half-written checkpoint that a later run would trust.
    def write(tmp: Path) -> None:
        plain.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))

    write_dir_atomic(target, write)
    return target
