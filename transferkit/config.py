"""A run's configuration from YAML and `key=value` overrides, checked against every method's options.

A config is YAML (see `recipes/`) plus `key=value` overrides with dotted keys (`train.max_steps=5`). The
`method` section is parsed with the config class of the method it names, from the registry; everything
else with the dataclasses of `options.py`. `transferkit keys` prints every key with its help
(`describe_keys`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from pathlib import Path

import yaml

from .methods import get_method, method_config_from_dict, method_names
from .errors import ConfigError
from .options import (MethodConfig, RunConfig, from_dict, key_lines, parse_overrides, read_yaml, set_dotted,
                      type_name)


def load_config(path: str | Path | None, overrides: list[str] = (), base: dict | None = None) -> RunConfig:
    """YAML file (or `base` tree) + dotted overrides → validated RunConfig.

    Relative file paths written in a YAML file (`CONFIG_PATHS`) are read from the file's own folder, as
    recipe-based tools do, so a config runs the same from any directory; a relative `model` only when that
    folder holds it (else it is a packaged name). Paths given as overrides, and `output_dir`, are relative to
    the current directory, like every other command-line path.
    """
    tree = dict(base or {})
    if path is not None:
        tree.update(paths_from(read_yaml(path), Path(path).resolve().parent))
    given = parse_overrides(list(overrides))
    for key, value in given:
        set_dotted(tree, key, value)
    try:
        cfg = from_dict(RunConfig, tree, method_config=method_config_from_dict)
        cfg.validate()
    except ConfigError as exc:
        raise located(exc, path, {key for key, _ in given}) from None
    return cfg


def located(exc: ConfigError, path: str | Path | None, overridden: set[str]) -> ConfigError:
    """The error with the config file and line of the key it names, when that key was written in the file."""
    match = re.search(r"config key '([^']+)'", str(exc))
    if path is None or match is None or match.group(1) in overridden:
        return exc
    line = key_lines(path).get(match.group(1))
    return ConfigError(f"{path}:{line}: {exc}") if line else exc


def config_to_dict(cfg: typing.Any) -> dict:
    return dataclasses.asdict(cfg)


CONFIG_PATHS = {"data": ("train", "validation", "test"), "forgetting": ("reference", "replay_data")}
NOT_PATHS = {"general", "general-validation", "none"}  # names of packaged texts, not files


def paths_from(tree: dict, folder: Path) -> dict:
    """`tree` with its relative file paths made absolute against `folder` (the config file's)."""
    tree = dict(tree)
    for section, keys in CONFIG_PATHS.items():
        if isinstance(tree.get(section), dict):
            tree[section] = dict(tree[section])
            for key in keys:
                value = tree[section].get(key)
                if isinstance(value, str) and value and value not in NOT_PATHS and not Path(value).is_absolute():
                    tree[section][key] = os.path.normpath(folder / value)
    model = tree.get("model")
    if isinstance(model, str) and not Path(model).is_absolute() and (folder / model).exists():
        tree["model"] = os.path.normpath(folder / model)
    return tree


def with_method_defaults(cfg: RunConfig, schema: str, architecture: str | None = None) -> RunConfig:
    """`cfg` with every null `train.lr` (for the model's `architecture` on data of `schema` — "classification",
    "instruction", "lm", "preference" — where the method's default depends on them), `train.warmup_ratio`,
    `train.weight_decay`, `train.select` replaced by its method's default, `train.epochs` too when no budget is
    given, and — for classification, the one task with a new head — `train.head_lr` (else it stays null)."""
    defaults = get_method(cfg.method.name).defaults
    train = cfg.train
    lr = defaults.lr_for(architecture, schema) if train.lr is None else train.lr
    head_lr = train.head_lr
    if schema == "classification" and head_lr is None:
        head_lr = lr if defaults.head_lr is None else defaults.head_lr
    epochs = defaults.epochs if train.epochs is None and train.max_steps is None else train.epochs
    train = dataclasses.replace(
        train, lr=lr, head_lr=head_lr, epochs=epochs,
        warmup_ratio=defaults.warmup_ratio if train.warmup_ratio is None else train.warmup_ratio,
        weight_decay=defaults.weight_decay if train.weight_decay is None else train.weight_decay,
        select=defaults.select if train.select is None else train.select)
    return dataclasses.replace(cfg, train=train)


def with_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """`cfg` with `key=value` overrides applied and checked as on the command line."""
    return load_config(None, overrides, base=config_to_dict(cfg))


def with_method(cfg: RunConfig, name: str, overrides: dict | None = None) -> RunConfig:
    """`cfg` training method `name` from that method's own defaults (the config's method keys belong to its
    method; the pooling is kept), then `overrides` {dotted key: value}."""
    switched = dataclasses.replace(cfg, method=method_config_from_dict({"name": name, "pooling": cfg.method.pooling}))
    return with_overrides(switched, [f"{key}={value}" for key, value in (overrides or {}).items()])


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def describe_keys(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) for every key, for `transferkit keys`."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if cls is RunConfig and f.name == "method":
            rows.append((prefix + "method.name", "str", MethodConfig.name,
                         f.metadata["help"] + "; each method adds its own keys"))
            rows.extend(_method_keys())
            continue
        if dataclasses.is_dataclass(tp):
            rows.extend(describe_keys(tp, prefix + f.name + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append((prefix + f.name, type_name(tp), repr(default), f.metadata.get("help", "")))
    return _with_method_defaults(rows) if cls is RunConfig else rows


def _method_keys() -> list[tuple[str, str, str, str]]:
    """method.* keys of every registered method, each listed once with the methods that take it."""
    seen: dict[tuple[str, str, str, str], list[str]] = {}
    for name in method_names():
        for row in describe_keys(get_method(name).config_cls, "method."):
            if row[0] != "method.name":
                seen.setdefault(row, []).append(name)
    merged: dict[str, list[tuple[str, str, str, list[str]]]] = {}
    for (key, tp, default, help_text), users in seen.items():
        merged.setdefault(key, []).append((tp, default, help_text, users))
    rows = []
    for key, meanings in merged.items():  # one row per key; a key two methods read differently says both
        if len(meanings) == 1 or len({(tp, default) for tp, default, _, _ in meanings}) == 1:
            tp, default = meanings[0][0], meanings[0][1]
            every = len({u for *_, users in meanings for u in users}) == len(method_names())
            text = "; ".join(h if every else f"{h} [{', '.join(users)}]" for _, _, h, users in meanings)
        else:
            tp = " / ".join(dict.fromkeys(m[0] for m in meanings))
            default = " / ".join(dict.fromkeys(m[1] for m in meanings))
            text = "; ".join(f"{', '.join(users)}: {h} (default {d})" for _, d, h, users in meanings)
        rows.append((key, tp, default, text))
    return rows


def _with_method_defaults(rows: list[tuple[str, str, str, str]]) -> list[tuple[str, str, str, str]]:
    """The train keys whose default is the method's: 'per method' and each method's value in the help."""
    per_method = {name: get_method(name).defaults.describe() for name in method_names()}
    out = []
    for key, tp, default, help_text in rows:
        values = {name: shown[key] for name, shown in per_method.items() if key in shown}
        if values:
            listed = ", ".join(f"{name} {value}" for name, value in values.items())
            default, help_text = "per method", f"{help_text} ({listed})"
        out.append((key, tp, default, help_text))
    return out
