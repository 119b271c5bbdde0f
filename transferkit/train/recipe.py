"""A training run as three steps, each readable alone:

    session = setup(cfg)        data, model, method, optimizer, run directory, the base's measurements
    stats = fit(...)            the optimizer steps (stoppable with SIGINT / SIGTERM, resumable)
    summary = finish(session)   adapter, evaluation, assessment against the base, summary.json
"""

from __future__ import annotations

from ..options import RunConfig
from .finish import finish
from .loop import fit
from .setup import setup
from .signals import StopRequest


def train(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False) -> dict:
    """Run a whole training job described by `cfg`; returns the summary."""
    session = setup(cfg, resume=resume, overwrite=overwrite)
    validate = session.validate if session.splits.validation is not None else None
    with StopRequest() as stop, session.clock("train"):
        stats = fit(session.parts, session.batches, session.plan, session.run, session.state, cfg.train, validate,
                    stop)
    return finish(session, stats)
