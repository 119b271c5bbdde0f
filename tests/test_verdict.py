"""The verdict on a classifier: baselines from the labels alone, macro-F1 headline, collapse flag."""

import math

import pytest

from transferkit.evaluate.comparison import collapse_flag, headline_metric, label_baselines
from transferkit.evaluate.metrics import classification_metrics


def test_label_baselines_by_hand():
    # train: 6 a, 4 b (q = .6, .4); scored: 3 a, 1 b (p = .75, .25)
    got = label_baselines(list("aaaaaabbbb"), list("aaab"), ["a", "b"])
    majority, prior = got["majority"], got["class_prior"]
    assert majority["answer"] == "a" and majority["accuracy"] == 0.75
    assert majority["macro_f1"] == pytest.approx((6 / 7 + 0) / 2)           # a: 2·3/(2·3 + 1); b: never right
    assert prior["accuracy"] == pytest.approx(0.75 * 0.6 + 0.25 * 0.4)      # 0.55
    assert prior["macro_f1"] == pytest.approx((2 * .75 * .6 / 1.35 + 2 * .25 * .4 / .65) / 2)
    assert prior["loss"] == pytest.approx(-(0.75 * math.log(0.6) + 0.25 * math.log(0.4)))


def imbalanced_run() -> dict:
    """The newcomer's run of the issue: 1,000 test rows, 574 'a'; the model answers 'a' 887 times, 56.7 % right."""
    cells = {("a", "a"): 514, ("a", "b"): 60, ("b", "a"): 373, ("b", "b"): 53}  # (gold, predicted): count
    golds, log_probs = [], []
    for (gold, predicted), n in cells.items():
        golds += [["a", "b"].index(gold)] * n
        log_probs += [[math.log(0.9), math.log(0.1)] if predicted == "a" else [math.log(0.1), math.log(0.9)]] * n
    return classification_metrics(log_probs, golds, ["a", "b"])


def test_an_imbalanced_run_that_only_beats_the_prompt_is_flagged(tiny_assessment):
    tuned = imbalanced_run()
    assert tuned["accuracy"] == pytest.approx(0.567) and tuned["macro_f1"] == pytest.approx(0.450, abs=1e-3)
    prompts = {"split": "test", "zero_shot": {"accuracy": 0.50, "macro_f1": 0.40},
               "4_shot": {"accuracy": 0.561, "macro_f1": 0.44}}
    from_labels = label_baselines(["a"] * 574 + ["b"] * 426, ["a"] * 574 + ["b"] * 426, ["a", "b"])
    verdict = tiny_assessment.verdict(tuned, prompts, None, None, from_labels=from_labels)
    comparison = verdict["comparison"]
    # On macro-F1 the tuned model beats both prompts but not guessing with the class frequencies (0.5).
    assert comparison["metric"] == "macro_f1" and comparison["baseline_prompt"] == "class_prior"
    assert comparison["baseline"] == pytest.approx(0.5) and comparison["beats_baseline"] is False
    assert any("does not beat its baseline from the labels alone" in f for f in verdict["flags"])
    assert any("answers 'a' for 88.7% of examples, which hold 57.4% of them" in f for f in verdict["flags"])
    assert verdict["label_baselines"]["majority"]["accuracy"] == pytest.approx(0.574)


def test_a_run_that_learned_is_not_flagged(tiny_assessment):
    log_probs = [[math.log(0.8), math.log(0.2)]] * 50 + [[math.log(0.2), math.log(0.8)]] * 50
    tuned = classification_metrics(log_probs, [0] * 45 + [1] * 5 + [1] * 45 + [0] * 5, ["a", "b"])
    from_labels = label_baselines(list("ab") * 10, ["a"] * 50 + ["b"] * 50, ["a", "b"])
    verdict = tiny_assessment.verdict(tuned, None, None, None, from_labels=from_labels)
    assert verdict["comparison"]["beats_baseline"] is True and verdict["flags"] == []
    assert collapse_flag(tuned) is None and headline_metric("classification", tuned) == "macro_f1"


@pytest.fixture()
def tiny_assessment():
    from transferkit.evaluate.assessment import Assessment
    from transferkit.options import EvalConfig
    from transferkit.runtime import Runtime

    return Assessment("classification", EvalConfig(), "none", 64, Runtime.resolve("cpu", "fp32"), ["a", "b"])


def test_default_headline_follows_the_answers():
    from transferkit.evaluate.comparison import default_headline

    short = ["Paris", "42", "yes", "the blue one", "no"]
    free = ["I always ask other people because I cannot pick one", "Sounds fun, what did you cook?", "ok then"]
    assert default_headline("instruction", short, generates=True, task_metric=None) == "exact_match"
    assert default_headline("instruction", free, generates=True, task_metric=None) == "token_f1"
    assert default_headline("instruction", free, generates=True, task_metric="json") is None  # the metric's own
    assert default_headline("instruction", short, generates=False, task_metric=None) == "perplexity"
    assert default_headline("classification", [], generates=True, task_metric=None) == "macro_f1"
    assert default_headline("lm", [], generates=True, task_metric=None) == "perplexity"


def test_chosen_headline_is_what_the_run_is_judged_by(tiny_config, tmp_path):
    """eval.headline: recorded in config.yaml, used by the comparison; a headline the task does not measure is
    refused before anything is written."""
    from transferkit import train
    from transferkit.config import load_config
    from transferkit.errors import ConfigError

    cfg = tiny_config("eval.headline=perplexity", "train.max_steps=2", "train.eval_every=0", "eval.max_examples=2")
    summary = train(cfg)
    assert summary["comparison"]["metric"] == "perplexity" and summary["comparison"]["higher_is_better"] is False
    assert "perplexity" not in summary["comparison"]  # nothing beside: the headline is the perplexity itself
    assert load_config(f"{cfg.output_dir}/config.yaml").eval.headline == "perplexity"
    bad = tiny_config("eval.headline=macro_f1", f"output_dir={tmp_path / 'bad'}")
    with pytest.raises(ConfigError, match="'eval.headline': 'macro_f1' is not measured for instruction data"):
        train(bad)
    assert not (tmp_path / "bad").exists()


def test_a_hint_when_measuring_dominates():
    from transferkit.train.finish import measuring_hint

    assert measuring_hint({"train": 10.0, "baseline": 40.0, "evaluate": 20.0}).startswith("hint: measuring took 60 s,")
    assert measuring_hint({"train": 100.0, "baseline": 40.0, "evaluate": 20.0}) is None  # training dominates
    assert measuring_hint({"train": 1.0, "evaluate": 10.0}) is None  # too short to matter
