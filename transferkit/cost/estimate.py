"""`transferkit cost`: what a run will hold in memory, compute, take and cost, before any weight is read.

    peak memory = weights + gradients + optimizer + activations + logits + allocator + framework
        weights      the full-depth model with the method applied, each tensor in its storage dtype (frozen
                     weights bf16 under bf16 with train.frozen_bf16; trained ones fp32; QLoRA's quantized
                     linears NF4: ½ byte per weight + an 8-bit absmax per 64-block + an fp32 scale per 256
                     absmaxes, Dettmers et al. 2023 §3)
        the rest     one optimizer step replayed on fake tensors (`simulate.py`) for a 2-layer and a 3-layer
                     model; each phase's peak (forward and backward of each micro-batch, the optimizer) grows
                     linearly with depth, so depth L = two layers + (L − 2) × the difference, and the largest
                     phase is the step's peak (`deepen`)
        allocator    what a device's allocator holds beyond the live tensors: a share of the step's high water of
                     activations and logits in heap-sized storages (`heap_high_water`)
        framework    a constant per device type (both fitted on measured runs: `overheads`), + what importing
                     the method's libraries leaves resident (peft's, measured: `LIBRARY_BYTES`)
    FLOPs per step  counted on the same replay, extrapolated the same way; so are the operators it dispatches,
                    the bytes they read and write and the random numbers they draw (`simulate.OpWork`)
    time per step   the calls with FLOPs (matmuls, attention)  +  the other operators' bytes / (bandwidth × share)
                    +  random numbers × seconds per number  +  operators × seconds per operator
                    where each distinct call with FLOPs is run again and timed on this machine (`cpu`, measured
                    on the spot: `kernels.py`), else charged max(FLOPs / (peak FLOP/s × MFU), bytes / (bandwidth
                    × share)) (a roofline per call, Williams et al. 2009: a projection is compute-bound, a
                    low-rank update's skinny matmul memory-bound); the elementwise operators stream memory;
                    dropout's random masks cost a CPU ~5 ns a number; the host's dispatch makes small steps
                    dispatch-bound, and a full fine-tune's optimizer is bandwidth-bound. On a GPU the host runs
                    ahead, so max(calls + bytes + random, operators); × the hardware's time_scale (1, or
                    measured ÷ modelled by --calibrate)
    time            steps × time per step;  money = hours × price per hour
                    (the probe: the first epoch's steps only; then its features are cached)

The micro-batch simulated is the one that holds the most: `micro_batch_size` copies of the training file's
longest sequence (with its labelled tokens), else of `data.max_length` fully labelled tokens.

Several processes (`--processes N`, `distributed.strategy`; `train/distributed.py`): the peak of one rank, each
running `micro_batch_size` sequences per pass (`shard_memory`):
    ddp     everything above, + DDP's gradient buckets (a flat fp32 copy of every trainable gradient)
    fsdp    weights, gradients and optimizer state / N, + the root's weights (embeddings, final norm, head: gathered
            for the whole step) + 2 blocks' weights gathered (the one computing and the one prefetched);
            causal LM: + the full logits [micro, T, vocab] in fp32 twice (FSDP's root is called whole, so the
            head is not applied at the labelled positions alone; `objectives/loss.py`)
    time    one rank's step (its own share of the batch, replayed as such); communication not counted

Preference data: a micro-batch of pairs is twice as many sequences (each prompt + chosen and prompt + rejected,
labels on the answers), replayed as such; the reference's forward passes (`train/reference.py`) are added to the
time as 2 × parameters × tokens: once over every training pair when cached, over each step's pairs when
recomputed (`preference.reference`, `auto` resolved as training resolves it).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from ..data import TASK_OF_SCHEMA, read_train
from ..data.tokenize import Tokenized
from ..errors import UserError
from ..methods import get_method
from ..models import count_parameters, skeleton_model
from ..objectives import OBJECTIVES, pair_rows
from ..options import RunConfig
from ..runtime import Runtime
from ..train.hardware import default_micro_batch_size, pick_attention
from ..train.optimizer import build_optimizer
from ..train.reference import reference_mode
from ..train.setup import adapt, planned_steps
from .hardware import Hardware, for_precision
from .kernels import call_seconds
from .simulate import KINDS, StepTrace, simulate_step

# What a training process holds beyond the live tensors the replay counts, per device type and precision:
#   allocator   ACTIVATION_SLACK × the step's high water of activations and logits in storages of at most
#               glibc's largest mmap threshold (`heap_high_water`): on CPU, memory freed from the heap stays
#               resident (oneDNN keeps scratch buffers too), so what comes after it — backward's gradients,
#               AdamW's temporaries, the next step — lands beside it rather than in it; a larger storage (a
#               causal LM's logits at 256 × 4) is a mapping of its own, returned when freed;
#   framework   FRAMEWORK_BYTES: the tokenizer, data, libraries' buffers.
# CPU fp32: fitted on the 76 non-QLoRA rows of `benchmarks/cost_accuracy.py --steps 2` (2026-11-30, AMD EPYC,
# 2 cores, AVX2; docs/cost.md); kept after the two 2026-12-01 runs: a refit on the 4-step run (0.433, 170 MiB)
# puts fewer rows within 10 %, one on the 12-step run (0.513, 172 MiB) 3 more in sample but 45 of 84 held out by
# model, while 12 of 84 verdicts differ between the runs. CPU bf16: fitted (`fit_overheads`, the peft import
# term held) on the 76 non-QLoRA rows of docs/data/cost_accuracy_bf16_timed_fit.json (2026-12-07, AMD EPYC
# Zen 5, 2 cores), their heap high water counted again by today's replay (`--rows … --recount`); out of
# sample, 83 of 84 peaks within 10 % on the next run (docs/data/cost_accuracy_bf16_timed.json) and on the
# median of three more (docs/data/cost_accuracy_bf16_3x.json), where the previous term (0.2915 × the peak's
# activations and logits) put 79 and 81. Fitted on one model's rows, they do worse on the other's (60 of 84
# in sample): the two models share them. Most of the allocator term is glibc's heap,
# whose mmap threshold moves with the order of frees (benchmarks/cpu_allocator.py). CUDA: 0,
# `max_memory_allocated` counts live tensors, which is what the replay counts.
ACTIVATION_SLACK = {"cpu": {"fp32": 0.485, "bf16": 0.4207}, "cuda": {"fp32": 0.0, "bf16": 0.0}}
FRAMEWORK_BYTES = {"cpu": {"fp32": 170_151_007, "bf16": 187_727_644}, "cuda": {"fp32": 0, "bf16": 0}}
# Added to the framework term: what importing a method's libraries (`Method.libraries`) leaves resident.
# Measured, not fitted: `benchmarks/import_memory.py` (2026-12-07, AMD EPYC Zen 5; peft +54.1 MiB in each of 5
# processes; bitsandbytes, which QLoRA imports after peft, +0). FRAMEWORK_BYTES, fitted before this term existed
# on rows of both kinds, is kept: with both, the accuracy tables put more rows within 10 % than either refit
# held out by model (docs/cost.md).
LIBRARY_BYTES = {"cpu": {"peft": 56_721_408}, "cuda": {}}


def overheads(heap: int, device: str, precision: str, libraries: tuple[str, ...]) -> dict[str, int]:
    """{"allocator", "framework"} bytes beside the replayed tensor kinds on a device type, in a run's precision
    ("fp32" or "bf16"), for a method that imports `libraries`; `heap`: the step's high water of activations and
    logits in heap-sized storages (`heap_high_water`)."""
    return {"allocator": int(ACTIVATION_SLACK[device][precision] * heap),
            "framework": int(FRAMEWORK_BYTES[device][precision]) + sum(library_bytes(device, libraries).values())}


def library_bytes(device: str, libraries: tuple[str, ...]) -> dict[str, int]:
    """{library: bytes} that importing each of `libraries` leaves resident on a device type (those known)."""
    return {name: LIBRARY_BYTES[device][name] for name in libraries if name in LIBRARY_BYTES[device]}


@dataclass(frozen=True)
class Workload:
    """What each optimizer step processes, and how many there are."""

    micro_batch: int             # sequences per forward pass
    accumulation: int            # forward passes per optimizer step
    longest: int                 # tokens in the longest sequence (the peak's micro-batch)
    labelled: int                # its labelled tokens (classification: 1)
    mean_tokens: float           # mean tokens per sequence (the time estimate)
    steps: int                   # optimizer steps of the run
    computed_steps: int          # of those, the steps that run the model: all, but for the probe the first
                                 # epoch's (later epochs read cached features and train the head alone)
    source: str                  # where the lengths come from
    reference_tokens: int = 0    # preference data: tokens the reference model reads in the whole run


@dataclass
class Cost:
    method: str
    model: str
    task: str
    hardware: Hardware
    precision: str
    workload: Workload
    params_total: int
    params_trainable: int
    adapter_bytes: int                          # what `adapter/` holds: trainable tensors in fp32 safetensors
    memory: dict[str, int]                      # bytes at the peak by kind, + "allocator", "framework"
    flops_per_step: float
    notes: list[str] = field(default_factory=list)
    gradient_checkpointing: bool = False        # whether this estimate's run checkpoints (train.gradient_checkpointing)
    # activation bytes at the peak without and with gradient checkpointing ({"off", "on"}): filled by
    # `activations_both_ways` for the calculator's rows; None where not asked or the model cannot checkpoint
    activations_by_checkpointing: dict[str, int] | None = None
    processes: int = 1                          # ranks sharing each step (`shard_memory`); memory is one rank's
    strategy: str = "none"                      # distributed.strategy with several processes
    ops_per_step: int = 0                       # aten operators dispatched per step (`simulate.OpWork`)
    traffic_per_step: int = 0                   # bytes those operators read and write per step
    random_per_step: int = 0                    # random numbers they draw per step (dropout's masks)
    # the calls of operators with FLOPs per step (`simulate.OpWork`), each distinct one as (its FLOPs, its bytes,
    # how many calls, its seconds timed on this machine or None: `kernels.call_seconds`); their bytes are not
    # in traffic_per_step
    compute_per_step: tuple[tuple[int, int, int, float | None], ...] = ()
    heap_bytes: int = 0                         # what the allocator term is a share of (`heap_high_water`)

    @property
    def peak_bytes(self) -> int:
        return sum(self.memory.values())

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.hardware.memory_bytes

    @property
    def flops_per_token(self) -> float:
        tokens = self.workload.micro_batch * self.workload.accumulation * self.workload.mean_tokens
        return self.flops_per_step / max(tokens, 1)

    @property
    def step_parts(self) -> dict[str, float]:
        """Seconds of one step that runs the model, by what takes them (`step_parts`)."""
        return step_parts(self.flops_per_step, self.traffic_per_step, self.ops_per_step, self.hardware,
                          self.random_per_step, self.compute_per_step)

    @property
    def seconds_per_step(self) -> float:
        """One rank's step that runs the model (`step_seconds`)."""
        return step_seconds(self.step_parts, self.hardware)

    @property
    def seconds(self) -> float:
        """The optimizer steps, and a preference run's reference forward passes (2 × parameters × token)."""
        reference = 2 * self.params_total * self.workload.reference_tokens
        return self.workload.computed_steps * self.seconds_per_step + reference / (
            self.hardware.peak_flops * self.hardware.mfu) * self.hardware.time_scale

    @property
    def dollars(self) -> float:
        return self.seconds / 3600 * self.hardware.price_per_hour

    def as_dict(self) -> dict:
        return {"method": self.method, "model": self.model, "task": self.task, "precision": self.precision,
                "hardware": dataclasses.asdict(self.hardware), "workload": dataclasses.asdict(self.workload),
                "params": {"total": self.params_total, "trainable": self.params_trainable},
                "adapter_bytes": self.adapter_bytes, "memory_bytes": self.memory, "peak_bytes": self.peak_bytes,
                "fits": self.fits, "flops_per_step": self.flops_per_step, "flops_per_token": self.flops_per_token,
                "ops_per_step": self.ops_per_step, "traffic_bytes_per_step": self.traffic_per_step,
                "random_per_step": self.random_per_step, "heap_bytes": self.heap_bytes,
                "compute_per_step": [list(c) for c in self.compute_per_step],
                "seconds_per_step": self.seconds_per_step, "step_parts": self.step_parts, "seconds": self.seconds,
                "dollars": self.dollars, "notes": self.notes,
                "gradient_checkpointing": self.gradient_checkpointing,
                "activations_by_checkpointing": self.activations_by_checkpointing,
                "processes": self.processes, "strategy": self.strategy}


def step_parts(flops: float, traffic: float, ops: int, hw: Hardware, random: int = 0,
               compute: tuple[tuple[int, int, int, float | None], ...] = ()) -> dict[str, float]:
    """Seconds of a step by what takes them (the module docstring's time model), before `hw.time_scale`: its
    calls with FLOPs (`compute`: (FLOPs, bytes, calls, seconds timed or None)), each the seconds it was timed at
    on this machine, else the longer of its FLOPs at the peak × MFU and its bytes at the bandwidth × its share,
    and FLOPs outside the calls at the peak × MFU; the bytes the other operators move at the bandwidth × its
    share (unpriced where the bandwidth is unknown); the random numbers it draws × the seconds to draw one
    (measured; unpriced where unknown); the operators it dispatches × the host's seconds per operator."""
    per_flop = 1 / (hw.peak_flops * hw.mfu)
    per_byte = 1 / (hw.bandwidth * hw.bandwidth_use) if hw.bandwidth else 0.0
    rest = flops - sum(f * calls for f, _, calls, _ in compute)
    calls = sum(n * (timed if timed is not None else max(f * per_flop, b * per_byte)) for f, b, n, timed in compute)
    return {"flops": calls + max(rest, 0) * per_flop,
            "traffic": traffic * per_byte,
            "random": random * hw.random_seconds,
            "operators": ops * hw.op_seconds}


def step_seconds(parts: dict[str, float], hw: Hardware) -> float:
    """A step's seconds from its `step_parts`: on a CPU the same cores do the arithmetic, move the bytes and
    dispatch the operators, one after the other; a GPU's host queues kernels ahead of the device, so the step
    takes the longer of the two; × `hw.time_scale`."""
    device = parts["flops"] + parts["traffic"] + parts["random"]
    both = device + parts["operators"] if hw.device == "cpu" else max(device, parts["operators"])
    return both * hw.time_scale


def workload(cfg: RunConfig, train: tuple[str, list], tokenizer, micro_default: int, processes: int = 1
             ) -> tuple[Workload, list[str] | None]:
    """(workload, class names) of the training file `train` (schema, examples) as `cfg` batches it, on one of
    `processes` ranks (each runs its share of the global batch)."""
    from ..data.schema import label_vocabulary
    from ..data.tokenize import tokenize_examples

    schema, examples = train
    labels = label_vocabulary(examples, cfg.data.train) if schema == "classification" else None
    tokenized = tokenize_examples(tokenizer, examples, schema, cfg.data.max_length, "truncate", labels)
    rows = pair_rows(tokenized) if schema == "preference" else tokenized    # a pair is two sequences
    per_row = len(rows) // len(tokenized)
    longest = max(rows, key=lambda t: len(t.input_ids))
    micro = cfg.train.micro_batch_size or micro_default
    per_epoch = math.ceil(len(tokenized) / cfg.train.batch_size)
    steps = planned_steps(cfg.train, len(tokenized))
    mean = sum(len(t.input_ids) for t in rows) / len(rows)
    method = get_method(cfg.method.name)
    computed = min(steps, per_epoch) if method.caches_features else steps
    source = f"{cfg.data.train} ({len(tokenized)} sequences)"
    reference = 0
    if schema == "preference":
        source = f"{cfg.data.train} ({len(tokenized)} pairs, 2 sequences each)"
        mode = cfg.preference.reference
        mode = reference_mode(method, steps, per_epoch) if mode == "auto" else mode
        pairs = len(tokenized) if mode == "cached" else steps * cfg.train.batch_size
        reference = round(pairs * per_row * mean)
    passes = math.ceil(math.ceil(cfg.train.batch_size / processes) / micro)
    return (Workload(micro * per_row, passes, len(longest.input_ids), longest.num_labels, mean,
                     steps, computed, source, reference), labels)


def nf4_bytes(numel: int) -> float:
    """Bytes of `numel` weights in NF4 with double quantization: 4 bits each, an 8-bit absmax per block of 64,
    an fp32 scale (and offset) per 256 absmaxes."""
    return numel / 2 + numel / 64 + numel / 64 / 256 * 8


def weight_bytes(model: torch.nn.Module, quantized: bool) -> int:
    """Parameters and buffers of the full-depth skeleton in their storage dtype. With `quantized` (QLoRA), as
    bitsandbytes and peft store them: the frozen weights of the linear layers in NF4, except the output head
    (transformers keeps `lm_head` in float), and every other float tensor in fp32
    (`prepare_model_for_kbit_training` upcasts them)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    kept = {id(head.weight)} if isinstance(head, torch.nn.Module) else set()
    quantizable = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)} - kept
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if not quantized:
            total += tensor.numel() * tensor.element_size()
        elif id(tensor) in quantizable and not tensor.requires_grad:
            total += nf4_bytes(tensor.numel())
        else:
            total += tensor.numel() * (4 if tensor.is_floating_point() else tensor.element_size())
    return int(total)


def replay(cfg: RunConfig, task: str, labels, work: Workload, runtime: Runtime, attention: str,
           num_layers: int, real: torch.nn.Module | None = None) -> StepTrace:
    """One optimizer step of a `num_layers`-deep model replayed on fake tensors (`simulate.py`); or, given
    `real` (a loaded model with the method applied), the same step run on its real tensors and counted the same
    way (`tests/test_cost.py` holds the replay against it)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    method = get_method("lora" if cfg.method.name == "qlora" else cfg.method.name)
    model = real
    if model is None:
        model = skeleton_model(cfg.model, task=task, labels=labels, num_layers=num_layers, attention=attention,
                               pooling=cfg.method.pooling, trust_remote_code=cfg.trust_remote_code)
        model = adapt(model, method, cfg.method, cfg.train, task, runtime)
    objective = OBJECTIVES[task]
    head = None if task == "classification" else model.get_output_embeddings().weight.shape[0]
    if task == "classification":
        item = Tokenized([1] * work.longest, [0], "cost", per_example=True)
    else:
        item = Tokenized([1] * work.longest, [-100] * (work.longest - work.labelled) + [1] * work.labelled, "cost")
    units = work.micro_batch * work.accumulation * item.num_labels

    def batches():
        for _ in range(work.accumulation):
            batch = objective.collate([item] * work.micro_batch, 0, "cpu")
            yield (lambda m, b=batch: objective.loss_sum(m, b)[0]), units

    def step() -> StepTrace:
        return simulate_step(model, lambda m: build_optimizer(m, method, cfg.method, cfg.train, work.steps)[0],
                             batches, head, work.micro_batch * min(work.labelled, work.longest - 1),
                             runtime.autocast, cfg.train.max_grad_norm)

    if real is not None:
        return step()
    with FakeTensorMode(allow_non_fake_inputs=True):
        materialise(model)
        return step()


# The depths replayed to extrapolate from. Not 1: a 1-layer model's embedding and head outweigh its one block,
# so its peak can fall at another moment of the step than a deep model's (`deepen`).
REPLAYED_DEPTHS = (2, 3)


def grow(two: int, three: int, depth: int) -> int:
    """A count of a `depth`-layer model from the same count of a 2- and a 3-layer replay: what the third layer
    added, once per further layer."""
    return two + (depth - 2) * (three - two)


def deepen(two: StepTrace, three: StepTrace, depth: int) -> dict[str, int]:
    """The peak by kind of a `depth`-layer model from the replays of a 2- and a 3-layer one (or the same replay
    twice, made at `depth` = 2): each phase's peak (forward and backward of each micro-batch, the optimizer;
    `StepTrace.phases`) grown linearly with depth, and the largest taken. Growing the step's single peak kind
    by kind is wrong when it falls at another moment in one replay than in the other. Measured on a bf16 full
    fine-tune of SmolLM2 (4 × 112 tokens): at 1 layer the step peaks at the end of backward (gradients and
    AdamW's moments of the embedding dominate), at 2 and 3 layers at its start (the logits' gradient), and
    grown kind by kind from 1 and 2 layers its 30 layers came out at −3,402 MiB of gradients and +7,243 MiB of
    logits. Not exact: a phase's own peak can move within it too. Against a direct replay of all 30 layers that
    row with 37 labelled tokens per sequence reads 0.984 (kind by kind from 2 and 3 layers: 0.948), tiny
    wide-vocabulary models 0.89-1.00 (tests/test_cost.py); replaying the full depth would be exact, at 5-7 s
    against 1 s for SmolLM2 (benchmarks/depth_extrapolation.py)."""
    grown = [{kind: grow(two.phases[phase][kind], three.phases[phase][kind], depth) for kind in KINDS}
             for phase in two.phases if phase in three.phases]
    return max(grown, key=lambda kinds: sum(kinds.values()))


def heap_high_water(two: StepTrace, three: StepTrace, depth: int) -> int:
    """The most bytes of activations and logits in heap-sized storages (`StepTrace.heap`) that any phase of a
    `depth`-layer step holds at its peak, each phase grown from the 2- and 3-layer replays as `deepen` grows it.
    The step's high water, not the peak phase's own: a full fine-tune peaks in AdamW's step, after backward
    freed the activations, but the heap they were in is still resident then (docs/cost.md)."""
    return max((max(grow(two.heap[phase], three.heap[phase], depth), 0) for phase in two.heap if phase in three.heap),
               default=0)


def materialise(model: torch.nn.Module) -> None:
    """Every meta parameter and buffer replaced by a fake CPU tensor of its shape and dtype, a tensor shared by
    two modules (tied embeddings and output head) staying shared; `Module.to_empty` would untie them, and a
    full fine-tune would then be charged a second head's gradients and optimizer moments. Call inside a
    `FakeTensorMode`."""
    made: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for table in (module._parameters, module._buffers):
            for name, tensor in table.items():
                if tensor is None:
                    continue
                if id(tensor) not in made:
                    empty = torch.empty_like(tensor, device="cpu")
                    made[id(tensor)] = (torch.nn.Parameter(empty, requires_grad=tensor.requires_grad)
                                        if isinstance(tensor, torch.nn.Parameter) else empty)
                table[name] = made[id(tensor)]


def precision_on(hardware: Hardware, requested: str) -> str:
    return requested if requested != "auto" else ("bf16" if hardware.bf16 else "fp32")


def estimate(cfg: RunConfig, hardware: Hardware, processes: int = 1) -> Cost:
    """The cost of training `cfg` on `hardware` (see the module docstring), per rank on `processes` ranks."""
    from ..config import with_method_defaults
    from ..models import architecture, load_tokenizer, resolve_model

    train = read_train(cfg.data)
    schema = train[0]
    task = TASK_OF_SCHEMA[schema]
    folder = resolve_model(cfg.model)
    cfg = with_method_defaults(cfg, schema, architecture(folder))
    tokenizer = load_tokenizer(folder, cfg.trust_remote_code)
    device = torch.device(hardware.device)
    work, labels = workload(cfg, train, tokenizer, default_micro_batch_size(device, cfg.train.batch_size), processes)
    runtime = Runtime(torch.device("cpu"), precision_on(hardware, cfg.train.precision))
    hardware = for_precision(hardware, runtime.precision)
    attention = pick_attention(cfg.train.attention, device, work.longest)
    full = skeleton_model(cfg.model, task=task, labels=labels, attention=attention, pooling=cfg.method.pooling,
                          trust_remote_code=cfg.trust_remote_code)
    depth = full.config.num_hidden_layers
    method = get_method("lora" if cfg.method.name == "qlora" else cfg.method.name)
    full = adapt(full, method, cfg.method, cfg.train, task, runtime)
    trainable, total = count_parameters(full)
    try:
        two, three = (replay(cfg, task, labels, work, runtime, attention, layers) for layers in REPLAYED_DEPTHS)
    except UserError:  # a method that needs more depth than 2 or 3 (freeze's train_top): simulate all of it
        two = three = replay(cfg, task, labels, work, runtime, attention, depth)
        depth = REPLAYED_DEPTHS[0]
    memory = {"weights": weight_bytes(full, cfg.method.name == "qlora")}
    memory.update({kind: n for kind, n in deepen(two, three, depth).items() if kind != "weights"})
    strategy = cfg.distributed.strategy if processes > 1 else "none"
    memory, notes = shard_memory(memory, full, processes, strategy, work, task)
    libraries = get_method(cfg.method.name).libraries
    heap = heap_high_water(two, three, depth)
    memory.update(overheads(heap, hardware.device, runtime.precision, libraries))
    imported = library_bytes(hardware.device, libraries)
    if imported:
        notes.append("framework: includes what importing " + ", ".join(
            f"{name} leaves resident ({n / 2**20:.0f} MiB, measured)" for name, n in imported.items()))
    flops, ops, traffic, random = (grow(getattr(two, k), getattr(three, k), depth)
                                   for k in ("flops", "ops", "traffic", "random"))
    timed = call_seconds if hardware.times_calls else lambda call: None
    compute = tuple((call.flops, call.bytes, n, timed(call))
                    for call, n in deepen_calls(two.compute, three.compute, depth).items())
    if cfg.method.name == "qlora":
        notes.append("qlora: activations are LoRA's on a float base; the per-matmul dequantized weight is not counted")
    if work.reference_tokens:
        notes.append(f"preference: the reference reads {work.reference_tokens:,} tokens "
                     f"({2 * total * work.reference_tokens / 1e12:.3g} TFLOP at 2 × parameters per token), in the time")
    return Cost(cfg.method.name, cfg.model, task, hardware, runtime.precision, work, total, trainable,
                trainable * 4, memory, float(flops), notes, cfg.train.gradient_checkpointing, None, processes,
                strategy, ops, traffic, random, compute, heap)


def deepen_calls(two: dict, three: dict, depth: int) -> dict:
    """Calls per kind of call (`StepTrace.compute`) of a `depth`-layer model, grown linearly from a 2- and a
    3-layer replay as the step's other counts are: the calls the third layer added, once per further layer."""
    grown = {key: grow(two.get(key, 0), three.get(key, 0), depth) for key in {*two, *three}}
    return {key: calls for key, calls in grown.items() if calls > 0}


def block_bytes(model: torch.nn.Module) -> list[int]:
    """The parameter bytes of each transformer block (FSDP's units: `models.heads.transformer_blocks`)."""
    from ..models.heads import transformer_blocks

    return [sum(p.numel() * p.element_size() for p in block.parameters()) for block in transformer_blocks(model)]


def shard_memory(memory: dict[str, int], model: torch.nn.Module, processes: int, strategy: str, work: Workload,
                 task: str) -> tuple[dict[str, int], list[str]]:
    """One rank's tensors by kind on `processes` ranks (the module docstring), and notes saying what was added."""
    if processes == 1:
        return memory, []
    memory = dict(memory)
    if strategy == "ddp":  # its buckets are allocated when the model is wrapped: live at every peak
        memory["gradients"] += sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
        return memory, [f"ddp on {processes} processes: per-rank memory; gradients include DDP's buckets (a flat "
                        f"fp32 copy of every trainable gradient)"]
    blocks = block_bytes(model)
    root = memory["weights"] - sum(blocks)
    memory["weights"] = memory["weights"] // processes + root + 2 * max(blocks, default=0)
    memory["gradients"] //= processes
    memory["optimizer"] //= processes
    notes = [f"fsdp on {processes} processes: per-rank memory; weights = all / {processes} + the root's "
             f"{root / 2**20:,.0f} MiB + 2 blocks of {max(blocks, default=0) / 2**20:,.0f} MiB gathered"]
    if task == "causal-lm":
        vocab = model.get_output_embeddings().weight.shape[0]
        memory["logits"] += 2 * 4 * work.micro_batch * work.longest * vocab
        notes.append("fsdp: the head runs on every position (full logits, counted in logits)")
    return memory, notes


def activations_both_ways(cfg: RunConfig, cost: Cost) -> Cost:
    """`cost` (the estimate of `cfg`) with its activations under both gradient-checkpointing settings, the other
    one estimated too; unchanged where the model cannot checkpoint. With checkpointing each layer keeps only its
    input (micro-batch × tokens × hidden) and recomputes the rest in backward (Chen et al. 2016)."""
    from ..config import with_overrides

    other = not cfg.train.gradient_checkpointing
    try:
        flipped = estimate(with_overrides(cfg, [f"train.gradient_checkpointing={str(other).lower()}"]), cost.hardware,
                           cost.processes)
    except UserError:  # the architecture does not support gradient checkpointing
        return cost
    both = {cost.gradient_checkpointing: cost.memory["activations"], other: flipped.memory["activations"]}
    return dataclasses.replace(cost, activations_by_checkpointing={"off": both[False], "on": both[True]})


def fixes(cfg: RunConfig, work: Workload) -> list[tuple[str, list[str]]]:
    """Changes that lower peak memory, cheapest in compute first: (what, overrides)."""
    micro = work.micro_batch
    out = [(f"train.micro_batch_size={m}", [f"train.micro_batch_size={m}"])
           for m in (micro // 2, micro // 4, 1) if 0 < m < micro]
    if not cfg.train.gradient_checkpointing and get_method(cfg.method.name).checkpointable:
        out.append(("train.gradient_checkpointing=true", ["train.gradient_checkpointing=true"]))
    if cfg.method.name == "lora":
        out.append(("method.name=qlora", ["method.name=qlora"]))
    if work.longest > 1:
        out.append((f"data.max_length={work.longest // 2}", [f"data.max_length={work.longest // 2}"]))
    return list(dict(out).items())


def cheapest_fit(cfg: RunConfig, cost: Cost) -> tuple[str, Cost] | None:
    """The first of `fixes` that alone makes the run `cost` priced fit, else all of them together if that does;
    with its cost."""
    from ..config import with_overrides

    options = fixes(cfg, cost.workload)
    for what, overrides in options:
        candidate = estimate(with_overrides(cfg, overrides), cost.hardware, cost.processes)
        if candidate.fits:
            return what, candidate
    last = dict(override.split("=", 1) for _, overrides in options for override in overrides)  # the last wins
    together = [f"{key}={value}" for key, value in last.items()]
    candidate = estimate(with_overrides(cfg, together), cost.hardware, cost.processes)
    return (" ".join(together), candidate) if candidate.fits else None
