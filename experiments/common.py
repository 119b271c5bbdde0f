"""What the experiments share: a run that continues where it stopped.

Each experiment trains many runs with `transferkit.api.train`; an interrupted experiment re-run reuses every
finished run with the same config and resumes an interrupted one from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import yaml

from transferkit import compare
from transferkit.config import dump_config, load_config, with_method_defaults
from transferkit.options import RunConfig


def same_as_recorded(config_yaml: Path, cfg: RunConfig, schema: str) -> bool:
    """Whether a run's config.yaml from before `<run>.requested.yaml` existed records `cfg`: read as written
    (its relative data paths were the working directory's), keys added since at their defaults."""
    def data_paths_absolute(c: RunConfig) -> RunConfig:
        paths = {k: os.path.abspath(v) if v else v for k, v in
                 (("train", c.data.train), ("validation", c.data.validation), ("test", c.data.test))}
        return dataclasses.replace(c, data=dataclasses.replace(c.data, **paths))

    recorded = load_config(None, base=yaml.safe_load(config_yaml.read_text()))
    # resolved from the data when the run began, as a null lr is from the method
    if cfg.preference.reference == "auto":
        recorded = dataclasses.replace(recorded, preference=dataclasses.replace(recorded.preference, reference="auto"))
    if cfg.eval.headline is None:
        recorded = dataclasses.replace(recorded, eval=dataclasses.replace(recorded.eval, headline=None))
    return data_paths_absolute(recorded) == data_paths_absolute(with_method_defaults(cfg, schema))


def continue_run(cfg: RunConfig, schema: str) -> dict:
    """`transferkit.compare.continue_run`, which also adopts a finished run from before
    `<run>.requested.yaml` existed when its config.yaml records `cfg`."""
    run_dir = Path(cfg.output_dir)
    requested = compare.requested_path(run_dir)
    if not requested.is_file() and (run_dir / "config.yaml").is_file() and \
            same_as_recorded(run_dir / "config.yaml", cfg, schema):
        requested.write_text(dump_config(cfg))
    return compare.continue_run(cfg)
