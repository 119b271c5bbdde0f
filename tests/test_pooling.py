"""Pooling (`method.pooling`): what `auto` picks, and each mode against a hand computation on tiny models."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from tiny import tiny_bert, tiny_qwen2, tiny_tokenizer

from transferkit.errors import ConfigError
from transferkit.models import SequenceClassifier, load_model
from transferkit.models.classifier import declared_pooling, resolve_pooling


def sentence_transformers_folder(src: Path, dst: Path, **modes: bool) -> Path:
    """A copy of an HF folder that declares its pooling as sentence-transformers does."""
    shutil.copytree(src, dst)
    (dst / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (dst / "1_Pooling").mkdir()
    (dst / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False,
        "pooling_mode_max_tokens": False, **modes}))
    return dst


def test_auto_honours_the_declared_pooling(tiny_bert_dir, tiny_qwen_dir, tmp_path):
    declares_cls = sentence_transformers_folder(tiny_bert_dir, tmp_path / "cls", pooling_mode_cls_token=True)
    assert declared_pooling(declares_cls) == "cls"
    model, _, _ = load_model(str(declares_cls), task="classification", labels=["a", "b"])
    assert model.pooling == "cls" and model.backbone.pooler is None  # BERT's unused pooler is dropped
    declares_mean = sentence_transformers_folder(tiny_bert_dir, tmp_path / "mean", pooling_mode_mean_tokens=True)
    assert resolve_pooling("auto", declares_mean, decoder=False) == "mean"
    # An explicit choice wins over the declaration; `pooler` keeps BERT's pooler.
    model, _, _ = load_model(str(declares_cls), task="classification", labels=["a", "b"], pooling="pooler")
    assert model.pooling == "pooler" and model.backbone.pooler is not None
    # Nothing declared: the architecture's convention.
    assert declared_pooling(tiny_bert_dir) is None
    assert resolve_pooling("auto", tiny_bert_dir, decoder=False) == "mean"
    assert resolve_pooling("auto", tiny_qwen_dir, decoder=True) == "last"
    # Max pooling (or two modes at once) is nothing we can honour: the convention applies.
    declares_max = sentence_transformers_folder(tiny_bert_dir, tmp_path / "max", pooling_mode_max_tokens=True)
    assert resolve_pooling("auto", declares_max, decoder=False) == "mean"
    with pytest.raises(ConfigError, match="'method.pooling': 'pooler' needs an encoder"):
        resolve_pooling("pooler", tiny_qwen_dir, decoder=True)


def test_the_packaged_sentence_encoder_declares_mean_pooling():
    from transferkit.models import resolve_model

    assert declared_pooling(resolve_model("minilm-l6")) == "mean"


def padded_batch(tokenizer, texts):
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    lengths = [len(tokenizer(t)["input_ids"]) for t in texts]
    assert len(set(lengths)) > 1  # the test needs padding
    return enc["input_ids"], enc["attention_mask"], lengths


TEXTS = ["the quick brown fox jumps", "hello", "a b c"]


@pytest.mark.parametrize("mode", ["cls", "pooler", "mean", "last"])
def test_each_encoder_pooling_by_hand(mode):
    tok = tiny_tokenizer()
    ids, mask, lengths = padded_batch(tok, TEXTS)
    backbone = tiny_bert(len(tok))
    backbone.config.num_labels = 3
    model = SequenceClassifier(backbone, mode, decoder=False).eval()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        hidden = backbone(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, T, H]
    w, b = model.classifier.weight, model.classifier.bias
    for i, n in enumerate(lengths):  # example by example, from the real tokens' positions 0 … n−1
        rows = hidden[i, :n]
        feature = {"cls": rows[0], "mean": rows.sum(0) / n, "last": rows[n - 1],
                   "pooler": torch.tanh(backbone.pooler.dense.weight @ rows[0] + backbone.pooler.dense.bias)
                   if mode == "pooler" else None}[mode]
        torch.testing.assert_close(logits[i], w @ feature + b)


def test_decoder_last_token_ignores_padding():
    """A decoder's `last` pooling of a padded batch equals each text run alone (no padding at all)."""
    tok = tiny_tokenizer()
    ids, mask, lengths = padded_batch(tok, TEXTS)
    backbone = tiny_qwen2(len(tok)).model
    backbone.config.num_labels = 2
    model = SequenceClassifier(backbone, "last", decoder=True).eval()
    assert model.classifier.bias is None  # as transformers' `score`
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask).logits
        for i, n in enumerate(lengths):
            alone = model(input_ids=ids[i:i + 1, :n], attention_mask=mask[i:i + 1, :n]).logits
            torch.testing.assert_close(batched[i:i + 1], alone, atol=1e-5, rtol=1e-5)


def test_pooling_survives_a_prefix_of_virtual_positions():
    """peft's prefix tuning passes a mask with the virtual positions first: pooling uses the last T columns."""
    from transferkit.models.classifier import pool

    hidden = torch.arange(2 * 3 * 1, dtype=torch.float32).reshape(2, 3, 1)  # [B=2, T=3, H=1]
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])                 # 2 virtual + 3 real columns
    assert pool(hidden, mask, "mean").flatten().tolist() == [0.5, 4.0]      # (0+1)/2, (3+4+5)/3
    assert pool(hidden, mask, "last").flatten().tolist() == [1.0, 5.0]


def test_run_records_the_resolved_pooling(tiny_config, topics, tiny_bert_dir, tmp_path):
    """`auto` in the config becomes the mode used, in config.yaml, and the reloaded run pools the same way."""
    from transferkit import load_trained, train
    from transferkit.config import load_config

    declares_cls = sentence_transformers_folder(tiny_bert_dir, tmp_path / "st", pooling_mode_cls_token=True)
    cfg = tiny_config(f"model={declares_cls}", "forgetting.reference=general", "method={name: probe}",
                      f"data.train={topics['train']}", f"data.validation={topics['validation']}",
                      f"data.test={topics['test']}", "train.max_steps=2",
                      "eval.baseline=false", "train.eval_every=0", "train.save_every=0")
    assert cfg.method.pooling == "auto"
    train(cfg)
    assert load_config(Path(cfg.output_dir) / "config.yaml").method.pooling == "cls"
    model, _, _ = load_trained(cfg.output_dir)
    assert model.get_base_model().pooling == "cls"
