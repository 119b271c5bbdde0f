"""Live copies of metrics.jsonl in the dashboards people already use (`train.report_to`).

metrics.jsonl stays the record; each tracker receives every line as it is written, through those libraries'
own writers:

    tensorboard   <run>/tensorboard/events.out.tfevents.*     tensorboard --logdir runs/   (every run beside)
    mlflow        $MLFLOW_TRACKING_URI when set, else the local file store <run>/mlruns:
                  mlflow ui --backend-store-uri <run>/mlruns   (experiment "transferkit", run named after
                  the run folder; its id is kept in <run>/mlflow.json so a resumed run continues it)

Only numbers are sent (booleans, strings and lists such as a confusion matrix stay in metrics.jsonl), each as
a scalar named "<section>/<metric path>": section is the split for "eval" and "test" events ("validation",
"test"), else the event ("train", "baseline", "general_base"); its step is the event's, its time the event's.
The run's resolved config goes along too (TensorBoard: a text panel "config"; MLflow: params by dotted key).

A resumed run purges what a stopped run had logged after its checkpoint, as metrics.jsonl does (TensorBoard's
`purge_step`); MLflow keeps every value it was sent, so a step trained twice shows both there.
"""

from __future__ import annotations

import json
import os
import re

from ..errors import ConfigError
from ..rundir import ENVELOPE, RunDir, Tracker

PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow-skinny"}  # what `pip install` brings each


def check_available(report_to: list[str]) -> None:
    """Before anything is written: every tracker asked for can be imported."""
    for name in report_to:
        try:
            if name == "tensorboard":
                import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it)
            else:
                import mlflow  # noqa: F401
        except ImportError:
            raise ConfigError(f"config key 'train.report_to' asks for {name}, which is not installed: "
                              f"pip install {PACKAGES[name]}  (or pip install 'transferkit[tracking]')") from None


def open_trackers(report_to: list[str], run: RunDir, config_text: str, resume_step: int | None) -> list[Tracker]:
    """One tracker per name in `report_to`; `resume_step` is the step a resumed run continues after."""
    opened = {"tensorboard": TensorBoardTracker, "mlflow": MLflowTracker}
    return [opened[name](run, config_text, resume_step) for name in dict.fromkeys(report_to)]


def scalars(line: dict) -> dict[str, float]:
    """{"<section>/<metric path>": number} of one metrics.jsonl line (see the module docstring)."""
    section = line["split"] if line["event"] in ("eval", "test") and line["split"] else line["event"]
    return {f"{section}/{path}": float(value) for path, value in line.items()
            if path not in ENVELOPE and isinstance(value, (int, float)) and not isinstance(value, bool)}


class TensorBoardTracker:
    def __init__(self, run: RunDir, config_text: str, resume_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: on resume, the events a stopped run wrote after its checkpoint are hidden, as they are
        # dropped from metrics.jsonl (a run resumed from step 0 keeps only the base's step-0 measurements).
        self.writer = SummaryWriter(log_dir=str(run.inside(run.path / "tensorboard")), flush_secs=10,
                                    purge_step=resume_step + 1 if resume_step is not None else None)
        if resume_step is None:
            self.writer.add_text("config", "```yaml\n" + config_text + "\n```", 0)

    def log(self, line: dict) -> None:
        for tag, value in scalars(line).items():
            self.writer.add_scalar(tag, value, line["step"], walltime=line["time"])

    def close(self, outcome: str) -> None:
        self.writer.close()


def mlflow_name(tag: str) -> str:
    """A scalar tag as an MLflow metric key: MLflow allows only letters, digits, `_ - . : space /` and no
    `.`/`..` path parts, so anything else (a class named "a+b", "..") becomes "_"."""
    parts = [re.sub(r"[^\w.\- :]", "_", part) for part in tag.split("/")]
    return "/".join("_" if part in ("", ".", "..") else part for part in parts)


class MLflowTracker:
    STATUS = {"finished": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}

    def __init__(self, run: RunDir, config_text: str, resume_step: int | None):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or (run.inside(run.path / "mlruns")).as_uri()
        if uri.startswith("file:"):
            # MLflow 3 keeps its local file store in maintenance mode behind this switch; it is the store that
            # needs no server or database, so a local run sets it (for this process only).
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        record = run.path / "mlflow.json"
        if record.is_file():  # a resumed run continues its MLflow run
            self.run_id = json.loads(record.read_text())["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        experiment = self.client.get_experiment_by_name("transferkit")
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment("transferkit")
        self.run_id = self.client.create_run(experiment_id, run_name=run.path.name,
                                             tags={"transferkit.run_dir": str(run.path)}).info.run_id
        run.write_json(record, {"tracking_uri": uri, "run_id": self.run_id})
        params = [Param(key, value[:6000]) for key, value in config_params(config_text).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def log(self, line: dict) -> None:
        from mlflow.entities import Metric

        millis = int(line["time"] * 1000)
        metrics = [Metric(mlflow_name(tag), value, millis, line["step"]) for tag, value in scalars(line).items()]
        for start in range(0, len(metrics), 1000):  # and at most 1000 metrics
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])

    def close(self, outcome: str) -> None:
        self.client.set_terminated(self.run_id, status=self.STATUS[outcome])


def config_params(config_text: str) -> dict[str, str]:
    """{dotted key: value as text} of a resolved config.yaml."""
    import yaml

    params: dict[str, str] = {}

    def walk(node, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                params[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list) else str(value)

    walk(yaml.safe_load(config_text), "")
    return params

