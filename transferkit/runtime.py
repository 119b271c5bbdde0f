"""Where a model runs and in what precision: one `Runtime` instead of (device, autocast) pairs.

    Runtime.resolve("auto", "auto")   CUDA when present, else CPU; bf16 autocast where the hardware has
                                      native bf16 math (AVX512-BF16/AMX CPUs, Ampere+ GPUs), else fp32
    with runtime.autocast(): ...      bf16 autocast, or nothing for fp32
    with eval_mode(model): ...        model.eval() for the block, its previous mode restored after
    with for_inference(model): ...    eval mode and the SDPA attention kernel, for every measurement

Mixed precision is our own autocast context, not accelerate's: accelerate's process-wide state would
forbid a second run with another precision in the same process.
"""

from __future__ import annotations

import contextlib
import ctypes
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ContextManager, Iterator

import torch

from .errors import ConfigError


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str = "fp32"  # "bf16": bf16 autocast around forward passes; "fp32": none

    @classmethod
    def resolve(cls, device: str = "auto", precision: str = "auto") -> "Runtime":
        where = pick_device(device)
        return cls(where, resolve_precision(precision, where))

    def autocast(self) -> ContextManager:
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @property
    def compute_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.precision == "bf16" else torch.float32


CPU = Runtime(torch.device("cpu"), "fp32")


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
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
    """The peak since the process began or since `reset_peak_memory`: resident set on CPU (VmHWM on Linux, else
    ru_maxrss: KiB on Linux, bytes on macOS), allocated tensor memory on CUDA."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    hwm = _proc_status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def memory_now_bytes(device: torch.device) -> int:
    """Resident set now on CPU (VmRSS; 0 where /proc is missing), allocated tensor memory on CUDA."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    return _proc_status_bytes("VmRSS") or 0


def reset_peak_memory(device: torch.device) -> bool:
    """Start a new peak window: CUDA's peak statistics, or on Linux the resident high-water mark (writing 5 to
    /proc/self/clear_refs, Linux ≥ 4.0). False where it cannot be reset (the peak stays the process's)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _proc_status_bytes("VmHWM") is not None


def release_freed_memory(device: torch.device) -> bool:
    """Give the operating system back the heap glibc keeps after frees (`malloc_trim(0)`): what loading and the
    baseline freed would otherwise stay in the resident set and count in the training phase's peak. (A QLoRA
    base's float file is a memory map, released by `models.loading.own_memory`, not here.) A no-op on CUDA and
    where the C library has no `malloc_trim`; True when memory was released."""
    if device.type != "cpu":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False


def _proc_status_bytes(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return None


@dataclass
class MemoryWatch:
    """The memory a run reports: what the process held before the model was loaded, the training phase's peak
    (the quantity `transferkit cost` predicts, as an increase over the first) and the whole run's peak. Freed
    heap is returned to the system before each end of that increase is measured (`release_freed_memory`)."""

    device: torch.device
    before_model: int = 0
    earlier_peak: int = 0          # the process's peak before training began
    train_peak: int | None = None
    separate: bool = False         # whether the training phase's peak was measured apart from the rest

    def __post_init__(self) -> None:
        release_freed_memory(self.device)  # as `start_training` does: both ends of the increase measured trimmed
        self.before_model = memory_now_bytes(self.device)

    def start_training(self) -> None:
        self.earlier_peak = peak_memory_bytes(self.device)
        release_freed_memory(self.device)
        self.separate = reset_peak_memory(self.device)

    def end_training(self) -> None:
        self.train_peak = peak_memory_bytes(self.device)

    def facts(self) -> dict:
        peak = max(self.earlier_peak, peak_memory_bytes(self.device))
        train = peak if self.train_peak is None else self.train_peak
        return {"before_model_bytes": self.before_model, "train_peak_bytes": train,
                "train_peak_increase_bytes": train - self.before_model, "peak_bytes": peak,
                "train_peak_measured_apart": self.separate,
                "kind": "allocated tensor memory (CUDA)" if self.device.type == "cuda" else "resident set (RSS)"}


def store_frozen_weights(model: torch.nn.Module, runtime: Runtime, in_bf16: bool = True) -> int:
    """The weight storage of training, for training and for every measurement that compares with it: with bf16
    precision (and `train.frozen_bf16`), frozen floating-point parameters are cast to bf16; returns how many
    elements moved.

    Under bf16 autocast every matmul reads its weight as bf16 anyway, so a frozen fp32 copy only costs memory
    and a cast per use. Trainable parameters keep fp32 master weights for the optimizer. Norms and embeddings
    are not autocast: their bf16 storage changes results slightly, which is why a base and a tuned model are
    only compared under the same storage. What is not cast (the trained weights of freeze's top layers) is
    copied out of the weights file's memory map (`own_memory`)."""
    if runtime.precision != "bf16" or not in_bf16:
        return 0
    moved, kept = 0, []
    for param in model.parameters():
        if not param.requires_grad and param.is_floating_point() and param.dtype != torch.bfloat16:
            param.data = param.data.to(torch.bfloat16)
            moved += param.numel()
        else:
            kept.append(param)
    if moved:  # the cast read every page of the weights file: no weight left as it was may keep the map alive
        own_memory([*kept, *model.buffers()])
    return moved


def own_memory(tensors) -> None:
    """Copy each CPU floating-point tensor of `tensors` into memory of its own, out of the weights file's memory
    map it may view (transformers maps a safetensors file and its tensors are views). While one view is alive
    the map stays, and every page of it ever read stays resident: after a 4-bit base's quantization read the
    whole float file, about 530 MB beside SmolLM2-135M's 160 MB of model (measured 2026-12-01); after
    `store_frozen_weights` cast all but SmolLM2's top 2 layers to bf16 (freeze), 500 MiB (2026-12-07). Copied,
    the map is released. A tied weight stays tied: its one Parameter gets the copy."""
    for tensor in tensors:
        if tensor.device.type == "cpu" and tensor.dtype.is_floating_point:
            tensor.data = tensor.data.clone()


def store_like(model: torch.nn.Module, trained: torch.nn.Module) -> int:
    """Store each floating-point parameter of `model` in the dtype `trained` stores the same parameter in (by name;
    a peft-adapted layer's weight read as its base's): a freshly loaded base measured against a tuned model kept
    in training's weight storage (`store_frozen_weights`), so that a weight training never touched is the same
    number in both. Returns how many elements moved."""
    stored = {plain_name(name): p.dtype for name, p in underlying_model(trained).named_parameters()}
    moved = 0
    for name, param in model.named_parameters():
        dtype = stored.get(name)
        if dtype is not None and dtype.is_floating_point and param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)
            moved += param.numel()
    return moved


class Stopwatch:
    """Wall-clock seconds per named phase of a run: `with clock("baseline"): ...` adds the block's time."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - started


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """model.eval() inside the block (no dropout); the mode it had is restored on the way out."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


INFERENCE_ATTENTION = "sdpa"


def underlying_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a wrapper (peft, the probe); the model itself when unwrapped."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def plain_name(name: str) -> str:
    """A peft-adapted layer's parameter name (inside the wrapper) as the base model has it."""
    return name.replace(".base_layer.", ".")


@contextlib.contextmanager
def for_inference(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Eval mode and PyTorch's SDPA attention for the block, both restored after: every forward-only measurement
    (losses, generation, features) runs the same kernel whatever training uses. On CPU, training may pick eager
    attention, whose backward is faster at short lengths; forward only, SDPA is the faster one (measured on
    SmolLM2-135M, 2 cores: 19 s vs 29 s for 20k tokens of perplexity, 36 s vs 59 s for 100 4-shot answers)."""
    inner = underlying_model(model)
    switchable = hasattr(inner, "set_attn_implementation") and hasattr(getattr(inner, "config", None),
                                                                         "_attn_implementation")
    before = inner.config._attn_implementation if switchable else None
    if switchable and before != INFERENCE_ATTENTION:
        inner.set_attn_implementation(INFERENCE_ATTENTION)
    try:
        with eval_mode(model):
            yield model
    finally:
        if switchable and inner.config._attn_implementation != before:
            inner.set_attn_implementation(before)


def quiet_libraries() -> None:
    """Silence what transformers, peft and bitsandbytes print on every model build: not the user's concern.
    The CLI and the library functions call it."""
    import logging
    import warnings

    import transformers

    # bitsandbytes (imported by peft) logs that an optional CPU kernel package is absent; its NF4 path works without it.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

    # Deprecation notices raised inside transformers/peft on every model build: not the user's concern.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), for figures that must say where they were measured."""
    import platform

    info = Path("/proc/cpuinfo")
    for line in info.read_text().splitlines() if info.exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"
