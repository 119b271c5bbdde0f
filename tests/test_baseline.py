"""Prompting baseline: label scoring, shot selection, prompts, and the comparison with the tuned model."""

import math
from types import SimpleNamespace

import pytest
import torch

from transferkit.data.schema import Example
from transferkit.evaluate.baseline import (Prompted, centroid_log_probs, classification_prompt, instruction_prompt,
                                           pick_shots, prompting_baseline, verbaliser_log_probs)
from transferkit.evaluate.comparison import compare
from transferkit.options import EvalConfig
from transferkit.runtime import CPU


class PlantedLM(torch.nn.Module):
    """A 'language model' that gives the tokens in `planted` a logit of 10 at every position, others 0."""

    def __init__(self, vocab_size: int, planted: list[int]):
        super().__init__()
        self.vocab_size = vocab_size
        self.planted = planted
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, attention_mask=None, **_):
        logits = torch.zeros(*input_ids.shape, self.vocab_size)
        logits[..., self.planted] = 10.0
        return SimpleNamespace(logits=logits + self.dummy)


def _examples(labels):
    return [Example("t.jsonl", i + 1, text=f"sentence number {i}", label=label) for i, label in enumerate(labels)]


@pytest.mark.parametrize("planted_label", ["fox", "dog"])
def test_label_with_the_planted_likelihood_wins(tokenizer, planted_label):
    labels = ["dog", "fox"]
    planted = tokenizer(" " + planted_label, add_special_tokens=False)["input_ids"]
    other = tokenizer(" " + ({"fox", "dog"} - {planted_label}).pop(), add_special_tokens=False)["input_ids"]
    assert not set(planted) & set(other)
    lm = PlantedLM(len(tokenizer), planted)
    examples = _examples(["dog", "fox", "fox"])
    log_probs = verbaliser_log_probs(lm, tokenizer, examples, [], labels, 4, CPU)
    chosen = labels.index(planted_label)
    for row in log_probs:
        assert max(range(2), key=row.__getitem__) == chosen
        assert math.isclose(sum(math.exp(v) for v in row), 1.0, rel_tol=1e-6)  # a distribution over labels
        assert math.exp(row[chosen]) > 0.99


def test_encoder_zero_shot_matches_text_to_its_label_name(tiny_bert_dir):
    from transferkit.models import load_model

    labels = ["food", "sport", "travel"]
    model, tok, _ = load_model(str(tiny_bert_dir), task="classification", labels=labels)
    # Each text is its label's name: cosine similarity 1 with its own class.
    examples = [Example("t", i + 1, text=name, label=name) for i, name in enumerate(labels)]
    log_probs = centroid_log_probs(model, tok, examples, [], labels, 4, CPU)
    assert [max(range(3), key=row.__getitem__) for row in log_probs] == [0, 1, 2]


def test_pick_shots_gives_every_class_a_turn():
    train = _examples(["a"] * 10 + ["b"] * 3 + ["c"] * 1)
    shots = pick_shots(train, 3, seed=0)
    assert sorted(s.label for s in shots) == ["a", "b", "c"]
    assert [s.line for s in shots] == [s.line for s in pick_shots(train, 3, seed=0)]  # seeded
    assert sorted(s.label for s in pick_shots(train, 5, seed=0)).count("c") == 1  # no class repeats a missing one
    assert pick_shots(train, 0, seed=0) == []


def test_prompts_show_the_shots_before_the_question():
    shot = Example("t", 1, messages=({"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}))
    ex = Example("t", 2, messages=({"role": "system", "content": "S"}, {"role": "user", "content": "Q2"},
                                   {"role": "assistant", "content": "A2"}))
    assert [m["content"] for m in instruction_prompt(ex, [shot])] == ["S", "Q1", "A1", "Q2"]
    text = classification_prompt(_examples(["x"])[0], _examples(["y"]), ["x", "y"])
    assert text.startswith("Classify the text as one of: x, y.") and text.endswith("Text: sentence number 0\nLabel:")
    assert "Text: sentence number 0\nLabel: y\n\n" in text


def test_compare_reports_gain_and_flags_a_loss():
    baselines = {"zero_shot": {"macro_f1": 0.5}, "4_shot": {"macro_f1": 0.7}}
    won = compare("classification", {"macro_f1": 0.9}, baselines)
    assert won["baseline_prompt"] == "4_shot" and won["gain"] == pytest.approx(0.2) and won["beats_baseline"]
    lost = compare("classification", {"macro_f1": 0.6}, baselines)
    assert lost["gain"] == pytest.approx(-0.1) and lost["beats_baseline"] is False
    lm = compare("lm", {"perplexity": 8.0}, {"zero_shot": {"perplexity": 10.0}})
    assert lm["higher_is_better"] is False and lm["gain"] == pytest.approx(2.0) and lm["beats_baseline"]
    headline = compare("instruction", {"exact_match": 0.1, "json_field_accuracy": 0.8,
                                       "task_metric_headline": "json_field_accuracy"},
                       {"zero_shot": {"json_field_accuracy": 0.3}})
    assert headline["metric"] == "json_field_accuracy" and headline["gain"] == pytest.approx(0.5)


def test_instruction_baseline_has_zero_and_k_shot(tiny_model_dir, quick_data):
    from transferkit.data import Split, read_examples
    from transferkit.data.tokenize import tokenize_examples
    from transferkit.models import load_model

    model, tok, _ = load_model(str(tiny_model_dir))
    schema, test = read_examples(str(quick_data["test"]))
    train = read_examples(str(quick_data["train"]))[1]
    split = Split("test", test, tokenize_examples(tok, test, schema, 256))
    eval_cfg = EvalConfig(max_new_tokens=4, shots=2, task_metric="json")
    result, predictions = prompting_baseline(Prompted(model, tok, split, schema, eval_cfg, CPU), "decoder", train)
    assert set(result) == set(predictions) == {"zero_shot", "2_shot"}
    assert [p["where"] for p in predictions["2_shot"]] == [ex.where for ex in test]
    assert {"prompt", "reference", "prediction", "match"} <= set(predictions["2_shot"][0])
    assert "loss" in result["zero_shot"] and result["2_shot"]["examples"] == len(test)
    assert {"exact_match", "token_f1", "json_field_accuracy", "json_valid"} <= set(result["2_shot"])
