"""Shipping a run: merged into a plain Hugging Face folder that stock transformers loads with the same logits,
fidelity checked (and refused outside its tolerance), exported for peft and checked for vLLM; methods that cannot
merge say so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from transferkit.errors import UserError


def batch_of(tokenizer, texts=("Ana is 34 and lives in Lisbon.", "Convert to JSON: Bo, 51, Oslo, pilot")):
    return tokenizer(list(texts), padding=True, return_tensors="pt")


def logits_of(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()


@pytest.fixture()
def lora_run(tiny_config):
    from transferkit import train

    cfg = tiny_config("train.eval_every=0", "train.save_every=0", "eval.baseline=false", "forgetting.reference=none")
    train(cfg)
    return Path(cfg.output_dir)


def test_a_merged_run_loads_in_stock_transformers_with_the_same_logits(lora_run, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from transferkit.cli import main
    from transferkit.runs import load_trained

    out = tmp_path / "merged"
    assert main(["merge", str(lora_run), "--out", str(out)]) == 0
    assert "equal greedy tokens 100.0%" in capsys.readouterr().out
    trained, tokenizer, _ = load_trained(lora_run)
    merged = AutoModelForCausalLM.from_pretrained(str(out))
    assert not any("lora" in n for n, _ in merged.named_parameters())
    batch = batch_of(tokenizer)
    torch.testing.assert_close(logits_of(merged, batch), logits_of(trained, batch), rtol=1e-4, atol=1e-4)
    assert AutoTokenizer.from_pretrained(str(out)).chat_template == tokenizer.chat_template
    report = json.loads((out / "merge_report.json").read_text())
    assert report["within_tolerance"] and report["fidelity"]["max_abs_logit"] < 1e-3 and report["method"] == "lora"
    # bf16: rounded weights, measured and still within its tolerance
    assert main(["merge", str(lora_run), "--out", str(tmp_path / "bf16"), "--dtype", "bf16"]) == 0
    rounded = json.loads((tmp_path / "bf16" / "merge_report.json").read_text())["fidelity"]
    assert 0 < rounded["max_abs_logit"] and AutoModelForCausalLM.from_pretrained(str(tmp_path / "bf16")).dtype == \
        torch.bfloat16
    # an existing folder is never overwritten
    assert main(["merge", str(lora_run), "--out", str(out)]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err


def test_a_merge_outside_its_tolerance_is_refused_unless_forced(lora_run, tmp_path, monkeypatch):
    from transferkit.ship import merge as merging

    monkeypatch.setitem(merging.TOLERANCE, "bf16", (1e-9, 1.0))
    with pytest.raises(UserError, match=r"merge refused: max \|Δlogit\| .* \(tolerance 1e-09\)"):
        merging.merge_run(lora_run, tmp_path / "refused", "bf16")
    assert not (tmp_path / "refused").exists()
    report = merging.merge_run(lora_run, tmp_path / "forced", "bf16", force=True)
    assert report["forced"] and not report["within_tolerance"] and (tmp_path / "forced" / "config.json").is_file()


def test_a_merged_classifier_is_a_plain_backbone_and_its_head(tiny_config, topics, tiny_bert_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModel

    from transferkit import train
    from transferkit.runs import load_trained
    from transferkit.ship import merge_run

    cfg = tiny_config(f"model={tiny_bert_dir}", "forgetting.reference=none", "method={name: lora, r: 4}",
                      f"data.train={topics['train']}", f"data.validation={topics['validation']}",
                      f"data.test={topics['test']}", "train.max_steps=6",
                      "train.eval_every=0", "train.save_every=0", "eval.baseline=false")
    train(cfg)
    merge_run(cfg.output_dir, tmp_path / "merged")
    backbone = AutoModel.from_pretrained(str(tmp_path / "merged"))
    head = load_file(str(tmp_path / "merged" / "classifier.safetensors"))
    described = json.loads((tmp_path / "merged" / "classifier.json").read_text())
    assert described["pooling"] == "mean" and described["labels"] == ["food", "sport", "travel", "weather"]
    trained, tokenizer, _ = load_trained(cfg.output_dir)
    batch = batch_of(tokenizer)
    with torch.no_grad():
        hidden = backbone(**batch).last_hidden_state                      # [B, T, H]
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        by_hand = pooled @ head["weight"].T + head["bias"]
    torch.testing.assert_close(by_hand, logits_of(trained, batch), rtol=1e-4, atol=1e-4)


def test_methods_that_cannot_merge_say_so(tiny_config, capsys):
    from transferkit import train
    from transferkit.cli import main

    cfg = tiny_config("method={name: prefix, num_virtual_tokens: 4}", "train.max_steps=2", "train.eval_every=0",
                      "train.save_every=0", "eval.baseline=false", "forgetting.reference=none")
    train(cfg)
    capsys.readouterr()
    assert main(["merge", cfg.output_dir, "--out", cfg.output_dir + "-merged"]) == 2
    err = capsys.readouterr().err
    assert "method 'prefix' cannot be merged" in err and "--target peft" in err and len(err.strip().splitlines()) == 1


def test_export_peft_loads_in_stock_peft_with_a_manifest(lora_run, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from transferkit.runs import load_trained
    from transferkit.ship import export_run

    export_run(lora_run, "peft", tmp_path / "peft")
    manifest = json.loads((tmp_path / "peft" / "manifest.json").read_text())
    assert manifest["method"] == "lora" and manifest["method_config"]["r"] == 4
    assert manifest["base_fingerprint"] and set(manifest["versions"]) >= {"transferkit", "torch", "peft"}
    assert "loss" in manifest["test_metrics"]
    stock = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), str(tmp_path / "peft"))
    trained, tokenizer, _ = load_trained(lora_run)
    batch = batch_of(tokenizer)
    torch.testing.assert_close(logits_of(stock, batch), logits_of(trained, batch), rtol=1e-4, atol=1e-4)
    export_run(lora_run, "vllm", tmp_path / "vllm")  # plain LoRA, r 4, default targets: vLLM takes it
    assert (tmp_path / "vllm" / "adapter_model.safetensors").is_file()
    with pytest.raises(UserError, match=r"rank 4 above --max-lora-rank 2"):
        export_run(lora_run, "vllm", tmp_path / "small", max_rank=2)
    with pytest.raises(UserError, match=r"--target 'onnx': choose one of peft, vllm, hf"):
        export_run(lora_run, "onnx", tmp_path / "onnx")


def test_vllm_names_every_reason_it_would_refuse():
    from transferkit.ship import vllm_problems

    problems = vllm_problems({"peft_type": "LORA", "use_dora": True, "modules_to_save": ["classifier"],
                              "bias": "all", "r": 64, "target_modules": ["q_proj", "my_gate"]}, 16)
    assert len(problems) == 5 and "DoRA" in problems[0] and "classifier" in problems[1]
    assert "bias 'all'" in problems[2] and "rank 64" in problems[3] and "my_gate" in problems[4]
    assert vllm_problems({"peft_type": "IA3"}, 16) == ["peft type IA3: vLLM serves LoRA adapters only"]
    assert vllm_problems({"peft_type": "LORA", "r": 8, "target_modules": ["q_proj", "v_proj"]}, 16) == []


def test_full_fine_tuning_exports_merged_not_as_peft(tiny_config, tmp_path):
    from transformers import AutoModelForCausalLM

    from transferkit import train
    from transferkit.ship import export_run

    cfg = tiny_config("method={name: full}", "train.max_steps=2", "train.eval_every=0", "train.save_every=0",
                      "eval.baseline=false", "forgetting.reference=none", "train.lr=1e-3")
    train(cfg)
    with pytest.raises(UserError, match="does not save in PEFT format; export it with --target hf"):
        export_run(cfg.output_dir, "peft", tmp_path / "peft")
    result = export_run(cfg.output_dir, "hf", tmp_path / "hf")
    assert result["merge"]["fidelity"]["max_abs_logit"] == 0.0  # already its own merged form
    assert AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).config.num_hidden_layers == 2


def test_a_qlora_run_merges_onto_its_dequantized_base_and_loads_as_float(tiny_config, tmp_path):
    """The merged weights are the dequantized NF4 weights the run computed with, plus s·B A: the float model
    answers as the 4-bit one did (no re-quantization), and stock transformers loads it with no bitsandbytes."""
    from tiny import save_tiny_model_folder
    from transformers import AutoModelForCausalLM

    from transferkit import train
    from transferkit.runs import load_trained
    from transferkit.ship import merge_run

    folder = save_tiny_model_folder(tmp_path / "llama64", family="llama")
    cfg = tiny_config(f"model={folder}", "method={name: qlora, r: 4}", "train.max_steps=3", "train.eval_every=0",
                      "train.save_every=0", "eval.baseline=false", "forgetting.reference=none")
    train(cfg)
    report = merge_run(cfg.output_dir, tmp_path / "merged")
    assert report["within_tolerance"] and report["fidelity"]["max_abs_logit"] < 1e-3
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert "quantization_config" not in config
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    trained, tokenizer, _ = load_trained(cfg.output_dir)
    batch = batch_of(tokenizer)
    torch.testing.assert_close(logits_of(merged, batch), logits_of(trained.eval(), batch), rtol=1e-3, atol=1e-3)
    # the same adapter merged onto the original float weights instead: it drifts by the quantization error
    from transferkit.methods import get_method

    naive = get_method("lora").load(AutoModelForCausalLM.from_pretrained(str(folder)), Path(cfg.output_dir) / "adapter")
    as_trained = logits_of(trained, batch)
    ours, theirs = (logits_of(merged, batch) - as_trained).abs().max(), (logits_of(naive.merge_and_unload(), batch)
                                                                    - as_trained).abs().max()
    from transferkit.ship.merge import TOLERANCE

    assert theirs > 10 * ours and theirs > TOLERANCE["fp32"][0], (float(ours), float(theirs))
