"""A training run as three steps, each readable alone:

    session = setup(cfg)        data, model, method, optimizer, run directory, the base's measurements
    stats = fit(...)            the optimizer steps (stoppable with SIGINT / SIGTERM, resumable)
    summary = finish(session)   adapter, evaluation, assessment against the base, summary.json
"""

from __future__ import annotations

import json
import logging
import signal

from ..options import RunConfig
from ..rundir import RunDir
from .distributed import launched_rank
from .finish import consolidate, finish
from .loop import checkpoint_now, fit
from .setup import setup
from .signals import Stopped, StopRequest

log = logging.getLogger(__name__)  # the CLI shows INFO on stdout; a library user chooses


def train(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False) -> dict:
    """Run a whole training job described by `cfg`; returns the summary ({} on every process of a multi-process
    run but the main one, which writes it). The trackers of `train.report_to` are closed however it ends, marked
    finished, stopped (resumable) or failed."""
    run = RunDir(cfg.output_dir, writer=launched_rank() == 0)
    outcome = "failed"
    try:
        summary = run_steps(cfg, run, resume, overwrite)
        outcome = "finished"
        return summary
    except Stopped:
        outcome = "stopped"
        raise
    finally:
        run.close_trackers(outcome)


def run_steps(cfg: RunConfig, run: RunDir, resume: bool, overwrite: bool) -> dict:
    """setup → fit → finish."""
    try:
        session = setup(cfg, run, resume=resume, overwrite=overwrite)
    except KeyboardInterrupt:
        raise interrupted_in_setup(run) from None
    if session.finished:
        log.info(f"{session.run.path} finished at step {session.state.step} already; nothing to train "
              f"(summary in {session.run.summary})")
        return json.loads(session.run.summary.read_text())
    validate = session.validate if session.splits.validation is not None else None
    session.memory.start_training()
    with StopRequest() as stop, session.clock("train"):
        stats = fit(session.parts, session.batches, session.plan, session.run, session.state, cfg.train, validate,
                    stop)
    session.memory.end_training()
    with session.clock("save"):  # the last step's checkpoint, for resuming: every rank takes part
        checkpoint_now(session.parts, session.run, session.state, cfg.train.keep_checkpoints)
    model = consolidate(session)
    if model is None:  # not the main process, which finishes alone
        return {}
    return finish(session, stats, model)


def interrupted_in_setup(run: RunDir) -> Stopped:
    """Ctrl-C before the first step: say what was kept and the command that continues."""
    if run.config.is_file():
        return Stopped(signal.SIGINT, f"stopped by SIGINT before the first training step; the measurements of the "
                                      f"base already logged are kept. Continue with: transferkit train --resume "
                                      f"{run.path} (or --overwrite to start over)")
    return Stopped(signal.SIGINT, "stopped by SIGINT before anything was written")
