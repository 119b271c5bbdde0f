"""End to end per task on the packaged models: classification on the encoder
(minilm-l6, probe) and the decoder (smollm2-135m, LoRA with last-token pooling),
and plain language modeling on a .txt file."""

import json
from pathlib import Path

import pytest
from test_e2e_smollm2 import cli

pytestmark = pytest.mark.e2e


def events(run: Path) -> list[dict]:
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


def test_probe_on_minilm_classifies_topics(tmp_path):
    run = tmp_path / "probe"
    cli("train", "recipes/probe.yaml", "train.epochs=3", f"output_dir={run}")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == "probe" and summary["params"]["trainable"] == 384 * 4 + 4
    assert summary["test"]["accuracy"] > 0.8  # four balanced classes: chance is 0.25
    # the probe's default selection: its last step, not the best validation's
    assert summary["selection"]["select"] == "last" and summary["selection"]["chosen_step"] == summary["steps"]
    # A probe never changes the backbone: nothing forgotten. Its baseline is embedding similarity to the
    # label names, which already separates these four topics well; the flag says whether the probe beat it.
    assert summary["forgetting"]["forgetting"] == pytest.approx(0.0, abs=1e-9)
    assert summary["baseline"]["zero_shot"]["accuracy"] > 0.5
    assert summary["comparison"]["beats_baseline"] == (not any("does not beat" in f for f in summary["flags"]))
    result = json.loads(cli("eval", str(run), "--data", "data/topics/test.jsonl").stdout)
    assert result["metrics"]["accuracy"] == pytest.approx(summary["test"]["accuracy"], abs=0.02)
    assert result["forgetting"]["forgetting"] == pytest.approx(0.0, abs=1e-9)
    # where it changed: nowhere in the backbone (CKA 1 at every layer, no block weight moved)
    cli("diagnose", str(run), "--max-examples", "60")
    found = json.loads((run / "diagnostics" / "diagnostics.json").read_text())
    assert found["layers"] == list(range(7)) and found["cka"]["by_layer"] == pytest.approx([1.0] * 7, abs=1e-6)
    assert found["weights"]["matrices"] and all(m["relative"] == 0 for m in found["weights"]["matrices"])
    assert found["probes"]["base"] == found["probes"]["tuned"] and found["suggested_freeze_bottom"] == 6


def test_lora_classifier_on_smollm2(tmp_path):
    run = tmp_path / "cls"
    # Batch losses of 8 examples are noisy (CI once saw the last 3 of 12 steps above the first 3 on a run that
    # learned); the held-out accuracy is the signal: an unlearned head scores ~25 % on four balanced classes.
    cli("train", "recipes/classify-lora-smollm2.yaml", "train.max_steps=16", "train.batch_size=8", "train.log_every=1",
        f"output_dir={run}")
    summary = json.loads((run / "summary.json").read_text())
    losses = [e["loss"] for e in events(run) if e["event"] == "train"]
    assert len(losses) == 16 and sum(losses[-4:]) < sum(losses[:4]), losses
    assert summary["labels"] == ["food", "sport", "travel", "weather"] and summary["test"]["accuracy"] > 0.5
    # Baseline: each label's verbalisation scored by the untrained SmolLM2; forgetting: the topic probe.
    assert {"zero_shot", "4_shot"} <= set(summary["baseline"]) and summary["comparison"]["metric"] == "macro_f1"
    assert summary["forgetting"]["base_probe_accuracy"] > 0.5
    result = cli("generate", "--adapter", str(run), "--prompt", "hi", check=False)
    assert result.returncode == 2 and "does not generate text" in result.stderr


def test_language_modeling_on_text(tmp_path):
    text = tmp_path / "notes.txt"
    sentences = [json.loads(l)["prompt"].split("\n")[1] for l in Path("data/quickstart/train.jsonl").read_text().splitlines()]
    text.write_text("\n".join(sentences[:200]) + "\n")
    run = tmp_path / "lm"
    cli("train", "recipes/quickstart.yaml", f"data.train={text}", "data.validation=null", "data.test=null",
        "train.max_steps=8", "train.log_every=1", "train.batch_size=8", f"output_dir={run}")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["schema"] == "lm" and "validation" in summary  # 5 % of the lines split off
    # No test file: the run is judged on validation, against the base model's perplexity there.
    assert summary["comparison"]["split"] == "validation" and summary["comparison"]["metric"] == "perplexity"
    assert summary["comparison"]["beats_baseline"] and summary["forgetting"]["base_perplexity"] > 1
    # The same text scored by the base model and by the tuned run: the loss fell.
    base = json.loads(cli("eval", "--model", "smollm2-135m", "--data", str(text), "--max-examples", "60").stdout)["metrics"]
    tuned = json.loads(cli("eval", str(run), "--data", str(text), "--max-examples", "60").stdout)["metrics"]
    assert tuned["loss"] < base["loss"] - 0.1, (base, tuned)


def test_lora_on_minilm_merges_into_a_backbone_and_its_head(tmp_path):
    """The packaged encoder's LoRA run merged: AutoModel loads the backbone, and its mean-pooled states through the
    saved head give the run's logits; vLLM's checks refuse it (a classification head, BERT's projections)."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel

    from transferkit.runs import load_trained

    run = tmp_path / "lora"
    cli("train", "recipes/probe.yaml", "method={name: lora, r: 4}", "train.max_steps=10", "eval.baseline=false",
        "forgetting.reference=none", f"output_dir={run}")
    cli("merge", str(run), "--out", str(tmp_path / "merged"))
    backbone = AutoModel.from_pretrained(str(tmp_path / "merged"))
    head = load_file(str(tmp_path / "merged" / "classifier.safetensors"))
    trained, tokenizer, _ = load_trained(run)
    batch = tokenizer(["The match went to extra time.", "Heavy rain all weekend."], padding=True, return_tensors="pt")
    with torch.no_grad():
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (backbone(**batch).last_hidden_state * mask).sum(1) / mask.sum(1)
        torch.testing.assert_close(pooled @ head["weight"].T + head["bias"], trained(**batch).logits, rtol=1e-4,
                                   atol=1e-4)
    refused = cli("export", str(run), "--target", "vllm", "--out", str(tmp_path / "vllm"), check=False)
    assert refused.returncode == 2 and "modules_to_save" in refused.stderr and not (tmp_path / "vllm").exists()
    # served: /v1/classify gives the run's own probabilities (in fp32, as `trained` computes them here; `precision`
    # auto would serve in bf16 autocast on an AVX512-BF16 CPU)
    from served import call, serve_process

    with serve_process("--adapter", f"topics={run}", "--precision", "fp32") as address:
        status, body = call(address, "POST", "/v1/classify", {"model": "topics", "input": [
            "The match went to extra time.", "Heavy rain all weekend."]})
    assert status == 200, body
    labels = [trained.config.id2label[i] for i in range(trained.config.num_labels)]
    served = torch.tensor([[row["probabilities"][label] for label in labels] for row in body["data"]])
    with torch.no_grad():
        torch.testing.assert_close(served, torch.softmax(trained(**batch).logits, -1), atol=1e-5, rtol=1e-4)
    # chat: each line answered with the label the server gave it
    import subprocess
    import sys

    chat = subprocess.run([sys.executable, "-m", "transferkit", "chat", str(run)], input="The match went to extra time."
                          "\n/exit\n", capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[1])
    assert chat.returncode == 0 and f"> {body['data'][0]['label']}  (" in chat.stdout, chat.stdout + chat.stderr
