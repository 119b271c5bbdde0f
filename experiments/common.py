"""What the experiments share: a run that continues where it stopped.

Each experiment trains many runs with `transferkit.api.train`; an interrupted experiment re-run reuses every
finished run with the same config and resumes an interrupted one from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import yaml

from transferkit.api import train
from transferkit.config import dump_config, load_config, with_method_defaults
from transferkit.options import RunConfig


def same_as_recorded(config_yaml: Path, cfg: RunConfig, task: str) -> bool:
    """Whether a run's config.yaml from before `<run>.requested.yaml` existed records `cfg`: read as written
    (its relative data paths were the working directory's), keys added since at their defaults."""
    def data_paths_absolute(c: RunConfig) -> RunConfig:
        paths = {k: os.path.abspath(v) if v else v for k, v in
                 (("train", c.data.train), ("validation", c.data.validation), ("test", c.data.test))}
        return dataclasses.replace(c, data=dataclasses.replace(c.data, **paths))

    recorded = load_config(None, base=yaml.safe_load(config_yaml.read_text()))
    return data_paths_absolute(recorded) == data_paths_absolute(with_method_defaults(cfg, task))


def continue_run(cfg: RunConfig, task: str) -> dict:
    """The summary of the run `cfg` describes: read back when a run with this config finished, resumed from its
    checkpoint when one stopped midway, else trained from the start. The config as asked is kept beside the run
    directory (`<run>.requested.yaml`); runs from before that file existed are matched on their config.yaml."""
    run_dir = Path(cfg.output_dir)
    requested = run_dir.with_name(run_dir.name + ".requested.yaml")
    asked = dump_config(cfg)
    if requested.is_file():  # compared as configs, so a key added to the code since reads as its default
        same = load_config(None, base=yaml.safe_load(requested.read_text())) == cfg
    else:
        same = (run_dir / "config.yaml").is_file() and same_as_recorded(run_dir / "config.yaml", cfg, task)
    if same and (run_dir / "summary.json").is_file():
        return json.loads((run_dir / "summary.json").read_text())
    resume = same and any((run_dir / "checkpoints").glob("step-*"))
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    requested.write_text(asked)
    return train(cfg, resume=resume, overwrite=not resume)
