"""What the experiments share: a run that continues where it stopped.

Each experiment trains many runs with `transferkit.api.train`; an interrupted experiment re-run reuses every
finished run with the same config and resumes an interrupted one from its last checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

from transferkit.api import train
from transferkit.config import dump_config, load_config, with_method_defaults
from transferkit.options import RunConfig


def continue_run(cfg: RunConfig, task: str) -> dict:
    """The summary of the run `cfg` describes: read back when a run with this config finished, resumed from its
    checkpoint when one stopped midway, else trained from the start. The config as asked is kept beside the run
    directory (`<run>.requested.yaml`); runs from before that file existed are matched on their config.yaml."""
    run_dir = Path(cfg.output_dir)
    requested = run_dir.with_name(run_dir.name + ".requested.yaml")
    asked = dump_config(cfg)
    if requested.is_file():
        same = requested.read_text() == asked
    else:
        same = (run_dir / "config.yaml").is_file() and load_config(run_dir / "config.yaml") == with_method_defaults(
            cfg, task)
    if same and (run_dir / "summary.json").is_file():
        return json.loads((run_dir / "summary.json").read_text())
    resume = same and any((run_dir / "checkpoints").glob("step-*"))
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    requested.write_text(asked)
    return train(cfg, resume=resume, overwrite=not resume)
