"""The run directory (DESIGN.md "Run directory").

    runs/<name>/config.yaml    resolved config, re-runnable as is
                metrics.jsonl  one flat JSON object per event ("baseline", "general_base", "train", "eval", "test"):
                               {"event", "step", "epoch", "split", "time", <metric path>: value, ...}
                               (`flat_event`: nested metrics become paths such as "per_class/Emma/f1");
                               "train" events carry `peak_memory_bytes`, the training phase's peak so far in
                               this process (summary.json's `memory.train_peak_bytes` as of that step)
                summary.json   final metrics, baseline and gain, forgetting, params, wall time, tokens/s, peak memory
                labels.json    classification: class names by id
                test_predictions.jsonl  the tuned model's answer to every test example
                baseline_<prompt>_predictions.jsonl  the untrained model's, zero-shot and k-shot
                test_reliability.png    classification: the tuned model's reliability diagram
                adapter/       what the method's `load` needs (PEFT format for PEFT methods)
                checkpoints/   resumable state, written atomically (`train/checkpoint.py`)
                reference_logprobs.json  preference data: the reference's answer log-probabilities
                               (`train/reference.py`)
                merged/        when a later run names this one as its `model:`: the adapter folded into the base,
                               a plain HF folder (`transferkit merge`), which that run loads

`train` writes it; `runs.load_trained` and `eval` read it. With several processes only the main one writes: the
others hold a `RunDir(path, writer=False)`, whose writes do nothing.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable, Protocol

from .errors import UserError
from .files import append_jsonl, jsonl_text, write_dir_atomic, write_file_atomic


ENVELOPE = ("event", "step", "epoch", "split", "time")  # the keys every metrics.jsonl line has (null when n/a)


def flat_event(event: str, step: int, metrics: dict | None, *, split: str | None = None,
               epoch: int | None = None) -> dict:
    """One metrics.jsonl line: the envelope, then every metric at its path. A nested dict becomes
    "outer/inner" keys, escaped as in a JSON Pointer (RFC 6901: "~" → "~0", "/" → "~1", so a class named
    "A/B" survives); numbers, strings, booleans, nulls and lists are values. `time` is Unix seconds."""
    line = {"event": event, "step": step, "epoch": epoch, "split": split, "time": round(time.time(), 3)}
    for path, value in _paths(metrics or {}, ""):
        if path in line:
            raise ValueError(f"metric {path!r} would overwrite the envelope key of the same name")
        line[path] = value
    return line


def event_metrics(line: dict) -> dict | None:
    """The nested metrics a metrics.jsonl line was logged from (`flat_event` inverted); None when the event
    carried no metrics (a forgetting reference of `none`)."""
    nested: dict = {}
    for path, value in line.items():
        if path in ENVELOPE:
            continue
        *parents, leaf = [part.replace("~1", "/").replace("~0", "~") for part in path.split("/")]
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested or None


def _paths(tree: dict, prefix: str):
    for key, value in tree.items():
        path = prefix + str(key).replace("~", "~0").replace("/", "~1")
        if isinstance(value, dict) and value:
            yield from _paths(value, path + "/")
        else:
            yield path, value


class Tracker(Protocol):
    """Somewhere else every metrics.jsonl line also goes as it is written (`train/tracking.py`)."""

    def log(self, line: dict) -> None: ...

    def close(self, outcome: str) -> None: ...   # "finished", "stopped" or "failed"


class RunDir:
    """Every file a run writes lies inside `path` (checked on each write)."""

    def __init__(self, path: str | Path, writer: bool = True):
        self.path = Path(path).expanduser().resolve()
        self.writer = writer  # False on every rank but the main one of a multi-process run: nothing is written
        self._tail_checked = False  # metrics.jsonl's last line is checked once, before the first append
        self.trackers: list[Tracker] = []  # `train.report_to`: attached by setup, closed by the recipe

    config = property(lambda self: self.path / "config.yaml")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    summary = property(lambda self: self.path / "summary.json")
    adapter = property(lambda self: self.path / "adapter")
    checkpoints = property(lambda self: self.path / "checkpoints")
    labels = property(lambda self: self.path / "labels.json")  # classification: class names by id
    predictions = property(lambda self: self.path / "test_predictions.jsonl")
    diagnostics = property(lambda self: self.path / "diagnostics")  # `transferkit diagnose`: json and plot
    reference_logprobs = property(lambda self: self.path / "reference_logprobs.json")  # preference data
    merged = property(lambda self: self.path / "merged")  # the base a run chained on this one loads

    def check_writable(self, overwrite: bool) -> None:
        """Refuse a non-empty folder unless asked to overwrite (a finished run is never lost by accident)."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"{self.path}: output_dir exists and is not a folder")
        if self.path.is_dir() and any(self.path.iterdir()) and not overwrite:
            raise UserError(f"{self.path}: output_dir is not empty; use --resume {self.path} to continue it, "
                            f"--overwrite to replace it, or choose another output_dir")

    def check_replaceable(self, protected: list[str | Path]) -> None:
        """`--overwrite` deletes the folder: only ever a previous run's folder, never one that
        holds the run's own input files, the working directory or one of its parents."""
        if not self.path.is_dir() or not any(self.path.iterdir()):
            return
        if not (self.config.is_file() or self.metrics.is_file()):
            raise UserError(f"{self.path}: output_dir is not empty and is not a transferkit run directory "
                            f"(no config.yaml or metrics.jsonl); --overwrite only replaces run directories")
        cwd = Path.cwd().resolve()
        if self.path == cwd or self.path in cwd.parents:
            raise UserError(f"{self.path}: output_dir contains the working directory; refusing to replace it")
        for path in protected:
            resolved = Path(path).expanduser().resolve()
            if resolved == self.path or self.path in resolved.parents:
                raise UserError(f"{self.path}: output_dir contains {resolved}, an input of this run; "
                                f"--overwrite would delete it")

    def inside(self, path: Path) -> Path:
        resolved = path.resolve()
        if resolved != self.path and self.path not in resolved.parents:
            raise UserError(f"{path}: refusing to write outside the run directory {self.path}")
        return path

    def create(self, overwrite: bool, protected: list[str | Path] = ()) -> None:
        if not self.writer:
            return
        self.check_writable(overwrite)
        self.check_replaceable(list(protected))
        if self.path.is_dir() and any(self.path.iterdir()):
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)

    def write_file_atomic(self, path: Path, write: Callable[[Path], object]) -> None:
        """`write(tmp)` fills a temporary file beside `path`, which then replaces `path` in one step."""
        if self.writer:
            write_file_atomic(self.inside(path), write)

    def write_dir_atomic(self, path: Path, write: Callable[[Path], object]) -> None:
        """`write(tmp)` fills a temporary folder beside `path` (the adapter, a checkpoint), renamed onto `path`."""
        if self.writer:
            write_dir_atomic(self.inside(path), write)

    def write_text_atomic(self, path: Path, text: str) -> None:
        self.write_file_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    def write_json(self, path: Path, obj) -> None:
        self.write_text_atomic(path, json.dumps(obj, indent=2) + "\n")

    def write_jsonl(self, path: Path, rows: list[dict]) -> None:
        self.write_text_atomic(path, jsonl_text(rows))

    def read_summary(self) -> dict:
        """summary.json of a finished run ({} before the run finished)."""
        return json.loads(self.summary.read_text()) if self.summary.is_file() else {}

    def read_predictions(self) -> list[dict]:
        """test_predictions.jsonl: the tuned model's answer to every test example ([] where none was written)."""
        if not self.predictions.is_file():
            return []
        return [json.loads(line) for line in self.predictions.read_text(encoding="utf-8").splitlines() if line.strip()]

    def read_labels(self) -> list[str] | None:
        """A classification run's class names (index = class id); None for a language-model run."""
        return json.loads(self.labels.read_text())["labels"] if self.labels.is_file() else None

    def log(self, event: str, step: int, metrics: dict | None, *, split: str | None = None,
            epoch: int | None = None) -> None:
        """Append one event to metrics.jsonl (`flat_event`) and pass it to every tracker."""
        if not self.writer:
            return
        line = flat_event(event, step, metrics, split=split, epoch=epoch)
        if not self._tail_checked:  # once, before the first append: the file is inside, its last line whole
            self.inside(self.metrics)
            self._drop_partial_last_line()
            self._tail_checked = True
        append_jsonl(self.metrics, line)
        for tracker in self.trackers:
            tracker.log(line)

    def close_trackers(self, outcome: str) -> None:
        """Flush and close every tracker once, whatever happens to the run."""
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            tracker.close(outcome)

    def _drop_partial_last_line(self) -> None:
        """A kill mid-write can leave the last line partial; appending after it would bury it mid-file."""
        if not self.metrics.is_file():
            return
        data = self.metrics.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.metrics, "r+b") as fh:
                fh.truncate(data.rfind(b"\n") + 1)

    def read_events(self) -> list[dict]:
        if not self.metrics.is_file():
            return []
        lines = [line for line in self.metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
        events = []
        for number, line in enumerate(lines):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                if number != len(lines) - 1:
                    raise
                # A kill mid-write can leave the last line partial; it was never a complete event.
        return events

    def truncate_events_after(self, step: int) -> None:
        """On resume: drop events logged after the checkpoint so none repeat."""
        kept = [e for e in self.read_events() if e.get("step", 0) <= step and e.get("event") != "test"]
        self.write_text_atomic(self.metrics, jsonl_text(kept))
