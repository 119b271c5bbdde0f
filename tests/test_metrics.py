"""Evaluation metrics against hand-computed values."""

import math

import pytest

from transferkit.errors import ConfigError
from transferkit.evaluate.metrics import (confusion_matrix, expected_calibration_error, macro_f1, per_class,
                                          token_f1)

# gold:      0 0 0 1 1 2
# predicted: 0 0 1 1 2 2
PRED, GOLD = [0, 0, 1, 1, 2, 2], [0, 0, 0, 1, 1, 2]


def test_confusion_matrix_rows_are_gold_columns_predicted():
    assert confusion_matrix(PRED, GOLD, 3) == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_per_class_precision_recall_f1_by_hand():
    scores = per_class(PRED, GOLD, ["a", "b", "c"])
    # a: TP 2, predicted 2, support 3 → P 1, R 2/3, F1 0.8
    assert scores["a"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    # b: TP 1, predicted 2, support 2 → P 0.5, R 0.5, F1 0.5
    assert scores["b"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    # c: TP 1, predicted 2, support 1 → P 0.5, R 1, F1 2/3
    assert scores["c"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert macro_f1(PRED, GOLD) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


def test_a_class_never_predicted_has_zero_precision_not_an_error():
    assert per_class([0, 0], [0, 1], ["x", "y"])["y"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_expected_calibration_error_on_a_constructed_example():
    # Bin (0.9, 1.0]: confidences 0.95, 0.95, accuracy 1/2 → gap 0.45, weight 2/4.
    # Bin (0.5, 0.6]: confidences 0.55, 0.55, accuracy 1/2 → gap 0.05, weight 2/4.
    ece = expected_calibration_error([0.95, 0.95, 0.55, 0.55], [True, False, True, False])
    assert ece == pytest.approx(0.5 * 0.45 + 0.5 * 0.05)
    # Perfectly calibrated: confidence 1.0 and always right.
    assert expected_calibration_error([1.0, 1.0], [True, True]) == pytest.approx(0.0)
    assert math.isnan(expected_calibration_error([], []))


def test_token_f1_counts_overlap_as_a_multiset():
    assert token_f1("the cat sat", "the cat sat") == 1.0
    # overlap {the, cat} = 2; P 2/3, R 2/4 → F1 = 2·(2/3)(1/2)/(2/3 + 1/2) = 4/7
    assert token_f1("the cat sat", "the cat was here") == pytest.approx(4 / 7)
    assert token_f1("a a a", "a") == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0 and token_f1("x", "y") == 0.0


def test_json_field_accuracy_by_hand():
    from transferkit.evaluate.task_metrics import json_fields, resolve_task_metric

    references = ['{"name": "Ana", "age": 34}', '{"name": "Bo", "age": 5}', '{"name": "Cy", "age": 7}']
    predictions = ['{"name": "Ana", "age": 35}',   # 1 of 2 fields
                   ' {"age": 5, "name": "Bo"} ',   # 2 of 2, order and outer spaces do not matter
                   '{"name": "Cy", "age": 7']      # not JSON: 0 of 2
    scores = json_fields(predictions, references)
    assert scores == {"json_field_accuracy": 3 / 6, "json_valid": 2 / 3}
    assert resolve_task_metric("json") is json_fields
    assert resolve_task_metric("transferkit.evaluate.task_metrics:json_fields") is json_fields
    with pytest.raises(ConfigError, match="eval.task_metric"):
        resolve_task_metric("jsn")


def test_calibration_bins_by_hand():
    from transferkit.evaluate.metrics import calibration_bins

    bins = calibration_bins([0.05, 0.95, 0.91, 0.5], [False, True, False, True], bins=10)
    assert [b["count"] for b in bins] == [1, 0, 0, 0, 1, 0, 0, 0, 0, 2]
    assert bins[9]["accuracy"] == 0.5 and bins[9]["confidence"] == pytest.approx(0.93)
    assert bins[1]["accuracy"] is None


def test_reliability_diagram_is_a_png(tmp_path):
    from transferkit.evaluate.metrics import calibration_bins
    from transferkit.evaluate.plots import reliability_diagram

    path = reliability_diagram(calibration_bins([0.2, 0.7, 0.9], [False, True, True]), 0.1, "test", tmp_path / "r.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_every_metric_is_reported_per_slice(tiny_model_dir, tmp_path):
    """Slice metrics equal the metrics of the slice evaluated on its own."""
    from tiny import write_jsonl

    from transferkit.data import Split, read_examples
    from transferkit.data.synthetic import person_records
    from transferkit.data.tokenize import tokenize_examples
    from transferkit.evaluate import evaluate_split
    from transferkit.models import load_model
    from transferkit.options import EvalConfig
    from transferkit.runtime import CPU

    rows = [{**r, "slice": "north" if i % 3 else "south"} for i, r in enumerate(person_records(6, seed=3))]
    path = write_jsonl(tmp_path / "sliced.jsonl", rows)
    model, tok, _ = load_model(str(tiny_model_dir))
    schema, examples = read_examples(str(path))
    cfg = EvalConfig(max_new_tokens=4, batch_size=2, task_metric="json")

    def evaluate(chosen):
        split = Split("s", chosen, tokenize_examples(tok, chosen, schema, 256))
        return evaluate_split(model, tok, split, schema, cfg, CPU)[0]

    whole = evaluate(examples)
    assert set(whole["slices"]) == {"north", "south"}
    for name in ("north", "south"):
        alone = evaluate([ex for ex in examples if ex.slice == name])
        assert alone.keys() - {"slices"} == whole["slices"][name].keys()
        for key in ("loss", "exact_match", "token_f1", "json_field_accuracy", "examples"):
            assert whole["slices"][name][key] == pytest.approx(alone[key], rel=1e-5), key
    assert whole["slices"]["north"]["examples"] == 4 and whole["slices"]["south"]["examples"] == 2
