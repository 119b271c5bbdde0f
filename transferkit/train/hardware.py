"""Device, precision and memory facts for the loop."""

from __future__ import annotations

import resource
import sys

import torch


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            from ..errors import ConfigError

            raise ConfigError("config key 'train.device' is 'cuda' but no CUDA device is available")
        return torch.device("cuda")
    return torch.device("cpu")


def bf16_supported(device: torch.device) -> bool:
    """bf16 autocast pays only with native bf16 math: AVX512-BF16/AMX on CPU, Ampere+ on GPU."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and torch.backends.cpu.get_cpu_capability() in ("AVX512", "AMX")
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(requested: str, device: torch.device) -> str:
    if requested == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    return requested


def peak_memory_bytes(device: torch.device) -> int:
    """Peak RSS of this process on CPU (ru_maxrss is KiB on Linux, bytes on macOS); peak allocated on CUDA."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)
