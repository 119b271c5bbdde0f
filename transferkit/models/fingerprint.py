"""Which base model an adapter belongs to, and whether its files are intact.

An adapter folder is only meaningful on the base it was trained on. Next to
the method's own files we write `transferkit_base.json`, the shape-defining
fields of the base's config; loading compares them with the base at hand, so
an adapter from another base is refused with the field that differs, before
any tensor is copied. Every `.safetensors` file is opened first, so a
truncated or corrupt one is named instead of failing deep inside a loader.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import UserError
from .heads import underlying_model

FILE = "transferkit_base.json"
SHAPE_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "intermediate_size", "vocab_size")


def base_config(model: torch.nn.Module):
    inner = underlying_model(model)
    return getattr(inner, "config", None) or getattr(getattr(inner, "model", None), "config", None)


def fingerprint(config) -> dict:
    return {name: getattr(config, name) for name in SHAPE_FIELDS if getattr(config, name, None) is not None}


def write_fingerprint(folder: Path, model: torch.nn.Module) -> None:
    (folder / FILE).write_text(json.dumps(fingerprint(base_config(model)), indent=2) + "\n")


def check_safetensors(folder: Path) -> None:
    from safetensors import safe_open

    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():
                    handle.get_slice(key)  # reads the header entry; data offsets are checked against the file size
        except Exception as exc:  # safetensors raises SafetensorError, OSError or ValueError for damaged files
            raise UserError(f"{path}: corrupt or truncated safetensors file ({str(exc).splitlines()[0]})") from None


def check_adapter_folder(folder: Path, base: torch.nn.Module, base_name: str) -> None:
    """Refuse a damaged adapter folder or one trained on another base than `base`."""
    check_safetensors(folder)
    recorded_path = folder / FILE
    if not recorded_path.is_file():
        return  # written by another tool: the loader's own shape checks apply
    recorded = json.loads(recorded_path.read_text())
    here = fingerprint(base_config(base))
    for name, value in recorded.items():
        if name in here and here[name] != value:
            raise UserError(f"{folder}: adapter was trained on another base model: {name} is {value} there but "
                            f"{here[name]} in {base_name}")
