"""`transferkit cost --calibrate`: a few real optimizer steps of the config on this machine, held against the
prediction. The run is the config itself with evaluation switched off (no baseline, no validation, no test,
no forgetting reference), in a temporary folder that is deleted afterwards.

    measured peak   summary.json's memory.train_peak_increase_bytes: the training phase's peak over what the
                    process held before the model was loaded (resident set on CPU, allocated on CUDA)
    measured step   seconds between the end of step 1 and the end of the last step (metrics.jsonl's `time`)
                    / the steps between: the first step (warm-up) excluded — the mean of the per-step
                    intervals, which are kept too (`step_seconds`; their median beside it)
    settled step    the first step from which the training phase's peak grows by at most `SETTLED` of its final
                    value (metrics.jsonl's per-step `peak_memory_bytes`): a peak still growing at the last step
                    may under-read a long run's, so it is reported beside the peak
    measured MFU    predicted FLOPs per step / (measured seconds per step × the hardware's peak FLOP/s)
    time scale      measured ÷ predicted seconds per step: the calibrated cost is the prediction × it
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import dump_config, with_overrides
from ..errors import ConfigError, UserError
from ..options import RunConfig
from ..rundir import RunDir
from .estimate import Cost, estimate
from .hardware import Hardware

QUIET = ["eval.baseline=false", "forgetting.reference=none", "train.eval_every=0", "train.save_every=0",
         "data.validation_fraction=0", "data.validation=null", "data.test=null", "forgetting.replay=0",
         "forgetting.ewc=0"]
SETTLED = 0.01  # a peak has settled at the step from which it grows by at most 1 % of its final value


@dataclass
class Measured:
    """What a few real steps measured (`measure_steps`)."""
    peak_bytes: int             # the training phase's peak increase over the process before the model
    step_seconds: list[float]   # each step's seconds after the first (the warm-up)
    step_peak_bytes: list[int]  # the training phase's peak increase after each step, the warm-up's first

    @property
    def settled_step(self) -> int:
        """The first step (1 = the warm-up) from which the peak grows by at most `SETTLED` of its final value."""
        final = self.step_peak_bytes[-1]
        return next(step for step, peak in enumerate(self.step_peak_bytes, 1) if final - peak <= SETTLED * final)

    @property
    def still_growing(self) -> bool:
        """Whether the peak grew by more than `SETTLED` at the last step, after at least two steps past the
        warm-up (the step after the warm-up allocates the optimizer's state, so it grows by design)."""
        return len(self.step_peak_bytes) > 2 and self.settled_step == len(self.step_peak_bytes)


@dataclass
class Calibration:
    predicted: Cost
    steps: int
    measured: Measured

    @property
    def peak_bytes(self) -> int:
        return self.measured.peak_bytes

    @property
    def seconds_per_step(self) -> float:
        """The mean measured step: (end of the last step − end of step 1) / the steps between."""
        return statistics.fmean(self.measured.step_seconds)

    @property
    def mfu(self) -> float:
        return self.predicted.flops_per_step / (self.seconds_per_step * self.predicted.hardware.peak_flops)

    @property
    def memory_error(self) -> float:
        """(predicted − measured) / measured peak."""
        return self.predicted.peak_bytes / self.peak_bytes - 1

    @property
    def time_scale(self) -> float:
        """Measured ÷ predicted seconds per step (the prediction's own scale undone)."""
        return self.seconds_per_step / self.predicted.seconds_per_step * self.predicted.hardware.time_scale

    def calibrated(self) -> Cost:
        """The prediction with its time scaled to what this machine measured."""
        hardware = dataclasses.replace(self.predicted.hardware, time_scale=self.time_scale,
                                       mfu_source=f"{self.predicted.hardware.mfu_source}; × {self.time_scale:.2f} "
                                                  f"measured by --calibrate ({self.steps} steps)")
        return dataclasses.replace(self.predicted, hardware=hardware)

    def as_dict(self) -> dict:
        return {"steps": self.steps, "measured_peak_bytes": self.peak_bytes, "predicted_peak_bytes":
                self.predicted.peak_bytes, "memory_error": self.memory_error,
                "measured_step_peak_bytes": self.measured.step_peak_bytes, "settled_step": self.measured.settled_step,
                "peak_still_growing": self.measured.still_growing,
                "measured_seconds_per_step": self.seconds_per_step,
                "measured_step_seconds": self.measured.step_seconds,
                "measured_median_seconds_per_step": statistics.median(self.measured.step_seconds),
                "predicted_seconds_per_step": self.predicted.seconds_per_step,
                "measured_mfu": self.mfu, "time_scale": self.time_scale,
                "calibrated_seconds": self.calibrated().seconds}


def calibrate(cfg: RunConfig, hardware: Hardware, steps: int = 5) -> Calibration:
    """Predict, then train `steps` + 1 real steps of `cfg` here (the first is the warm-up) and measure. The
    steps run in a child process (`transferkit train`): its resident memory before the model is then its own,
    not inflated by whatever this process allocated and freed before (glibc reuses freed memory, which would
    hide part of the model's)."""
    if hardware.device == "cuda" and not torch.cuda.is_available() or hardware.device == "cpu" and \
            hardware.name != "cpu":
        raise ConfigError(f"--calibrate measures this machine, which is not '{hardware.name}': use --hardware cpu, "
                          f"or run it on that machine")
    predicted = estimate(cfg, hardware)
    measured = measure_steps(with_overrides(cfg, [f"train.device={hardware.device}"]), steps, "--calibrate")
    return Calibration(predicted, steps, measured)


TRAIN = [sys.executable, "-m", "transferkit", "train"]  # the child that trains: `transferkit train CONFIG`


def measure_steps(cfg: RunConfig, steps: int, who: str, command: list[str] = TRAIN) -> Measured:
    """The training phase's peak increase, each optimizer step's seconds and the peak after each step, measured
    by training `steps` + 1 real steps of `cfg` in a child process (`command` + the config's path) with
    evaluation off (`QUIET`), in a temporary folder deleted afterwards; the first step is the warm-up, excluded
    from the timing (`steps` intervals between the ends of consecutive steps). A failure raises `UserError`
    naming `who`."""
    folder = Path(tempfile.mkdtemp(prefix="transferkit-calibrate-"))
    try:
        run = with_overrides(cfg, [*QUIET, f"train.max_steps={steps + 1}", "train.epochs=null", "train.log_every=1",
                                   "train.max_minutes=null", f"output_dir={folder / 'run'}"])
        config = folder / "config.yaml"
        config.write_text(dump_config(run))
        child = subprocess.run([*command, str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
        if child.returncode:
            last = child.stderr.strip().splitlines()[-1] if child.stderr.strip() else f"exit {child.returncode}"
            raise UserError(f"{who}: the measuring run failed: {last}")
        summary = json.loads((folder / "run" / "summary.json").read_text())
        events = [line for line in RunDir(folder / "run").read_events() if line["event"] == "train"]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    times = [event["time"] for event in events]
    intervals = [max(later - earlier, 1e-9) for earlier, later in zip(times, times[1:])]  # step 2 … the last
    before = summary["memory"]["before_model_bytes"]
    # Linux (6.2 on) counts a process's resident pages in per-CPU counters that /proc reads approximately: two
    # readings of the high-water mark were seen to fall by 300 KiB, so the peaks are kept as a running maximum.
    peaks = list(itertools.accumulate((event["peak_memory_bytes"] - before for event in events), max))
    return Measured(max([summary["memory"]["train_peak_increase_bytes"], *peaks[-1:]]), intervals, peaks)
