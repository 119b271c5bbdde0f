"""QLoRA on CPU: NF4 round-trip error within its bound, training lowers the loss,
and the adapter applies on the float base afterwards."""

import pytest
import torch
from tiny import save_tiny_model_folder

from transferkit.data.batching import collate
from transferkit.data.tokenize import Tokenized
from transferkit.methods import get_method, method_config_from_dict
from transferkit.models import load_model
from transferkit.objectives.loss import token_loss_sum

# NF4 code book (Dettmers et al. 2023, appendix E): the widest gap is between
# -1.0 and -0.6962, so rounding to the nearest level errs by at most 0.1519 × absmax.
NF4_HALF_GAP = (1.0 - 0.6961928009986877) / 2


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_model_folder(tmp_path_factory.mktemp("llama64"), family="llama")


def test_nf4_round_trip_error_within_bound():
    import bitsandbytes.functional as F

    torch.manual_seed(0)
    w = torch.randn(128, 256) * 0.05
    packed, state = F.quantize_4bit(w, quant_type="nf4", compress_statistics=True, blocksize=64)
    restored = F.dequantize_4bit(packed, state)
    blocks = w.reshape(-1, 64)
    error = (restored.reshape(-1, 64) - blocks).abs()
    absmax = blocks.abs().amax(dim=1, keepdim=True)
    # 3 % slack for the 8-bit double quantization of the block scales.
    assert (error <= absmax * NF4_HALF_GAP * 1.03 + 1e-7).all()
    assert error.mean() < 0.1 * w.abs().mean() * 2  # and typically far below the bound


def _batch(tokenizer):
    texts = ["Ana Silva is a 34-year-old nurse from Lisbon.", "the quick brown fox jumps over the lazy dog"]
    items = [Tokenized(ids, ids, "t:1") for ids in (tokenizer(t)["input_ids"] for t in texts)]
    return collate(items, tokenizer.pad_token_id)


def test_qlora_trains_on_a_4bit_base_and_applies_on_the_float_base(folder, tmp_path):
    method = get_method("qlora")
    model, tokenizer, _ = load_model(str(folder), quantize_4bit=True)
    q_proj = model.model.layers[0].self_attn.q_proj
    assert model.is_loaded_in_4bit and q_proj.weight.dtype == torch.uint8  # packed NF4
    cfg = method_config_from_dict({"name": "qlora", "r": 4})
    model = method.apply(model, cfg, "causal-lm")
    batch = _batch(tokenizer)

    def loss():
        with torch.no_grad():
            s, n = token_loss_sum(model, batch)
        return (s / n).item()

    start = loss()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(5):
        s, n = token_loss_sum(model, batch)
        (s / n).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert loss() < start - 0.05

    method.save(model, cfg, tmp_path)
    float_base, _, _ = load_model(str(folder))
    on_float = get_method("lora").load(float_base, tmp_path).eval()
    model.eval()
    with torch.no_grad():
        quantized_logits = model(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits
        float_logits = on_float(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits
    lora_q = {n: p for n, p in model.named_parameters() if "lora_" in n}
    lora_f = dict(on_float.named_parameters())
    assert all(torch.equal(p, lora_f[n]) for n, p in lora_q.items())
    # Same adapter on the float base: outputs differ only by the base's quantization error.
    assert (quantized_logits - float_logits).abs().mean() < 0.1 * float_logits.abs().mean()


def test_qlora_through_train(tiny_config, folder):
    from transferkit import load_trained, train

    cfg = tiny_config(f"model={folder}", "method.name=qlora", "method.r=4", "train.max_steps=3",
                      "eval.baseline=false")
    summary = train(cfg)
    assert summary["method"] == "qlora" and summary["steps"] == 3
    model, _, _ = load_trained(cfg.output_dir)
    assert model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight.dtype == torch.uint8


def test_qlora_classifier_keeps_its_head_in_float(tiny_config, tmp_path):
    """The new classification head is not quantized: it trains in full beside the LoRA matrices."""
    from tiny import write_jsonl

    from transferkit import load_trained, train
    from transferkit.data.synthetic import topic_splits

    bert = save_tiny_model_folder(tmp_path / "bert", family="bert")
    data = {s: write_jsonl(tmp_path / f"{s}.jsonl", rows)
            for s, rows in topic_splits({"train": 32, "validation": 8, "test": 8}, seed=0).items()}
    cfg = tiny_config(f"model={bert}", "forgetting.reference=general", "method={name: qlora, r: 4}", "train.max_steps=3",
                      *[f"data.{s}={p}" for s, p in data.items()])
    train(cfg)
    model, _, _ = load_trained(cfg.output_dir)
    head = model.base_model.model.classifier.modules_to_save["default"]
    assert head.weight.dtype == torch.float32
    assert model.base_model.model.backbone.encoder.layer[0].attention.self.query.base_layer.weight.dtype == torch.uint8


def test_evaluating_a_4bit_model_does_not_break_its_gradients(folder):
    """bitsandbytes repacks NF4 weights for CPU inference on an eval-mode no-grad forward, and the packed matmul
    has no backward; transferkit evaluates before and during training, so gradients must survive that."""
    method = get_method("qlora")
    cfg = method_config_from_dict({"name": "qlora", "r": 4})

    def lora_grads(evaluate_first: bool) -> list[torch.Tensor]:
        model, tokenizer, _ = load_model(str(folder), quantize_4bit=True)
        batch = _batch(tokenizer)
        if evaluate_first:
            model.eval()
            with torch.no_grad():
                token_loss_sum(model, batch)
        torch.manual_seed(0)
        model = method.apply(model, cfg, "causal-lm")
        model.train()
        for p in model.parameters():  # B = 0 at init would hide the A gradients: give every LoRA weight a value
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.02)
        loss_sum, n = token_loss_sum(model, batch)
        (loss_sum / n).backward()
        return [p.grad.clone() for p in model.parameters() if p.requires_grad]

    plain, after_eval = lora_grads(False), lora_grads(True)
    assert len(plain) == len(after_eval) > 0
    for a, b in zip(plain, after_eval):
        torch.testing.assert_close(a, b)


def test_eval_measures_forgetting_against_the_4bit_base(folder, tiny_config):
    """A QLoRA run is compared with the NF4 base it trained on, not the float one: an adapter that did not
    move (LoRA's B = 0, learning rate 1e-12) has forgotten nothing, whatever the quantization error."""
    from transferkit import evaluate_run, train

    cfg = tiny_config(f"model={folder}", "method={name: qlora, r: 4}", "train.max_steps=1", "train.lr=1e-12",
                      "eval.baseline=false", "eval.exact_match=false")
    summary = train(cfg)
    assert summary["forgetting"]["forgetting"] == pytest.approx(0.0, abs=1e-6)
    result, _ = evaluate_run(cfg.data.test, run_dir=cfg.output_dir, precision="fp32",
                             eval_cfg=cfg.eval)
    assert result["forgetting"]["forgetting"] == pytest.approx(0.0, abs=1e-6)


def test_a_4bit_base_keeps_no_map_of_its_float_file(folder):
    """Quantizing reads every float weight of the file; the tensors left in float (embeddings, norms) get
    memory of their own, so the file's memory map (and every page read through it) is released."""
    from pathlib import Path

    model, _, _ = load_model(str(folder), quantize_4bit=True)
    mapped = [line for line in Path("/proc/self/maps").read_text().splitlines() if str(folder) in line]
    assert model.is_loaded_in_4bit and mapped == []
