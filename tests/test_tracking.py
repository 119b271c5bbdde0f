"""metrics.jsonl's one flat schema, and its live copies in TensorBoard and MLflow (`train.report_to`)."""

import json
from pathlib import Path

import pytest

from transferkit.errors import ConfigError
from transferkit.rundir import ENVELOPE, event_metrics, flat_event


def _lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_every_event_has_the_envelope_and_no_nested_object(tiny_config):
    from transferkit import train

    cfg = tiny_config("train.max_steps=4", "train.eval_every=2")
    train(cfg)
    lines = _lines(Path(cfg.output_dir))
    assert {line["event"] for line in lines} == {"baseline", "general_base", "train", "eval", "test"}
    for line in lines:
        assert list(line)[:len(ENVELOPE)] == list(ENVELOPE), line["event"]
        assert not any(isinstance(value, dict) for value in line.values()), line["event"]
    baseline = next(line for line in lines if line["event"] == "baseline")
    assert baseline["split"] == "test" and isinstance(baseline["zero_shot/loss"], float)
    assert next(line for line in lines if line["event"] == "eval")["split"] == "validation"
    assert all(line["epoch"] == 0 for line in lines if line["event"] == "train")


def test_flat_events_give_back_the_nested_metrics_even_with_slashes_in_names():
    metrics = {"accuracy": 0.5, "per_class": {"A/B": {"f1": 0.25}, "x~y": {"f1": 0.75}},
               "confusion_matrix": {"labels": ["A/B", "x~y"], "counts": [[1, 0], [0, 1]]}}
    line = flat_event("test", 3, metrics, split="test")
    assert line["per_class/A~1B/f1"] == 0.25 and line["per_class/x~0y/f1"] == 0.75
    assert event_metrics(json.loads(json.dumps(line))) == metrics
    assert event_metrics(flat_event("general_base", 0, None)) is None
    with pytest.raises(ValueError, match="envelope"):
        flat_event("baseline", 0, {"split": "test"})


def test_a_resumed_run_reads_its_baseline_back_from_the_flat_log(tiny_config, monkeypatch):
    from tiny import crash_and_resume

    from transferkit import train
    from transferkit.train import setup

    cfg = tiny_config("train.max_steps=6", "train.save_every=3")
    calls = []
    real = setup.measure_baseline
    monkeypatch.setattr(setup, "measure_baseline", lambda *a: calls.append(1) or real(*a))
    summary = crash_and_resume(train, cfg, monkeypatch, crash_at=5)
    assert len(calls) == 1  # measured once, read back on resume
    first = next(line for line in _lines(Path(cfg.output_dir)) if line["event"] == "baseline")
    assert summary["baseline"] == {"split": "test", **event_metrics(first)}


def _scalars(folder: Path, tag: str) -> dict[int, float]:
    """{step: value} of a TensorBoard tag, read as TensorBoard reads it; a step seen twice fails."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    steps = [event.step for event in accumulator.Scalars(tag)]
    assert len(steps) == len(set(steps)), f"{tag}: steps logged twice: {steps}"
    return {event.step: event.value for event in accumulator.Scalars(tag)}


def test_tensorboard_and_mlflow_get_every_event_and_a_resumed_run_continues_them(tiny_config, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    from tiny import crash_and_resume

    from transferkit import train

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = tiny_config("train.max_steps=8", "train.save_every=4", "train.eval_every=4",
                      "train.report_to=[tensorboard, mlflow]")
    run = Path(cfg.output_dir)
    crash_and_resume(train, cfg, monkeypatch, crash_at=7)  # steps 5 and 6 are trained twice
    printed = capsys.readouterr()
    assert printed.out == "" and "mlflow" not in printed.err.lower(), printed.err[-2000:]
    lines = _lines(run)
    losses = {line["step"]: line["loss"] for line in lines if line["event"] == "train"}
    assert sorted(losses) == list(range(1, 9))

    # TensorBoard: the resumed writer purged what the crashed run logged after its step-4 checkpoint.
    assert _scalars(run / "tensorboard", "train/loss") == pytest.approx(losses)
    test = next(line for line in lines if line["event"] == "test")
    assert _scalars(run / "tensorboard", "test/token_f1") == pytest.approx({8: test["token_f1"]})
    baseline = next(line for line in lines if line["event"] == "baseline")
    assert _scalars(run / "tensorboard", "baseline/zero_shot/loss") == pytest.approx({0: baseline["zero_shot/loss"]})

    # MLflow: one run in the local file store, continued on resume, finished, the config as params.
    record = json.loads((run / "mlflow.json").read_text())
    assert record["tracking_uri"] == (run / "mlruns").as_uri()
    client = MlflowClient(tracking_uri=record["tracking_uri"])
    mlflow_run = client.get_run(record["run_id"])
    assert mlflow_run.info.status == "FINISHED" and mlflow_run.info.run_name == run.name
    assert mlflow_run.data.params["method.name"] == "lora" and mlflow_run.data.params["train.max_steps"] == "8"
    latest = {}
    for metric in sorted(client.get_metric_history(record["run_id"], "train/loss"), key=lambda m: m.timestamp):
        latest[metric.step] = metric.value
    assert latest == pytest.approx(losses)
    assert mlflow_run.data.metrics["test/token_f1"] == pytest.approx(test["token_f1"])


def test_a_tracker_that_is_not_installed_is_refused_before_any_folder(tiny_config, monkeypatch):
    import builtins

    from transferkit import train

    real_import = builtins.__import__

    def no_mlflow(name, *args, **kwargs):
        if name.split(".")[0] == "mlflow":
            raise ImportError("No module named 'mlflow'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mlflow)
    cfg = tiny_config("train.report_to=mlflow")
    with pytest.raises(ConfigError, match=r"train.report_to' asks for mlflow, which is not installed: "
                                          r"pip install mlflow-skinny"):
        train(cfg)
    assert not Path(cfg.output_dir).exists()


def test_an_unknown_tracker_is_a_config_error(tiny_config):
    with pytest.raises(ConfigError, match=r"train.report_to\[0\]' must be one of \['tensorboard', 'mlflow'\], "
                                          r"got 'wandb'"):
        tiny_config("train.report_to=wandb")


def test_mlflow_metric_names_keep_what_mlflow_allows():
    from transferkit.train.tracking import mlflow_name, scalars

    assert mlflow_name("test/per_class/a+b (c): d.e-f/f1") == "test/per_class/a_b _c_: d.e-f/f1"
    assert mlflow_name("test/per_class/../f1") == "test/per_class/_/f1"
    line = flat_event("eval", 4, {"loss": 1.5, "accuracy": 1, "flag": True, "labels": ["a"]}, split="validation")
    assert scalars(line) == {"validation/loss": 1.5, "validation/accuracy": 1.0}
