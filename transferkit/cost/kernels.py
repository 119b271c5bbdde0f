"""The calls of a replayed step that do FLOPs (`simulate.Call`: its matmuls, its attention kernels), each distinct
one run again and timed on this machine: what `transferkit cost` charges them on `cpu`, measured on the spot,
instead of their FLOPs at one probe's rate.

One square matmul does not say how fast a step's calls run. Timed on a Zen 5 core in bf16 against the 1024²
probe (`benchmarks/matmul_shapes.py`): SmolLM2's projections at 4 × 256 tokens ran at 0.79 of it and its
49,152-wide head at 0.67, MiniLM's at 1.03. Timed per call in each row's process (docs/cost.md's bf16 table),
a SmolLM2 LoRA step's calls at 1 × 64 tokens ran at 0.47 of that process's probe, a linear probe's frozen
MiniLM forward at 1 × 256 (CPU's fused attention kernel among them) at 0.54; priced at FLOPs ÷ one probe, the
probe rows read 0.60-0.75 of their measured steps.

A call is made again on real tensors of the replay's shapes, strides and dtypes (random values: a kernel's
speed does not depend on them) and timed as the probe is (`hardware.best_seconds`). A call whose tensors
would take more than `MAX_CALL_BYTES` is not made (a large model's head over a long batch: gigabytes), nor one
the operator refuses; those keep the roofline (`estimate.step_parts`).
"""

from __future__ import annotations

import functools

import torch

from .hardware import best_seconds
from .simulate import Call, Layout

MAX_CALL_BYTES = 1 << 30   # 1 GiB of a call's inputs and outputs: larger calls are priced, not timed
LARGE_CALL_FLOPS = 1e10    # a call this large is timed once after its warm-up run, a smaller one best of 3


def make(value):
    """A call's argument made real: a `Layout` as a tensor of that shape, stride and dtype (standard normal
    values, zeros for integers and booleans), tuples element by element, anything else as it is."""
    if isinstance(value, Layout):
        dtype = getattr(torch, value.dtype)
        extent = 1 + sum((n - 1) * s for n, s in zip(value.shape, value.stride)) if all(value.shape) else 0
        base = torch.randn(extent, dtype=dtype) if dtype.is_floating_point else torch.zeros(extent, dtype=dtype)
        return base.as_strided(value.shape, value.stride)
    if isinstance(value, tuple):
        return tuple(make(v) for v in value)
    return value


@functools.lru_cache(maxsize=None)
def call_seconds(call: Call) -> float | None:
    """Seconds one run of `call` takes on this machine's CPU; None where it is too large to make
    (`MAX_CALL_BYTES`) or the operator refuses the arguments made for it. Cached per call: `cost --method all`
    meets the same projections in every method's step."""
    if call.bytes > MAX_CALL_BYTES:
        return None
    namespace, name, overload = call.op.split(".")
    op = getattr(getattr(getattr(torch.ops, namespace), name), overload)
    args, kwargs = make(call.args), {k: make(v) for k, v in call.kwargs}
    try:
        with torch.no_grad():
            return best_seconds(lambda: op(*args, **kwargs), 1 if call.flops >= LARGE_CALL_FLOPS else 3)
    except (RuntimeError, TypeError, ValueError):
        return None
