"""Classification on tiny encoders and decoders: data, metrics, training, reload."""

import json
from pathlib import Path

import pytest
import torch
from tiny import write_jsonl

from transferkit.data import read_examples
from transferkit.data.schema import label_vocabulary
from transferkit.errors import ConfigError, DataError
from transferkit.evaluate import accuracy, macro_f1


def test_accuracy_and_macro_f1_by_hand():
    golds = [0, 0, 0, 1, 1, 2]
    preds = [0, 0, 1, 1, 2, 2]
    assert accuracy(preds, golds) == pytest.approx(4 / 6)
    # class 0: tp2 fp0 fn1 → F1 4/5; class 1: tp1 fp1 fn1 → 1/2; class 2: tp1 fp1 fn0 → 2/3
    assert macro_f1(preds, golds) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert macro_f1([1, 1], [1, 1]) == 1.0


def test_labels_sorted_and_validated(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 10}, {"text": "b", "label": 2}, {"text": "c", "label": 2}])
    schema, examples = read_examples(str(tmp_path / "d.jsonl"))
    assert schema == "classification" and label_vocabulary(examples, "d") == ["2", "10"]
    write_jsonl(tmp_path / "one.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "x"}])
    with pytest.raises(DataError, match=r"one.jsonl: classification needs at least two classes"):
        label_vocabulary(read_examples(str(tmp_path / "one.jsonl"))[1], str(tmp_path / "one.jsonl"))
    write_jsonl(tmp_path / "bad.jsonl", [{"text": "a", "label": [1]}])
    with pytest.raises(DataError, match=r"bad.jsonl:1: field 'label': must be a class name or integer"):
        read_examples(str(tmp_path / "bad.jsonl"))


@pytest.mark.parametrize("family, method, lr", [("bert", "probe", 3e-2), ("bert", "lora", 1e-2), ("bert", "full", 2e-3),
                                                ("bert", "adapter", 3e-2), ("qwen2", "lora", 5e-3), ("qwen2", "probe", 2e-2)])
def test_classifier_trains_and_reloads(family, method, lr, tiny_config, topics, tiny_bert_dir, tiny_qwen_dir):
    from transferkit import evaluate_run, load_trained, train

    folder = tiny_bert_dir if family == "bert" else tiny_qwen_dir
    cfg = tiny_config(f"model={folder}", "forgetting.reference=general", f"method={{name: {method}}}", f"data.train={topics['train']}",
                      f"data.validation={topics['validation']}", f"data.test={topics['test']}",
                      "train.max_steps=40", "train.batch_size=8", f"train.lr={lr}", "train.eval_every=0", "train.save_every=0")
    summary = train(cfg)
    run = Path(cfg.output_dir)
    assert json.loads((run / "labels.json").read_text())["labels"] == ["food", "sport", "travel", "weather"]
    assert {"accuracy", "macro_f1", "loss", "ece", "per_class"} <= set(summary["test"])
    # The untrained model's prompting baseline (verbalisation likelihood for the decoder, embedding
    # similarity for the encoder), the comparison on accuracy, and forgetting as a probe drop.
    assert {"zero_shot", "4_shot"} <= set(summary["baseline"])
    assert all(0 <= b["accuracy"] <= 1 for k, b in summary["baseline"].items() if k != "split")
    assert summary["comparison"]["metric"] == "macro_f1"
    assert summary["forgetting"]["measure"] == "drop of general-topic probe accuracy"
    assert (run / "test_reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    events = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in events if e["event"] == "train"]
    assert sum(losses[-4:]) < sum(losses[:4]), losses  # per-step losses are noisy: compare the ends
    predictions = [json.loads(l) for l in (run / "test_predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 16 and {"label", "prediction", "confidence"} <= set(predictions[0])

    # Reloaded from the run directory: the same test metrics.
    model, _, _ = load_trained(run)
    assert model.config.id2label[0] == "food"
    result, _ = evaluate_run(str(topics["test"]), run_dir=str(run), precision="fp32")
    again = result["metrics"]
    assert again["accuracy"] == pytest.approx(summary["test"]["accuracy"])
    assert again["loss"] == pytest.approx(summary["test"]["loss"], rel=1e-4)
    if method == "probe":  # the frozen backbone forgot nothing, measured by `eval` as by `train`
        assert result["forgetting"]["forgetting"] == 0.0 == summary["forgetting"]["forgetting"]


def test_eval_cli_baseline_and_reliability_plot(tiny_config, topics, tiny_qwen_dir, tmp_path, capsys):
    from transferkit import train
    from transferkit.cli import main

    cfg = tiny_config(f"model={tiny_qwen_dir}", "forgetting.reference=general", "method={name: lora}", f"data.train={topics['train']}",
                      f"data.validation={topics['validation']}", f"data.test={topics['test']}",
                      "train.max_steps=2", "eval.baseline=false", "train.eval_every=0", "train.save_every=0")
    summary = train(cfg)
    # No prompt measured: the comparison is with the baselines from the training labels alone.
    assert summary["comparison"]["baseline_prompt"] in {"majority", "class_prior"}
    assert set(summary["label_baselines"]) == {"majority", "class_prior"}
    assert "no prompting baseline to compare with (eval.baseline is false)" in summary["flags"]
    capsys.readouterr()
    png = tmp_path / "reliability.png"
    assert main(["eval", cfg.output_dir, "--data", str(topics["test"]), "--baseline", "--shots", "2",
                 "--reliability-plot", str(png), "--precision", "fp32"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["baseline"]) == {"zero_shot", "2_shot"} and result["comparison"]["metric"] == "macro_f1"
    assert result["comparison"]["tuned"] == result["metrics"]["macro_f1"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_probe_caches_features_once(tiny_bert_dir):
    from transferkit.methods import get_method
    from transferkit.methods.probe import ProbeMethodConfig
    from transferkit.models import load_model

    model, tok, _ = load_model(str(tiny_bert_dir), task="classification", labels=["a", "b"])
    probe = get_method("probe").apply(model, ProbeMethodConfig(head="mlp", hidden=8), "classification")
    calls = []
    model.backbone.register_forward_hook(lambda *a: calls.append(1))
    enc = tok(["hello world", "the quick brown fox"], padding=True, return_tensors="pt")
    first = probe(enc["input_ids"], enc["attention_mask"]).logits
    second = probe(enc["input_ids"], enc["attention_mask"]).logits
    assert len(calls) == 1 and torch.equal(first, second)
    assert {n for n, p in probe.named_parameters() if p.requires_grad} == {
        "model.classifier.0.weight", "model.classifier.0.bias", "model.classifier.2.weight", "model.classifier.2.bias"}


def test_method_that_cannot_serve_the_task_fails_before_loading(tiny_config, tmp_path):
    from transferkit import train

    cfg = tiny_config("model=/no/such/model", "method={name: probe}")
    with pytest.raises(ConfigError, match="method 'probe' cannot train a causal-lm task"):
        train(cfg)
    assert not Path(cfg.output_dir).exists()


def test_unseen_eval_label_is_an_error(tiny_config, topics, tmp_path, tiny_bert_dir):
    from transferkit import train

    bad = write_jsonl(tmp_path / "test.jsonl", [{"text": "a fine day", "label": "finance"}])
    cfg = tiny_config(f"model={tiny_bert_dir}", "forgetting.reference=general", f"data.train={topics['train']}", f"data.test={bad}",
                      f"data.validation={topics['validation']}")
    with pytest.raises(DataError, match=r"test.jsonl:1: field 'label': label 'finance' does not occur in the training"):
        train(cfg)


def test_text_pair_is_encoded_with_both_texts(tmp_path, tokenizer):
    from transferkit.data.tokenize import tokenize_examples

    write_jsonl(tmp_path / "d.jsonl", [{"text": "hello world", "text_pair": "the quick brown fox", "label": "yes"},
                                       {"text": "hello world", "label": "no"}])
    schema, examples = read_examples(str(tmp_path / "d.jsonl"))
    assert examples[0].text_pair == "the quick brown fox" and examples[1].text_pair is None
    paired, single = tokenize_examples(tokenizer, examples, schema, 64, labels=["no", "yes"])
    assert tokenizer.decode(paired.input_ids).replace(" ", "") == "helloworldthequickbrownfox"
    assert (paired.labels, single.labels) == ([1], [0])


@pytest.mark.parametrize("method", ["lora", "full"])
def test_head_lr_is_the_heads_own_group(method, tiny_bert_dir):
    """train.head_lr: the task head's trained parameters (peft's trained copy for LoRA, LLRD's top group for full)
    move to one group at head_lr; every other trainable parameter keeps its group and lr, each exactly once."""
    from transferkit.methods import get_method
    from transferkit.models import load_model
    from transferkit.options import TrainConfig
    from transferkit.train.optimizer import build_optimizer

    model, _, _ = load_model(str(tiny_bert_dir), task="classification", labels=["a", "b"])
    spec = get_method(method)
    cfg = spec.config_cls(llrd=0.5) if method == "full" else spec.config_cls(r=4)
    model = spec.apply(model, cfg, "classification")
    plain, _ = build_optimizer(model, spec, cfg, TrainConfig(lr=1e-4, warmup_ratio=0.05, weight_decay=0.0), steps=10)
    split, schedule = build_optimizer(model, spec, cfg, TrainConfig(lr=1e-4, head_lr=3e-2, warmup_ratio=0.05,
                                                                           weight_decay=0.0), steps=10)

    names = {id(p): n for n, p in model.named_parameters()}
    head = [g for g in split.param_groups if g["initial_lr"] == 3e-2]
    assert len(head) == 1 and sorted(names[id(p)].rsplit(".", 1)[-1] for p in head[0]["params"]) == ["bias", "weight"]
    assert all("classifier" in names[id(p)] for p in head[0]["params"])
    grouped = [id(p) for g in split.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters() if p.requires_grad)  # each exactly once
    # Everything else is where it was without head_lr, at the same lr.
    lr_of = lambda opt: {id(p): g["initial_lr"] for g in opt.param_groups for p in g["params"]}  # noqa: E731
    before, after = lr_of(plain), lr_of(split)
    assert {k: v for k, v in before.items() if "classifier" not in names[k]} == \
           {k: v for k, v in after.items() if "classifier" not in names[k]}
    assert len(set(before.values())) == (1 if method == "lora" else len(plain.param_groups))
    # The schedule scales the head's peak like every other group's.
    for _ in range(3):
        split.step()
        schedule.step()
    ratios = {round(g["lr"] / g["initial_lr"], 12) for g in split.param_groups}
    assert len(ratios) == 1
