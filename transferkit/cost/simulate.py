"""One training step replayed on fake tensors: the bytes that are alive at its peak, by kind, and its FLOPs.

No weight is read and no arithmetic is done: the model is built from its config on the meta device
(`models.skeleton_model`), its tensors become `FakeTensor`s (shapes, dtypes, storages, no data), and two
optimizer steps run exactly as `train/loop.py` runs them — micro-batches collated by the task's objective,
loss at labelled positions only, backward, gradient clipping, AdamW, `zero_grad(set_to_none=True)`. A
dispatch mode sees every tensor each operator creates and when its storage is freed, so the live total at
every instant is known; the second step's peak is the steady state (the optimizer's moments exist then).

    kind            what it is                                              how it is recognised
    weights         parameters and buffers, in their storage dtype          alive before the step
    gradients       .grad of the trainable parameters                       a parameter's .grad after backward
    optimizer       AdamW's two moments (and step counts)                   the optimizer's state after step 1
    logits          logits and loss buffers at labelled positions           last dimension = the head's outputs
    activations     everything else: tensors saved for backward, temporaries

FLOPs are counted by torch's `FlopCounterMode` (matmuls, attention, convolutions; CPU's fused attention kernel
by `CPU_ATTENTION`) over the first step: what the step really runs, frozen weights' skipped weight-gradients and
the head at labelled positions only; over the same step `OpWork` counts the operators dispatched, the bytes they
read and write, and keeps each call with FLOPs to be timed or priced apart.
"""

from __future__ import annotations

import contextlib
import itertools
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

KINDS = ("weights", "gradients", "optimizer", "logits", "activations")
# glibc's largest mmap threshold on 64-bit Linux (DEFAULT_MMAP_THRESHOLD_MAX): a larger request is always a mapping
# of its own, returned to the system when freed; a smaller one may come from the heap, which keeps freed memory
# resident (`StepTrace.heap`).
MMAP_MAX = 32 << 20


@dataclass(frozen=True)
class Call:
    """One call of an operator with FLOPs, as the replay dispatched it: enough to run it again on real tensors
    of the same shapes, strides and dtypes (`kernels.call_seconds`), with its FLOPs and the bytes it reads and
    writes (for a machine it cannot be timed on: `estimate.step_parts`'s roofline)."""

    op: str          # the aten overload, "aten.addmm.default"
    args: tuple      # its positional arguments, each tensor as its `Layout`, lists as tuples
    kwargs: tuple    # its keyword arguments as sorted (name, value) pairs, the same way
    flops: int
    bytes: int


class Layout(NamedTuple):
    """A tensor argument of a `Call`: what a tensor made again needs to run the call as the step does."""
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str       # "bfloat16"


def spec(value):
    """A hashable description of an operator's argument (`Call.args`): a tensor by its layout, lists as tuples."""
    if isinstance(value, torch.Tensor):
        return Layout(tuple(value.shape), tuple(value.stride()), str(value.dtype).removeprefix("torch."))
    if isinstance(value, (list, tuple)):
        return tuple(spec(v) for v in value)
    return value


@dataclass
class StepTrace:
    """What one simulated optimizer step holds at its peak and runs."""

    peak: dict[str, int]                    # bytes alive at the step's peak, by kind (KINDS)
    flops: int                              # per optimizer step (all micro-batches)
    ops: int = 0                            # aten operators dispatched per optimizer step (`OpWork`)
    traffic: int = 0                        # bytes the operators without FLOPs read and write per optimizer step
    random: int = 0                         # random numbers they draw per optimizer step (dropout's masks)
    # the calls of operators with FLOPs (matmuls, attention; `OpWork.compute`): each distinct call → how many
    compute: dict[Call, int] = field(default_factory=dict)
    weights: dict[str, int] = field(default_factory=dict)  # bytes of parameters and buffers by dtype name
    # the peak of each phase of the step, by kind: "forward i" / "backward i" of micro-batch i, "optimizer"
    # (clipping, AdamW, zero_grad); `peak` is the largest of them
    phases: dict[str, dict[str, int]] = field(default_factory=dict)
    # per phase, of its peak's activations and logits the bytes in storages of at most MMAP_MAX: what a CPU
    # heap may hold on to once they are freed (`estimate.heap_high_water`)
    heap: dict[str, int] = field(default_factory=dict)

    @property
    def peak_bytes(self) -> int:
        return sum(self.peak.values())


class LiveBytes(TorchDispatchMode):
    """Bytes of every storage alive in its context, by kind, and which were alive at the largest total — of the
    whole context and of each phase the caller names (`phase`)."""

    def __init__(self, head_outputs: int | None, mask_true: int):
        super().__init__()
        self.mask_true = mask_true           # what a boolean mask selects: the labelled positions
        self.head_outputs = head_outputs     # a tensor whose last dimension is this is logits (None: never)
        self._serials = itertools.count()
        self.serial: dict[int, int] = {}     # id(storage) → its serial number, while it is alive
        self.size: dict[int, int] = {}       # serial → bytes, for storages alive now
        self.kind: dict[int, str] = {}       # serial → kind, kept after the storage is freed
        self.total = 0
        self.peak_total = 0
        self.peak_live: dict[int, int] = {}  # the storages alive at the peak
        self.phase = ""
        self.phase_peaks: dict[str, tuple[int, dict[int, int]]] = {}  # phase → (its peak total, storages then)

    def adopt(self, tensor: torch.Tensor, kind: str) -> None:
        """Count a tensor made outside the mode (a weight), or give a counted one its kind."""
        self.kind[self._serial_of(tensor.untyped_storage())] = kind

    def reset_peak(self) -> None:
        self.peak_total, self.peak_live = self.total, dict(self.size)
        self.phase_peaks = {}

    def kind_of(self, serial: int) -> str:
        """The kind a storage was last given ("activations" unless given one)."""
        return self.kind.get(serial, "activations")

    def by_kind(self, alive: dict[int, int]) -> dict[str, int]:
        """Bytes by kind of the storages `alive` (serial → bytes), each by the kind it was last given."""
        out = dict.fromkeys(KINDS, 0)
        for serial, size in alive.items():
            out[self.kind_of(serial)] += size
        return out

    def peak_by_kind(self) -> dict[str, int]:
        return self.by_kind(self.peak_live)

    def phase_peaks_by_kind(self) -> dict[str, dict[str, int]]:
        return {phase: self.by_kind(alive) for phase, (_, alive) in self.phase_peaks.items()}

    def phase_heap_bytes(self) -> dict[str, int]:
        """Per phase, the bytes of activations and logits alive at its peak in storages of at most MMAP_MAX."""
        return {phase: sum(size for serial, size in alive.items()
                           if size <= MMAP_MAX and self.kind_of(serial) in ("activations", "logits"))
                for phase, (_, alive) in self.phase_peaks.items()}

    def _positions(self, index: torch.Tensor | None) -> list[torch.Tensor | None]:
        if index is None or index.dtype != torch.bool:
            return [index]
        return [torch.zeros(self.mask_true, dtype=torch.long, device=index.device) for _ in range(index.dim())]

    def _serial_of(self, storage) -> int:
        key = id(storage)
        if key not in self.serial:
            serial = self.serial[key] = next(self._serials)
            self.size[serial] = storage.nbytes()
            self.total += self.size[serial]
            weakref.finalize(storage, self._freed, key, serial)
        return self.serial[key]

    def _freed(self, key: int, serial: int) -> None:
        self.serial.pop(key, None)
        self.total -= self.size.pop(serial, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.index.Tensor and any(i is not None and i.dtype == torch.bool for i in args[1]):
            # A boolean mask's True count is data; here it is the labelled positions, known to the caller: the
            # mask becomes that many integer indices per masked dimension (so backward has static shapes too).
            args = (args[0], [j for i in args[1] for j in self._positions(i)])
        if func is torch.ops.aten.nonzero.default:
            out = torch.empty((self.mask_true, args[0].dim()), dtype=torch.long, device=args[0].device)
        elif func is torch.ops.aten._local_scalar_dense.default:
            # A value read to the host: the simulated batches are unpadded (every mask all ones, every check
            # passes) and AdamW reads its step count; 1 answers both.
            return 1
        else:
            out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                known = id(tensor.untyped_storage()) in self.serial
                serial = self._serial_of(tensor.untyped_storage())
                if not known and tensor.dim() and tensor.shape[-1] == self.head_outputs:
                    self.kind[serial] = "logits"
                if self.total > self.peak_total:
                    self.peak_total, self.peak_live = self.total, dict(self.size)
                if self.total > self.phase_peaks.get(self.phase, (-1,))[0]:
                    self.phase_peaks[self.phase] = (self.total, dict(self.size))
        return out


class OpWork(TorchDispatchMode):
    """How many operators a step dispatches, and how many bytes they read and write: what the time model
    (`estimate.Cost.seconds_per_step`) charges beside the FLOPs. Entered above `counter` (the step's
    `FlopCounterMode`), so that each operator's FLOPs are what the counter added while it ran — CPU's fused
    attention kernel's too, by the formulas the counter is given (`CPU_ATTENTION`).

    Only aten operators count (`prim.device` and the like are questions, not work). A view, or any operator
    whose outputs share an input's storage and writes nothing, moves no bytes. Otherwise an operator reads its
    tensor arguments and writes its new outputs and the arguments it mutates (in place, `out=`, the optimizer's
    `_foreach_*_`); a gather (embedding, index, index_select, gather) reads only what it writes, not its table.
    An operator with FLOPs (a matmul, an attention kernel) is kept apart in `compute`, one `Call` per distinct
    call with how many times it ran, and its bytes are not in `traffic`: the time model times such a call on
    the machine or charges it the longer of its FLOPs and its bytes (a roofline per call: a projection is
    compute-bound, a low-rank update's skinny matmul memory-bound), never both.

    Random numbers count apart (`random`: the elements a `RANDOM` operator fills): on a CPU drawing one costs
    about 5 ns (what `hardware.measure_cpu` measured on a Zen 5 core), where streaming a bf16 element in and
    out costs about 0.1 ns, so no byte count prices it."""

    def __init__(self, counter):
        super().__init__()
        self.counter = counter
        self.ops = 0
        self.traffic = 0
        self.random = 0
        self.compute: Counter[Call] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        before = self.counter.get_total_flops()
        out = func(*args, **(kwargs or {}))
        if func.namespace != "aten":
            return out
        self.ops += 1
        schema = func._schema
        written = [a.name for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write]
        inputs = [t for t in tree_leaves((args, kwargs or {})) if isinstance(t, torch.Tensor)]
        stored = {id(t.untyped_storage()) for t in inputs}
        made = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor) and id(t.untyped_storage()) not in stored]
        if made or written:
            named = dict(zip((a.name for a in schema.arguments), args)) | (kwargs or {})
            writes = sum(map(nbytes, made)) + sum(nbytes(t) for name in written for t in tree_leaves(named.get(name)))
            reads = writes if func.overloadpacket in GATHERS else sum(map(nbytes, inputs))
            flops = self.counter.get_total_flops() - before
            if flops:
                named_args = tuple(sorted((k, spec(v)) for k, v in (kwargs or {}).items()))
                self.compute[Call(str(func), spec(tuple(args)), named_args, flops, reads + writes)] += 1
            else:
                self.traffic += reads + writes
        if func.overloadpacket in RANDOM:  # the first output is what it fills (native_dropout's second: its mask)
            self.random += next(t for t in tree_leaves(out) if isinstance(t, torch.Tensor)).numel()
        return out


def cpu_attention_flops(query, key, value, *args, out_val=None, **kwargs) -> int:
    """FLOPs of CPU's fused attention kernel (given shapes), which torch's FLOP counter does not know: those of
    the flash kernel it mirrors (QKᵀ and the probabilities × V, 4 × B × H × Lq × Lk × D)."""
    return sdpa_flop_count(query, key, value)


def cpu_attention_backward_flops(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# Counted beside torch's own formulas (`FlopCounterMode(custom_mapping=…)`): without them a CPU step through
# SDPA (a linear probe's frozen forward, a long sequence) counted its attention as zero FLOPs.
CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_attention_flops,
                 torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: cpu_attention_backward_flops}

GATHERS = {torch.ops.aten.embedding, torch.ops.aten.index, torch.ops.aten.index_select, torch.ops.aten.gather}
# Operators that fill their output with random numbers (dropout draws its mask with `bernoulli_`).
RANDOM = {getattr(torch.ops.aten, name) for name in ("bernoulli", "bernoulli_", "native_dropout", "uniform_", "normal",
                                                     "normal_", "rand", "rand_like", "randn", "randn_like",
                                                     "exponential_", "multinomial")}


def nbytes(tensor) -> int:
    return tensor.numel() * tensor.element_size() if isinstance(tensor, torch.Tensor) else 0


def simulate_step(model: torch.nn.Module, optimizer_of, step_batches, head_outputs: int | None, mask_true: int,
                  autocast, max_grad_norm: float) -> StepTrace:
    """Two optimizer steps of `model` (already holding fake tensors) on the micro-batches `step_batches()`
    yields; `optimizer_of(model)` builds the optimizer, `autocast()` is the run's autocast context and
    `step_batches()` yields (loss_fn, normaliser) pairs whose loss_fn(model) returns a loss sum."""
    from torch.utils.flop_counter import FlopCounterMode

    model.train()  # as the training loop runs it: dropout, and gradient checkpointing (off in eval mode)
    live = LiveBytes(head_outputs, mask_true)
    weights: dict[str, int] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        live.adopt(tensor, "weights")
        name = str(tensor.dtype).removeprefix("torch.")
        weights[name] = weights.get(name, 0) + tensor.untyped_storage().nbytes()
    optimizer = optimizer_of(model)
    params = [p for p in model.parameters() if p.requires_grad]
    flops = 0
    for step in range(2):
        if step == 1:
            live.reset_peak()
        # FLOPs are counted in the first step, apart from the peak of the second: the counter's module tracker
        # holds each checkpointed layer's recomputed outputs until it exits, which a real run never holds.
        counter = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) if step == 0 else \
            contextlib.nullcontext()
        work = OpWork(counter) if step == 0 else contextlib.nullcontext()
        with live, counter, work:
            live.phase = "forward 0"  # from the first micro-batch's collate on
            for index, (loss_fn, normaliser) in enumerate(step_batches()):
                with autocast():
                    loss_sum = loss_fn(model)
                live.phase = f"backward {index}"
                (loss_sum / normaliser).backward()
                del loss_sum
                live.phase = f"forward {index + 1}"
            for p in params:
                if p.grad is not None:
                    live.adopt(p.grad, "gradients")
            live.phase = "optimizer"
            if max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm, foreach=True)
            optimizer.step()
            for state in optimizer.state.values():
                for value in state.values():
                    if isinstance(value, torch.Tensor):
                        live.adopt(value, "optimizer")
            optimizer.zero_grad(set_to_none=True)
        if step == 0:
            flops, ops, traffic, random = counter.get_total_flops(), work.ops, work.traffic, work.random
            compute = dict(work.compute)
    return StepTrace(live.peak_by_kind(), flops, ops, traffic, random, compute, weights, live.phase_peaks_by_kind(),
                     live.phase_heap_bytes())
