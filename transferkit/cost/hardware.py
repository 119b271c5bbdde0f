"""What a machine offers a training run: memory, peak FLOP/s, the share of it training reaches, an hour's price.

The table is `hardware.yaml` beside this file; a user adds or overrides entries with a YAML file of the same
shape (`--hardware-file`, or `TRANSFERKIT_HARDWARE`). `cpu` is this machine, measured on the spot: its memory
from /proc/meminfo (MemAvailable) and its peak from a timed square matmul in the precision a run would use.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from ..errors import ConfigError
from ..runtime import bf16_supported

TABLE = Path(__file__).with_name("hardware.yaml")


@dataclass(frozen=True)
class Hardware:
    name: str
    device: str                 # "cpu" or "cuda": which defaults a run takes there (micro-batch, attention)
    memory_bytes: int
    peak_flops: float           # dense FLOP/s in the precision training uses there
    mfu: float                  # the share of peak_flops a training step reaches (model FLOPs utilisation)
    mfu_source: str             # where that share comes from
    price_per_hour: float       # in US dollars; 0 for a machine already paid for
    bf16: bool                  # whether `train.precision: auto` trains in bf16 there
    source: str                 # where memory, peak and price come from, with its date


def hardware_names(extra: str | Path | None = None) -> list[str]:
    return ["cpu", *sorted(_table(extra))]


def get_hardware(name: str, extra: str | Path | None = None) -> Hardware:
    """An entry of the table (or of `extra`), or `cpu` measured now; an unknown name lists the known ones."""
    if name == "cpu":
        return measure_cpu()
    table = _table(extra)
    if name not in table:
        raise ConfigError(f"unknown hardware '{name}'; known: {', '.join(hardware_names(extra))} (or give "
                          f"--memory GB --tflops X --price-per-hour P, or add it to a --hardware-file)")
    return table[name]


def custom_hardware(memory_gb: float, tflops: float, price_per_hour: float, mfu: float,
                    device: str = "cuda") -> Hardware:
    """A machine described on the command line; `device` says which defaults a run takes there (a GPU's:
    bf16, SDPA attention, micro-batch = batch; a CPU's: eager attention for short sequences, micro-batch 4)."""
    if memory_gb <= 0 or tflops <= 0 or price_per_hour < 0 or not 0 < mfu <= 1:
        raise ConfigError(f"custom hardware needs --memory > 0, --tflops > 0, --price-per-hour >= 0 and "
                          f"0 < --mfu <= 1; got {memory_gb}, {tflops}, {price_per_hour}, {mfu}")
    return Hardware("custom", device, int(memory_gb * 2**30), tflops * 1e12, mfu, "given on the command line",
                    price_per_hour, device == "cuda", "given on the command line")


def _table(extra: str | Path | None) -> dict[str, Hardware]:
    entries = dict(_read(TABLE))
    for path in (os.environ.get("TRANSFERKIT_HARDWARE"), extra):
        if path:
            entries.update(_read(Path(path)))
    return entries


def _read(path: Path) -> dict[str, Hardware]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read the hardware table: {err}") from None
    table = {}
    for name, row in raw.items():
        try:
            table[name] = Hardware(name, row.get("device", "cuda"), int(float(row["memory_gb"]) * 2**30),
                                   float(row["bf16_tflops"]) * 1e12, float(row["mfu"]), str(row["mfu_source"]),
                                   float(row["price_per_hour"]), bool(row.get("bf16", True)), str(row["source"]))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ConfigError(f"{path}: hardware '{name}' needs memory_gb, bf16_tflops, mfu, mfu_source, "
                              f"price_per_hour and source ({type(err).__name__}: {err})") from None
    return table


# The share of the matmul peak a CPU training step reaches. NOT YET MEASURED: an assumption until
# `--calibrate` (issue 15, not built yet) measures it; `transferkit cost` prints this source beside every time.
CPU_MFU = 0.30


def measure_cpu(size: int = 1024, repeats: int = 5) -> Hardware:
    """This machine: available memory, and the FLOP/s of a square matmul in the precision `auto` trains in."""
    bf16 = bf16_supported(torch.device("cpu"))
    dtype = torch.bfloat16 if bf16 else torch.float32
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b  # warm-up: thread pool and kernels
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    seconds = (time.perf_counter() - started) / repeats
    return Hardware("cpu", "cpu", available_memory(), 2 * size**3 / seconds, CPU_MFU,
                    "assumed, not yet measured by transferkit", 0.0, bf16,
                    f"this machine, measured now ({size}² {str(dtype).removeprefix('torch.')} matmul; "
                    f"MemAvailable)")


def available_memory() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
