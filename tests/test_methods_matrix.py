"""Every registered method × tiny decoders of two families, built in code.

For each: exactly the intended parameters train (and their count matches the
closed form), one optimizer step changes nothing else, save → load into a
fresh base reproduces logits, the off switch gives the base model back, and
merging gives the unmerged outputs."""

from __future__ import annotations

import re

import pytest
import torch
from tiny import DECODERS, tiny_tokenizer

from transferkit.config import method_config_from_dict
from transferkit.data.batching import collate
from transferkit.data.tokenize import Tokenized
from transferkit.methods import count_parameters, get_method, method_names
from transferkit.train.loss import token_loss_sum

SMALL = {"lora": {"r": 4}, "dora": {"r": 4}, "rslora": {"r": 4}, "adapter": {"r": 4}, "prompt": {"num_virtual_tokens": 3},
         "prefix": {"num_virtual_tokens": 3}, "freeze": {"train_top": 1}}
FLOAT_METHODS = [m for m in method_names() if not get_method(m).quantize_base]

# What may train, by parameter name.
INTENDED = {
    "lora": r"lora_[AB]", "rslora": r"lora_[AB]", "dora": r"lora_[AB]|lora_magnitude_vector", "ia3": r"ia3_l",
    "prompt": r"prompt_encoder", "prefix": r"prompt_encoder", "adapter": r"\.adapter\.", "full": r".",
    "freeze": r"layers\.2\.|layers\.1\.|\.norm\.weight$|lm_head",
}


def method_cfg(name: str):
    return method_config_from_dict({"name": name, **SMALL.get(name, {})})


def make_base(family: str, seed: int = 0):
    model = DECODERS[family](len(tiny_tokenizer()), seed=seed)
    model.transferkit_task = "causal-lm"
    return model.eval()


@pytest.fixture(scope="module")
def batch():
    tok = tiny_tokenizer()
    texts = ["Ana Silva is a 34-year-old nurse from Lisbon.", "hello world, what is two plus two? It is four."]
    items = [Tokenized(ids, ids, "t:1") for ids in (tok(t)["input_ids"] for t in texts)]
    return collate(items, tok.pad_token_id)


def logits(model, batch):
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return out[:, out.shape[1] - batch["input_ids"].shape[1]:]  # drop prompt-tuning virtual positions


def one_step(model, batch, lr=5e-2):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    loss_sum, n = token_loss_sum(model, batch)
    (loss_sum / n).backward()
    optimizer.step()
    model.eval()


def trained(name, family, batch):
    method = get_method(name)
    model = method.apply(make_base(family), method_cfg(name))
    one_step(model, batch)
    return method, model


@pytest.mark.parametrize("family", sorted(DECODERS))
@pytest.mark.parametrize("name", FLOAT_METHODS)
def test_only_intended_parameters_train_and_change(name, family, batch):
    method = get_method(name)
    cfg = method_cfg(name)
    model = method.apply(make_base(family), cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(re.search(INTENDED[name], n) for n in trainable), sorted(trainable)[:5]
    count, total = count_parameters(model)
    if method.closed_form is not None:
        assert count == method.closed_form(make_base(family), cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    one_step(model, batch)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable, sorted(changed - trainable)[:5]


@pytest.mark.parametrize("family", sorted(DECODERS))
@pytest.mark.parametrize("name", FLOAT_METHODS)
def test_save_load_reproduces_logits(name, family, batch, tmp_path):
    method, model = trained(name, family, batch)
    method.save(model, tmp_path)
    reloaded = method.load(make_base(family), tmp_path)
    torch.testing.assert_close(logits(reloaded.eval(), batch), logits(model, batch), rtol=0, atol=1e-6)
    assert not torch.allclose(logits(model, batch), logits(make_base(family), batch))


@pytest.mark.parametrize("family", sorted(DECODERS))
@pytest.mark.parametrize("name", [m for m in FLOAT_METHODS if get_method(m).disabled])
def test_disabled_adapter_equals_base(name, family, batch):
    method, model = trained(name, family, batch)
    with method.disabled(model):
        torch.testing.assert_close(logits(model, batch), logits(make_base(family), batch), rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", sorted(DECODERS))
@pytest.mark.parametrize("name", [m for m in FLOAT_METHODS if get_method(m).merge])
def test_merged_equals_unmerged(name, family, batch):
    method, model = trained(name, family, batch)
    unmerged = logits(model, batch)
    merged = method.merge(model)
    assert not any("lora_" in n or "ia3_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(logits(merged, batch), unmerged, rtol=1e-4, atol=1e-4)


def test_llrd_gives_each_depth_its_rate():
    from transferkit.methods.full import FullMethodConfig, param_groups

    model = get_method("full").apply(make_base("qwen2"), FullMethodConfig(llrd=0.5))
    groups = {g["depth"]: g for g in param_groups(model, FullMethodConfig(llrd=0.5), lr=1.0)}
    assert sorted(groups) == [0, 1, 2, 3]                      # head+norm, block 1, block 0, embeddings
    assert [groups[d]["lr"] for d in range(4)] == [1.0, 0.5, 0.25, 0.125]
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("layers.1." in names[id(p)] for p in groups[1]["params"])
    assert all("embed_tokens" in names[id(p)] for p in groups[3]["params"])
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))


def test_freeze_bottom_and_train_top_agree():
    from transferkit.methods.freeze import FreezeMethodConfig

    freeze = get_method("freeze")
    a = freeze.apply(make_base("llama"), FreezeMethodConfig(freeze_bottom=2, train_top=None))
    b = freeze.apply(make_base("llama"), FreezeMethodConfig(train_top=1))
    names = lambda m: {n for n, p in m.named_parameters() if p.requires_grad}  # noqa: E731
    assert names(a) == names(b)
    assert not any("embed" in n or "layers.0." in n or "layers.1." in n for n in names(a))
