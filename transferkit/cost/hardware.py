"""What a machine offers a training run: memory, peak FLOP/s, the share of it training reaches, an hour's price.

The table is `hardware.yaml` beside this file; a user adds or overrides entries with a YAML file of the same
shape (`--hardware-file`, or `TRANSFERKIT_HARDWARE`). `cpu` is this machine, measured on the spot: its memory
from /proc/meminfo (MemAvailable), its peak from a timed square matmul in the precision `auto` would use (and in
fp32 beside it, for a run that asks for fp32: `for_precision`), its streaming bandwidth and the time to draw a
random number; its time constants are fitted per precision (`CPU_TIME`).
"""

from __future__ import annotations

import dataclasses
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
    mfu_source: str             # where the time constants (mfu, bandwidth_use, op_seconds) come from
    price_per_hour: float       # in US dollars; 0 for a machine already paid for
    bf16: bool                  # whether `train.precision: auto` trains in bf16 there
    source: str                 # where memory, peak and price come from, with its date
    bandwidth: float = 0.0      # memory bytes/s at its peak (0: unknown, and bytes moved are not priced)
    bandwidth_use: float = 1.0  # the share of it a step's memory-bound operators reach
    op_seconds: float = 0.0     # host time to dispatch one operator (0: unknown, and dispatch is not priced)
    random_seconds: float = 0.0  # time to draw one random number, as dropout does (0: unknown, not priced)
    fp32_peak_flops: float = 0.0  # fp32 FLOP/s where peak_flops is another precision's (a bf16 CPU); 0: none
    time_scale: float = 1.0     # measured ÷ modelled step time (`--calibrate`); 1 until measured
    times_calls: bool = False   # this machine: a step's calls with FLOPs are timed on it (`kernels.call_seconds`)


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
                    device: str = "cuda", bandwidth_gbs: float = 0.0, op_us: float = 0.0) -> Hardware:
    """A machine described on the command line; `device` says which defaults a run takes there (a GPU's:
    bf16, SDPA attention, micro-batch = batch; a CPU's: eager attention for short sequences, micro-batch 4).
    Without `bandwidth_gbs` (GB/s a step's memory-bound operators reach) and `op_us` (µs to dispatch one
    operator) the time counts FLOPs alone."""
    if memory_gb <= 0 or tflops <= 0 or price_per_hour < 0 or not 0 < mfu <= 1 or bandwidth_gbs < 0 or op_us < 0:
        raise ConfigError(f"custom hardware needs --memory > 0, --tflops > 0, --price-per-hour >= 0, "
                          f"0 < --mfu <= 1, --bandwidth >= 0 and --op-us >= 0; got {memory_gb}, {tflops}, "
                          f"{price_per_hour}, {mfu}, {bandwidth_gbs}, {op_us}")
    return Hardware("custom", device, int(memory_gb * 2**30), tflops * 1e12, mfu, "given on the command line",
                    price_per_hour, device == "cuda", "given on the command line", bandwidth_gbs * 1e9, 1.0,
                    op_us * 1e-6)


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
                                   float(row["price_per_hour"]), bool(row.get("bf16", True)), str(row["source"]),
                                   float(row.get("bandwidth_gbs", 0)) * 1e9, float(row.get("bandwidth_use", 1)),
                                   float(row.get("op_us", 0)) * 1e-6)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ConfigError(f"{path}: hardware '{name}' needs memory_gb, bf16_tflops, mfu, mfu_source, "
                              f"price_per_hour and source, and may give bandwidth_gbs, bandwidth_use and op_us "
                              f"({type(err).__name__}: {err})") from None
    return table


@dataclass(frozen=True)
class CpuTime:
    """A CPU's time constants in one precision, beside what `measure_cpu` measures on the spot (the matmul peak,
    the streaming bandwidth, the seconds per random number) and what `kernels.call_seconds` times per call."""
    mfu: float            # the share of the matmul probe's FLOP/s a call reaches that is too large to time
    bandwidth_use: float  # the share of the streaming bandwidth its operators' bytes reach
    op_seconds: float     # the host's seconds to dispatch one operator (Python, autograd, the dispatcher)
    source: str


# bf16: bandwidth_use and op_seconds fitted by `benchmarks/cost_accuracy.py` (`fit_time`: non-negative least
# squares on the relative error, the calls and the random numbers as each row's process measured them held) on
# the 84 rows of its first run with the calls timed (docs/data/cost_accuracy_bf16_timed_fit.json, 2026-12-07, AMD
# EPYC Zen 5, 2 cores — what `auto` trains in there and on CI's machine); checked out of sample on a second
# run of the same command (docs/cost.md). mfu: prices only a call larger than `kernels.MAX_CALL_BYTES`; the
# linears' matmuls of SmolLM2 ran at 0.79 of the 1024² probe, its head at 0.67, MiniLM's at 1.03
# (benchmarks/matmul_shapes.py, 2026-12-07).
# fp32: fitted on the 4-step run of 2026-12-01 (docs/data/cost_accuracy_4steps.json), AMD EPYC, AVX2, 2 cores,
# under the model before calls were timed (FLOPs ÷ the probe at this MFU, every operator's bytes); with the calls
# timed they put 41 of 52 fp32 rows measured on the Zen 5 within 25 % (refitted in sample: 41 too), so they are
# kept (docs/data/cost_accuracy_fp32_timed_subset.json, 2026-12-07; docs/cost.md).
CPU_TIME = {
    "bf16": CpuTime(0.8, 0.617, 9.1e-6, "fitted on benchmarks/cost_accuracy.py (2026-12-07, AMD EPYC Zen 5, "
                                       "2 cores, bf16; calls timed here; docs/cost.md)"),
    "fp32": CpuTime(1.35, 0.52, 12.8e-6, "fitted on benchmarks/cost_accuracy.py (2026-12-01, AMD EPYC AVX2, "
                                         "2 cores, fp32; docs/cost.md)"),
}


def measure_cpu(size: int = 1024, repeats: int = 5) -> Hardware:
    """This machine: available memory, the FLOP/s of a square matmul in the precision `auto` trains in (and in
    fp32 too where that is bf16: a run may ask for fp32, 4× slower on a Zen 5 core), and the
    bytes/s of an elementwise add over arrays far larger than the caches (read two, write one: STREAM's add),
    and the seconds to draw one random number as dropout draws its mask (`bernoulli_` over 4 M floats)."""
    bf16 = bf16_supported(torch.device("cpu"))
    dtype = torch.bfloat16 if bf16 else torch.float32
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    flops = 2 * size**3 / best_seconds(lambda: a @ b, repeats)
    x, y = torch.ones(2**24), torch.ones(2**24)  # 64 MiB each
    z = torch.empty_like(x)
    bandwidth = 3 * x.numel() * 4 / best_seconds(lambda: torch.add(x, y, out=z), repeats)
    mask = torch.empty(2**22)
    random_seconds = best_seconds(lambda: mask.bernoulli_(0.9), repeats) / mask.numel()
    fp32_flops = 0.0
    if bf16:
        a, b = a.float(), b.float()
        fp32_flops = 2 * size**3 / best_seconds(lambda: a @ b, repeats)
    constants = CPU_TIME["bf16" if bf16 else "fp32"]
    return Hardware("cpu", "cpu", available_memory(), flops, constants.mfu, constants.source, 0.0, bf16,
                    f"this machine, measured now ({size}² {str(dtype).removeprefix('torch.')} matmul; a 64 MiB "
                    f"add; a 4 M-number bernoulli_; MemAvailable)", bandwidth, constants.bandwidth_use,
                    constants.op_seconds, random_seconds=random_seconds, fp32_peak_flops=fp32_flops,
                    times_calls=True)


def for_precision(hardware: Hardware, precision: str) -> Hardware:
    """`hardware` as a run in `precision` sees it: an fp32 run on a CPU whose peak was measured in bf16 takes
    the fp32 peak measured beside it, and the fp32 time constants."""
    if precision == "fp32" and hardware.fp32_peak_flops:
        constants = CPU_TIME["fp32"]
        return dataclasses.replace(hardware, peak_flops=hardware.fp32_peak_flops, mfu=constants.mfu,
                                   mfu_source=constants.source, bandwidth_use=constants.bandwidth_use,
                                   op_seconds=constants.op_seconds, source=f"{hardware.source}; the fp32 matmul's peak")
    return hardware


def best_seconds(work, repeats: int) -> float:
    """The fastest of `repeats` timed calls of `work`, after one untimed (thread pool, kernels, pages)."""
    work()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def available_memory() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
