"""Training on several processes: what each rank does, and the engines that do the rest.

    transferkit train --processes N CONFIG      → `accelerate launch` (torchrun: one process per rank)
    accelerate launch -m transferkit train CONFIG

Each rank runs the same `setup → fit → finish` on the same data. What the world size changes, and what it does not:

    train.batch_size        the global batch, sequences per optimizer step over all ranks: unchanged, so N processes
                            run the same optimization as one
    train.micro_batch_size  sequences per forward pass on one rank
    the step's sequences    `loop.Batches`, a pure function of (seed, epoch, step): the same global batch on every
                            rank; rank r takes the r-th contiguous share (`share`) and cuts it into micro-batches
    forward passes          equal on every rank (`micro_batches`: a rank short of sequences runs a zero-weighted
                            pass), which FSDP's per-block all-gathers require
    loss normalisation      each rank backpropagates  Σ_own loss / N_step × W, with N_step the labelled units of the
                            whole global step (known on every rank from the host-side data: no communication) and
                            W the world size, because DDP and FSDP average gradients over ranks:
                            (1/W) Σ_r W ∇Σ_r loss / N_step = ∇ Σ_all loss / N_step, exactly the one-process gradient
    the step's figures      one all-reduce per step of [loss sum, figure sums, stop requested] (`loop.reduce_step`): the
                            logged loss is the global step's, and every rank skips a non-finite step and stops on a
                            SIGTERM at the same step
    files                   the main process writes (`RunDir(writer=False)` elsewhere); checkpoints gather the
                            sharded tensors on every rank first (a collective), then the main process writes them
    finish                  the main process alone, on a plain model (`finish.consolidate`: under FSDP the trained
                            tensors gathered into a fresh copy); the other ranks return once the last checkpoint is
                            written, and on the CPU the main process takes over their cores (`take_over_cores`)

Strategies: `ddp` is accelerate's DistributedDataParallel (gloo on CPU, NCCL on GPU). `fsdp` is PyTorch FSDP2's
`fully_shard` on every transformer block (the model's `_no_split_modules`) and then the root, applied here on every
device: accelerate only enables FSDP on accelerators (its MULTI_CPU state never becomes FSDP), and one path for CPU
and GPU is one path tested. `deepspeed` is refused with the reason (`check_strategy`).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..data.tokenize import Tokenized
from ..errors import ConfigError
from ..models.heads import transformer_blocks, underlying_model
from ..options import DistributedConfig
from ..runtime import Runtime

DEEPSPEED_BLOCKED = (
    "config key 'distributed.strategy': deepspeed is not available yet: DeepSpeed 0.19.8 installs on a CPU machine, "
    "but there accelerate 1.15 runs every rank as a world of one, so transferkit's DeepSpeed path has not been run "
    "against a working engine; use fsdp (weights, gradients and optimizer state sharded, as ZeRO-3) or ddp")


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a run."""

    rank: int = 0
    size: int = 1
    strategy: str = "none"   # "ddp" | "fsdp" with several processes; "none" with one

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        """Parameters are DTensor shards (FSDP): reading one whole is a collective every rank takes part in."""
        return self.strategy == "fsdp"

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """`values` summed over the ranks (the tensor itself with one process)."""
        if self.size > 1:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def facts(self) -> dict:
        """What summary.json records."""
        return {"world_size": self.size, "strategy": self.strategy}


def launched_rank() -> int:
    """The rank a launcher gave this process (0 when none did), readable before the process group exists."""
    return int(os.environ.get("RANK", "0"))


def check_strategy(dist_cfg: DistributedConfig, method_quantizes: bool, penalties: bool,
                   max_minutes: float | None = None) -> None:
    """Every problem of the distributed section at once, before anything is written (with several processes)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    problems = []
    if max_minutes is not None:
        problems.append("config key 'train.max_minutes': each process keeps its own clock, and processes that "
                        "disagreed on the last step would wait for each other forever; give train.max_steps")
    if dist_cfg.strategy == "deepspeed":
        problems.append(DEEPSPEED_BLOCKED)
    if dist_cfg.strategy == "fsdp" and method_quantizes:
        problems.append("config key 'distributed.strategy': fsdp cannot shard a 4-bit (bitsandbytes) base; use "
                        "ddp for qlora")
    if dist_cfg.strategy == "fsdp" and penalties:
        problems.append("config keys 'forgetting.ewc' / 'forgetting.l2sp': their anchors are not sharded under "
                        "fsdp yet; use distributed.strategy=ddp")
    if problems:
        raise ConfigError("; ".join(problems))


def make_accelerator(dist_cfg: DistributedConfig, runtime: Runtime):
    """accelerate's Accelerator (its state initialises the process group: gloo on CPU, `distributed.timeout_minutes`)
    and this rank's `World`."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    timeout = InitProcessGroupKwargs(timeout=datetime.timedelta(minutes=dist_cfg.timeout_minutes))
    accelerator = Accelerator(cpu=runtime.device.type == "cpu", kwargs_handlers=[timeout])
    size = accelerator.num_processes
    world = World(accelerator.process_index, size, dist_cfg.strategy if size > 1 else "none")
    return accelerator, world


def shard_model(model: torch.nn.Module, world: World, dist_cfg: DistributedConfig) -> torch.nn.Module:
    """FSDP2: `fully_shard` each transformer block, then the root (which holds the embeddings, the final norm and
    a head); every parameter, trainable or frozen, becomes a DTensor sharded on dim 0 over the ranks."""
    if not world.sharded:
        return model
    from torch.distributed.fsdp import fully_shard

    blocks = transformer_blocks(model)
    if not blocks:
        raise ConfigError(f"config key 'distributed.strategy': fsdp needs the model's transformer block class "
                          f"(`_no_split_modules`), which {type(underlying_model(model)).__name__} does not declare; "
                          f"use ddp")
    for block in blocks:
        fully_shard(block, reshard_after_forward=dist_cfg.reshard_after_forward)
    fully_shard(model, reshard_after_forward=dist_cfg.reshard_after_forward)
    return model


def take_over_cores(world: World) -> None:
    """On the CPU, once the other processes on this machine have ended (after the last checkpoint), the main process
    finishing alone uses their threads too: the launcher gave each process 1/LOCAL_WORLD_SIZE of the cores."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if world.size > 1 and local > 1:
        torch.set_num_threads(min(os.cpu_count() or 1, torch.get_num_threads() * local))


def share(items: list[Tokenized], world: World) -> list[Tokenized]:
    """This rank's contiguous share of a step's sequences: sizes differ by at most one, rank 0 first."""
    base, extra = divmod(len(items), world.size)
    start = world.rank * base + min(world.rank, extra)
    return items[start: start + base + (world.rank < extra)]


def micro_batches(items: list[Tokenized], world: World, micro: int) -> list[tuple[list[Tokenized], float]]:
    """(sequences, weight) for each forward pass this rank runs in a step: its share in micro-batches of `micro`,
    padded with zero-weighted passes over the step's first sequence up to the count of the busiest rank."""
    own = share(items, world)
    passes = [(own[i: i + micro], 1.0) for i in range(0, len(own), micro)]
    most = -(-((len(items) + world.size - 1) // world.size) // micro)  # ceil(ceil(n / W) / micro)
    return passes + [(items[:1], 0.0)] * (most - len(passes))


def no_sync(accelerator, model: torch.nn.Module, last: bool):
    """No gradient all-reduce on a step's micro-batches but the last (DDP; a null context otherwise)."""
    return contextlib.nullcontext() if last else accelerator.no_sync(model)
