"""transferkit: adapt a pretrained model to your task with the right transfer
method, and measure what it cost and what it changed.

Python API (the CLI verbs call these):

    from transferkit import load_config, train, load_trained, generate, evaluate_run
    summary = train(load_config("recipes/quickstart.yaml", ["train.max_steps=5"]))
"""

from __future__ import annotations

import os

# No network at run time: models come from local folders and packages.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

__version__ = "0.1.0"

from .api import evaluate_run, generate, load_trained, predict, report, train  # noqa: E402
from .config import load_config  # noqa: E402
from .options import RunConfig  # noqa: E402

__all__ = ["train", "load_config", "load_trained", "generate", "evaluate_run", "predict", "report", "RunConfig",
           "__version__"]
