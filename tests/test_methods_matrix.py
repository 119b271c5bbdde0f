"""Every registered method × tiny models built in code: Llama and Qwen2 decoders
(causal LM) and a BERT encoder (classification).

For each: exactly the intended parameters train (and their count matches the
closed form), one optimizer step changes nothing else, save → load into a
fresh base reproduces logits, the off switch gives the base model back, and
merging gives the unmerged outputs."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from tiny import DECODERS, tiny_bert_classifier, tiny_tokenizer

from transferkit.data.tokenize import Tokenized
from transferkit.methods import get_method, method_config_from_dict, method_names
from transferkit.models import count_parameters
from transferkit.objectives import OBJECTIVES

SMALL = {"lora": {"r": 4}, "dora": {"r": 4}, "rslora": {"r": 4}, "adapter": {"r": 4}, "prompt": {"num_virtual_tokens": 3},
         "prefix": {"num_virtual_tokens": 3}, "freeze": {"train_top": 1}}
FAMILIES = ["llama", "qwen2", "bert"]  # bert: a sequence classifier over 3 classes
TASK = {"llama": "causal-lm", "qwen2": "causal-lm", "bert": "classification"}
CASES = [(m, f) for m in method_names() for f in FAMILIES
         if not get_method(m).quantize_base and TASK[f] in get_method(m).tasks]

# What may train, by parameter name.
INTENDED = {
    "lora": r"lora_[AB]", "rslora": r"lora_[AB]", "dora": r"lora_[AB]|lora_magnitude_vector", "ia3": r"ia3_l",
    "prompt": r"prompt_encoder", "prefix": r"prompt_encoder", "adapter": r"\.adapter\.", "full": r".",
    "freeze": r"layers\.2\.|layers\.1\.|\.norm\.weight$|lm_head|layer\.1\.|pooler|classifier",
    "probe": r"classifier",
}
HEAD = r"|classifier"  # on the classifier, a new task head always trains


def method_cfg(name: str):
    return method_config_from_dict({"name": name, **SMALL.get(name, {})})


def make_base(family: str, seed: int = 0):
    builder = tiny_bert_classifier if family == "bert" else DECODERS[family]
    return builder(len(tiny_tokenizer()), seed=seed).eval()


TEXTS = ["Ana Silva is a 34-year-old nurse from Lisbon.", "hello world, what is two plus two? It is four."]


def batch_for(family: str):
    tok = tiny_tokenizer()
    ids = [tok(t)["input_ids"] for t in TEXTS]
    if TASK[family] == "classification":
        items = [Tokenized(i, [c], "t:1", per_example=True) for i, c in zip(ids, (0, 2))]
    else:
        items = [Tokenized(i, i, "t:1") for i in ids]
    return OBJECTIVES[TASK[family]].collate(items, tok.pad_token_id, "cpu")


def logits(model, batch):
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    if out.dim() == 3:  # causal LM: drop prompt-tuning virtual positions
        out = out[:, out.shape[1] - batch["input_ids"].shape[1]:]
    return out


def one_step(model, family, lr=5e-2):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    loss_sum, n, _ = OBJECTIVES[TASK[family]].loss_sum(model, batch_for(family))
    (loss_sum / n).backward()
    optimizer.step()
    model.eval()


def trained(name, family):
    method = get_method(name)
    model = method.apply(make_base(family), method_cfg(name), TASK[family])
    one_step(model, family)
    return method, model


@pytest.mark.parametrize("name, family", CASES)
def test_only_intended_parameters_train_and_change(name, family):
    method = get_method(name)
    cfg = method_cfg(name)
    model = method.apply(make_base(family), cfg, TASK[family])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    intended = INTENDED[name] + (HEAD if TASK[family] == "classification" else "")
    assert trainable and all(re.search(intended, n) for n in trainable), sorted(trainable)[:5]
    count, total = count_parameters(model)
    if method.closed_form is not None:
        head = sum(p.numel() for p in make_base(family).classifier.parameters()) if family == "bert" else 0
        extra = head if method.separate_head else 0  # peft/adapter: + the new head
        assert count == method.closed_form(make_base(family), cfg) + extra
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    one_step(model, family)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable, sorted(changed - trainable)[:5]


@pytest.mark.parametrize("name, family", CASES)
def test_save_load_reproduces_logits(name, family, tmp_path):
    batch = batch_for(family)
    method, model = trained(name, family)
    method.save(model, method_cfg(name), tmp_path)
    reloaded = method.load(make_base(family), tmp_path)
    torch.testing.assert_close(logits(reloaded.eval(), batch), logits(model, batch), rtol=0, atol=1e-6)
    assert not torch.allclose(logits(model, batch), logits(make_base(family), batch))


@pytest.mark.parametrize("name, family", [c for c in CASES if get_method(c[0]).has_off_switch])
def test_disabled_adapter_equals_base(name, family):
    batch = batch_for(family)
    method, model = trained(name, family)
    with method.disabled(model) as as_base:
        if TASK[family] == "classification":
            # The new head trained and has no base to return to: compare what the backbone computes.
            torch.testing.assert_close(last_hidden(as_base, batch), last_hidden(make_base(family), batch), rtol=0, atol=1e-6)
        else:
            torch.testing.assert_close(logits(as_base, batch), logits(make_base(family), batch), rtol=0, atol=1e-6)
    assert not torch.allclose(logits(model, batch), logits(make_base(family), batch))


@pytest.mark.parametrize("name, family", [c for c in CASES if get_method(c[0]).peft_format])
def test_peft_format_adapters_load_in_stock_peft(name, family, tmp_path):
    """What the registry calls PEFT format loads with `peft.PeftModel.from_pretrained` alone."""
    from peft import PeftModel

    batch = batch_for(family)
    method, model = trained(name, family)
    method.save(model, method_cfg(name), tmp_path)
    stock = PeftModel.from_pretrained(make_base(family), str(tmp_path)).eval()
    torch.testing.assert_close(logits(stock, batch), logits(model, batch), rtol=0, atol=1e-6)


def test_traits_match_the_methods():
    """The registry's traits, which the rest of the package reads instead of method names."""
    own_head = {m for m in method_names() if not get_method(m).separate_head}
    assert own_head == {"full", "freeze", "probe"}
    assert {m for m in method_names() if get_method(m).peft_format} == {
        "lora", "rslora", "dora", "qlora", "ia3", "prefix", "prompt"}
    assert {m for m in method_names() if get_method(m).can_merge} == {"lora", "rslora", "dora", "ia3"}
    assert {m for m in method_names() if get_method(m).trains_base_weights} == {"full", "freeze"}
    assert {m for m in method_names() if not get_method(m).packable} == {"prefix", "prompt"}
    assert {m for m in method_names() if not get_method(m).starts_at_base} == {"prefix", "prompt"}


@pytest.mark.parametrize("name, family", CASES)
def test_a_method_starts_at_its_base_where_its_trait_says(name, family):
    """`starts_at_base`: before any step the adapted model computes the base's logits (what a preference run's
    reference needs), for every method but prefix and prompt tuning, whose virtual tokens start random."""
    method, batch = get_method(name), batch_for(family)
    torch.manual_seed(0)
    model = method.apply(make_base(family), method_cfg(name), TASK[family])
    # a classifier's new head has no base: compare what the backbone computes (virtual tokens make it longer)
    out = last_hidden if TASK[family] == "classification" else logits
    adapted, base = out(model, batch), out(make_base(family), batch)
    assert (adapted.shape == base.shape and torch.allclose(adapted, base, atol=1e-5)) == method.starts_at_base


def last_hidden(model, batch):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     output_hidden_states=True).hidden_states[-1]


@pytest.mark.parametrize("name, family", [c for c in CASES if get_method(c[0]).can_merge])
def test_merged_equals_unmerged(name, family):
    batch = batch_for(family)
    method, model = trained(name, family)
    unmerged = logits(model, batch)
    merged = method.merge(model)
    assert not any("lora_" in n or "ia3_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(logits(merged, batch), unmerged, rtol=1e-4, atol=1e-4)


def test_llrd_gives_each_depth_its_rate():
    from transferkit.methods.full import FullMethodConfig, param_groups

    model = get_method("full").apply(make_base("qwen2"), FullMethodConfig(llrd=0.5), "causal-lm")
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
    a = freeze.apply(make_base("llama"), FreezeMethodConfig(freeze_bottom=2, train_top=None), "causal-lm")
    b = freeze.apply(make_base("llama"), FreezeMethodConfig(train_top=1), "causal-lm")
    names = lambda m: {n for n, p in m.named_parameters() if p.requires_grad}  # noqa: E731
    assert names(a) == names(b)
    assert not any("embed" in n or "layers.0." in n or "layers.1." in n for n in names(a))


def test_closed_form_layouts_match_the_published_model_sizes():
    """Config arithmetic, checked against sizes worked out by hand for the packaged models' architectures."""
    from transformers import BertConfig, LlamaConfig

    from transferkit.methods.shapes import layout

    smollm2 = LlamaConfig(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                          intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True)
    # embeddings 49152·576 = 28,311,552; block: q, o 2·576² + k, v 2·576·192 = 884,736, MLP 3·576·1536 = 2,654,208,
    # norms 1,152 → 3,540,096, × 30 = 106,202,880; final norm 576; head tied → SmolLM2-135M's 134,515,008
    assert layout(smollm2, "causal-lm").total == 134_515_008
    minilm = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
                        vocab_size=30522, max_position_embeddings=512, type_vocab_size=2)
    # embeddings 31,036·384 + 768 = 11,918,592; block 4·(384² + 384) + 4·384 + (384·1536 + 1536) + (1536·384 + 384)
    # = 1,774,464, × 6 = 10,646,784; classifier 384·2 + 2 = 770; the pooler 384² + 384 = 147,840 when pooled with
    assert layout(minilm, "classification", num_labels=2, pooling="mean").total == 22_566_146
    assert layout(minilm, "classification", num_labels=2, pooling="pooler").total == 22_713_986
    untied = LlamaConfig(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         intermediate_size=1536, vocab_size=49152, tie_word_embeddings=False)
    assert layout(untied, "causal-lm").head == 49152 * 576          # an untied head is a second V·h matrix
    assert layout(smollm2, "classification", num_labels=4).head == 576 * 4  # a decoder's head has no bias


@pytest.mark.parametrize("name, family", CASES)
def test_load_marks_what_apply_trained(name, family, tmp_path):
    """A loaded adapter has the trainable parameters `apply` gave it: what decides which weights training stored
    in bf16, so `eval` can store them the same way."""
    method, model = trained(name, family)
    method.save(model, method_cfg(name), tmp_path)
    reloaded = method.load(make_base(family), tmp_path)
    assert count_parameters(reloaded)[0] == count_parameters(model)[0] > 0


def test_lora_defaults_follow_the_architecture():
    """Unset, LoRA adapts every linear layer of a BERT block at rank 8 and a decoder's q, k, v, o at rank 16, at
    α = 2r (an update scale of 2); a rank set alone keeps α = 2r, an α set is kept."""
    def adapted(family: str, **keys) -> dict[str, tuple[int, float]]:
        tuned = get_method("lora").apply(make_base(family), method_config_from_dict({"name": "lora", **keys}),
                                         TASK[family])
        return {name.split(".", 1)[1] if family == "llama" else name: (m.r["default"], m.scaling["default"])
                for name, m in tuned.named_modules() if hasattr(m, "lora_A") and m.lora_A}

    layers = make_base("bert").backbone.config.num_hidden_layers
    bert = adapted("bert")
    block = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
             "intermediate.dense", "output.dense")
    assert sorted(n.split("layer.")[1] for n in bert) == sorted(f"{i}.{b}" for i in range(layers) for b in block)
    assert set(bert.values()) == {(8, 2.0)}
    llama = adapted("llama")
    assert sorted({n.rsplit(".", 1)[1] for n in llama}) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert set(llama.values()) == {(16, 2.0)}
    assert set(adapted("llama", r=4).values()) == {(4, 2.0)}
    assert set(adapted("llama", r=4, alpha=32).values()) == {(4, 8.0)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dora_column_norm_is_the_norm_of_the_adapted_weight(dtype):
    from transferkit.methods.dora import column_norm

    g = torch.Generator().manual_seed(0)
    weight = (0.05 * torch.randn(96, 80, generator=g)).to(dtype)  # a trained layer's scale
    lora_a, lora_b = 0.05 * torch.randn(4, 80, generator=g), 0.05 * torch.randn(96, 4, generator=g)
    direct = torch.linalg.norm(weight.float() + 2.0 * lora_b @ lora_a, dim=1)  # the d×k matrix, formed in fp32
    # A bf16 weight's ||W_i|| and W Aᵀ are reduced in fp32 and rounded to bf16 (peft rounds its norm so too).
    rtol = 1e-6 if dtype == torch.float32 else 2 ** -8
    torch.testing.assert_close(column_norm(weight, lora_a, lora_b, 2.0), direct, rtol=rtol, atol=0)


def dora_pair(family: str, dropout: float = 0.0):
    """A DoRA model with non-zero B, and a copy whose DoRA layers run peft's own forward."""
    from peft.tuners.lora.dora import DoraLinearLayer

    from transferkit.methods.dora import LeanDoraLinearLayer

    cfg = method_config_from_dict({"name": "dora", **SMALL["dora"], "dropout": dropout})
    model = get_method("dora").apply(make_base(family), cfg, TASK[family])
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn_like(param) * 0.1)
    stock = copy.deepcopy(model)
    lean = [m for m in model.modules() if isinstance(m, LeanDoraLinearLayer)]
    for module in stock.modules():
        if isinstance(module, LeanDoraLinearLayer):
            module.__class__ = DoraLinearLayer
    return model, stock, lean


@pytest.mark.parametrize("family, dropout", [(f, 0.0) for f in FAMILIES] + [("llama", 0.3)])
def test_lean_dora_trains_as_peft_dora(family, dropout):
    """The same outputs and gradients as peft's DoRA layer, which forms the d×k matrix; with LoRA dropout peft
    passes no base output and the layer computes W x on the dropped-out input itself."""
    model, stock, lean = dora_pair(family, dropout)
    assert lean and not any(type(m).__name__ == "LeanDoraLinearLayer" for m in stock.modules())
    grads = []
    for m in (model, stock):
        m.train()
        torch.manual_seed(0)  # the same dropout masks (BERT's)
        loss_sum, n, _ = OBJECTIVES[TASK[family]].loss_sum(m, batch_for(family))
        (loss_sum / n).backward()
        grads.append({k: p.grad for k, p in m.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and any("magnitude" in k for k in grads[0])
    for key in grads[0]:
        torch.testing.assert_close(grads[0][key], grads[1][key], rtol=1e-4, atol=1e-6, msg=key)
    batch = batch_for(family)
    torch.testing.assert_close(logits(model.eval(), batch), logits(stock.eval(), batch), rtol=0, atol=1e-5)


def test_lean_dora_forms_no_weight_sized_tensor():
    """peft's DoRA forward makes B·A (through a k×k identity), W + s·BA: d×k tensors per layer per pass; the lean
    one's largest tensor is an activation or a [d, r] product."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        numel = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            inputs = {a.untyped_storage().data_ptr() for a in [*args, *(kwargs or {}).values()]
                      if isinstance(a, torch.Tensor)}
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:  # views: no memory
                    Largest.numel = max(Largest.numel, t.numel())
            return out

    model, stock, _ = dora_pair("llama")
    seen = {}
    for name, m in (("lean", model), ("stock", stock)):
        layer = next(x for x in m.modules() if getattr(x, "lora_magnitude_vector", None))  # a peft LoRA Linear
        weight = layer.get_base_layer().weight.numel()
        Largest.numel = 0
        with Largest():
            layer(torch.randn(1, 4, layer.in_features))  # 4 tokens: activations far below d × k
        seen[name] = Largest.numel
    assert seen["stock"] >= weight  # the check sees a weight-sized tensor where there is one
    assert seen["lean"] < weight, seen
