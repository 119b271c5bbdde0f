"""`transferkit cost` as a person reads it: one block per method, then the verdict."""

from __future__ import annotations

from .calibrate import Calibration
from .estimate import Cost

ORDER = ("weights", "gradients", "optimizer", "activations", "logits", "allocator", "framework")


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB" if n < 10 * 2**30 else f"{n / 2**30:,.1f} GiB"


def duration(seconds: float) -> str:
    return f"{seconds:,.0f} s" if seconds < 120 else f"{seconds / 60:,.1f} min" if seconds < 7200 else \
        f"{seconds / 3600:,.1f} h"


def format_cost(cost: Cost, fix: tuple[str, Cost] | None) -> str:
    w, hw = cost.workload, cost.hardware
    ranks = "" if cost.processes == 1 else f" × {cost.processes} processes ({cost.strategy}; memory per process)"
    lines = [f"{cost.method} on {cost.model} ({cost.task}, {cost.precision}) — {hw.name}: {mib(hw.memory_bytes)}, "
             f"{hw.peak_flops / 1e12:.2f} TFLOP/s peak{ranks}",
             f"  data        {w.source}: longest {w.longest} tokens ({w.labelled} labelled), mean {w.mean_tokens:.0f}; "
             f"{w.steps} steps × {w.accumulation} × {w.micro_batch} sequences",
             f"  parameters  {cost.params_trainable:,} trainable of {cost.params_total:,} "
             f"({100 * cost.params_trainable / cost.params_total:.2f} %); adapter on disk {mib(cost.adapter_bytes)}",
             f"  peak memory {mib(cost.peak_bytes)} = " + " + ".join(f"{kind} {mib(cost.memory[kind])}"
                                                               for kind in ORDER),
             *checkpointing_line(cost),
             f"  compute     {cost.flops_per_step / 1e12:.3f} TFLOP per step, {cost.flops_per_token / 1e9:.2f} "
             f"GFLOP per token",
             f"  time        {duration(cost.seconds)}; ${cost.dollars:,.2f} at ${hw.price_per_hour:.2f}/h",
             f"  per step    {step_line(cost)}"]
    lines += [f"  note        {note}" for note in cost.notes]
    if cost.fits:
        lines.append(f"  verdict     fits ({mib(hw.memory_bytes - cost.peak_bytes)} to spare)")
    elif fix is None:
        lines.append("  verdict     does NOT fit, and no single change tried (smaller micro-batch, gradient "
                     "checkpointing, QLoRA, half the sequence length) makes it fit; use a larger machine")
    else:
        lines.append(f"  verdict     does NOT fit; the cheapest change that fits: {fix[0]} "
                     f"(peak {mib(fix[1].peak_bytes)}, {duration(fix[1].seconds)})")
    return "\n".join(lines)


def step_line(cost: Cost) -> str:
    """One step's seconds and what takes them (`Cost.seconds_per_step`), with the figures the hardware assumes."""
    hw, parts = cost.hardware, cost.step_parts
    untimed = sum(seconds is None for *_, seconds in cost.compute_per_step)
    how = [f"{len(cost.compute_per_step) - untimed} distinct calls timed on this machine"] if \
        len(cost.compute_per_step) > untimed else []
    if untimed or not cost.compute_per_step:
        how.append(f"MFU {hw.mfu:.0%} of {hw.peak_flops / 1e12:.3g} TFLOP/s" +
                   (", a memory-bound call at its bytes" if hw.bandwidth and untimed else ""))
    flops = f"FLOPs {parts['flops']:.3g} s ({'; '.join(how)})"
    moved = (f"bytes {parts['traffic']:.3g} s ({cost.traffic_per_step / 1e9:.3g} GB at {hw.bandwidth_use:.0%} of "
             f"{hw.bandwidth / 1e9:,.0f} GB/s)" if hw.bandwidth else "bytes moved not priced (no bandwidth known)")
    random = (f" + random {parts['random']:.3g} s ({cost.random_per_step / 1e6:.3g} M numbers × "
              f"{hw.random_seconds * 1e9:.3g} ns)" if cost.random_per_step and hw.random_seconds else "")
    host = (f"operators {parts['operators']:.3g} s ({cost.ops_per_step:,} × {hw.op_seconds * 1e6:.3g} µs)"
            if hw.op_seconds else "dispatch not priced (no seconds per operator known)")
    terms = f"{flops} + {moved}{random} + {host}" if hw.device == "cpu" else \
        f"the larger of the device's {flops} + {moved}{random} and the host's {host}"
    scale = f", × {hw.time_scale:.2f}" if hw.time_scale != 1 else ""
    return f"{cost.seconds_per_step:.3g} s = {terms}{scale}; constants: {hw.mfu_source}"


def checkpointing_line(cost: Cost) -> list[str]:
    """The activations without and with gradient checkpointing, where both were estimated."""
    both = cost.activations_by_checkpointing
    if both is None:
        return []
    now = "on" if cost.gradient_checkpointing else "off"
    return [f"  activations {mib(both['off'])} without gradient checkpointing, {mib(both['on'])} with it "
            f"(train.gradient_checkpointing is {now} here)"]


def format_calibration(measured: Calibration) -> str:
    predicted = measured.predicted
    step = predicted.seconds_per_step
    calibrated = measured.calibrated()
    ran = len(measured.measured.step_peak_bytes)
    growing = [f"  note        the peak still grew at step {ran} of {ran}: a longer run can hold more; measure "
               f"more steps (--calibrate N)"] if measured.measured.still_growing else []
    return "\n".join([
        format_cost(predicted, None),
        f"  measured    {measured.steps} real steps here (evaluation off): peak {mib(measured.peak_bytes)} over the "
        f"process before the model (predicted {mib(predicted.peak_bytes)}, {measured.memory_error:+.0%}); "
        f"{measured.seconds_per_step:.2f} s per step (predicted {step:.2f} s)",
        f"  calibrated  measured ÷ predicted step {measured.time_scale:.2f} (MFU {measured.mfu:.1%}) → the configured "
        f"{predicted.workload.steps} steps take {duration(calibrated.seconds)}, ${calibrated.dollars:,.2f}", *growing])
