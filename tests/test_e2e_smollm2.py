"""End to end: the real CLI on the packaged SmolLM2-135M for a few steps."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "transferkit", *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"transferkit {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("e2e") / "run"
    cli("train", "recipes/quickstart.yaml", "train.max_steps=6", "train.batch_size=4", "train.log_every=1",
        "train.eval_every=3", "train.save_every=3", "eval.max_examples=4", "eval.max_new_tokens=40",
        "eval.batch_size=4", f"output_dir={out}")
    return out


def test_run_directory_is_complete(run_dir):
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert [p.name for p in sorted((run_dir / "checkpoints").iterdir())] == ["step-000003", "step-000006"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["model"] == "smollm2-135m" and summary["steps"] == 6
    assert summary["params"]["total"] > 134_000_000 and 0 < summary["params"]["trainable"] < 5_000_000
    assert summary["tokens_per_s"] > 0 and summary["peak_memory_bytes"] > 0
    baseline = summary["baseline"]
    assert baseline["split"] == "test" and 0.0 <= baseline["zero_shot"]["exact_match"] <= 1.0
    assert 0.0 <= baseline["4_shot"]["json_field_accuracy"] <= 1.0 and "exact_match" in summary["test"]
    comparison = summary["comparison"]
    assert comparison["metric"] == "json_field_accuracy" and comparison["tuned"] == summary["test"]["json_field_accuracy"]
    assert comparison["baseline"] == max(baseline[k]["json_field_accuracy"] for k in ("zero_shot", "4_shot"))
    assert summary["forgetting"]["base_perplexity"] > 1 and summary["forgetting"]["tuned_perplexity"] > 1


def test_loss_fell(run_dir):
    events = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in events if e["event"] == "train"]
    assert len(losses) == 6
    assert losses[-1] < 0.7 * losses[0], losses
    evals = [e for e in events if e["event"] == "eval"]
    assert evals and all(e["split"] == "validation" for e in evals)


def test_adapter_reloads_in_stock_peft_with_identical_logits(run_dir):
    from peft import LoraConfig, PeftModel, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    base_path = json.loads((run_dir / "summary.json").read_text())["model_path"]
    ids = torch.tensor([[1, 504, 3458, 28, 253, 2947, 2]])
    stock = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), str(run_dir / "adapter")).eval()

    # The same weights by another road: the final checkpoint's trainable tensors
    # loaded into a freshly wrapped base.
    config = LoraConfig.from_pretrained(str(run_dir / "adapter"))
    rebuilt = get_peft_model(AutoModelForCausalLM.from_pretrained(base_path), config)
    saved = load_file(str(run_dir / "checkpoints" / "step-000006" / "trainable.safetensors"))
    missing = rebuilt.load_state_dict(saved, strict=False)
    assert not missing.unexpected_keys
    rebuilt.eval()
    with torch.no_grad():
        a, b = stock(ids).logits, rebuilt(ids).logits
        base = AutoModelForCausalLM.from_pretrained(base_path).eval()(ids).logits
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert (a - base).abs().max() > 1e-3
    # A shared adapter names its base by hub id, not by this machine's cache path (read from the file: peft's
    # get_peft_model above rewrites the config object it was given).
    saved_config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert saved_config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_generate_and_eval_commands(run_dir):
    prompt = "Convert to a JSON record with keys name, age, city, job:\nAna Silva is a 34-year-old nurse from Lisbon."
    reply = cli("generate", "--adapter", str(run_dir), "--prompt", prompt, "--max-new-tokens", "40").stdout.strip()
    assert reply.startswith("{") and "Ana Silva" in reply
    result = json.loads(cli("eval", str(run_dir), "--data", "data/quickstart/test.jsonl", "--max-examples", "4",
                            "--max-new-tokens", "40", "--baseline", "--shots", "2", "--task-metric", "json").stdout)
    metrics = result["metrics"]
    assert {"loss", "perplexity", "exact_match", "json_field_accuracy", "examples"} <= set(metrics)
    assert metrics["examples"] == 4
    assert set(result["baseline"]) == {"zero_shot", "2_shot"}
    assert result["comparison"]["metric"] == "json_field_accuracy" and result["comparison"]["tuned"] == metrics["json_field_accuracy"]
    general = result["general"]
    assert result["forgetting"]["forgetting"] == pytest.approx(general["evaluated"]["perplexity"] / general["base"]["perplexity"] - 1)


def test_diagnose_and_probe_on_smollm2(run_dir, tmp_path):
    """LoRA leaves the embeddings alone (CKA 1 at layer 0) and its updates have rank ≤ r; the base model's probe
    curve on the topics reads the task above chance from a middle layer on."""
    # mean pooling: every quickstart prompt ends in the same token, so the last token's embedding is one vector
    cli("diagnose", str(run_dir), "--max-examples", "16", "--layers", "0,10,20,30", "--pooling", "mean")
    found = json.loads((run_dir / "diagnostics" / "diagnostics.json").read_text())
    rank = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())["r"]
    assert found["layers"] == [0, 10, 20, 30] and found["cka"]["by_layer"][0] == pytest.approx(1.0, abs=1e-6)
    assert "probes" not in found  # instruction data, no label column: nothing to probe
    changed = [m for m in found["weights"]["matrices"] if m["relative"] > 0]
    assert changed and all(m["rank_90"] <= rank for m in changed)
    cli("probe", "--model", "smollm2-135m", "--data", "data/topics/test.jsonl", "--max-examples", "60",
        "--layers", "0,15,30", "--out", str(tmp_path / "probe"))
    curve = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert curve["layers"] == [0, 15, 30] and curve["pooling"] == "last" and max(curve["probe"][1:]) > curve["chance"]


def test_python_dash_m_is_the_transferkit_command():
    script = Path(sys.executable).parent / "transferkit"
    direct = subprocess.run([str(script), "keys"], capture_output=True, text=True, check=True).stdout
    assert direct == cli("keys").stdout and "train.max_steps" in direct


def test_bad_input_is_a_one_line_error_and_writes_nothing(tmp_path):
    out = tmp_path / "never"
    result = cli("train", "recipes/quickstart.yaml", "model=no-such-model", f"output_dir={out}", check=False)
    assert result.returncode == 2
    assert "unknown model 'no-such-model'" in result.stderr and "smollm2-135m" in result.stderr
    assert not out.exists()
    result = cli("train", "recipes/quickstart.yaml", "train.max_step=5", check=False)
    assert result.returncode == 2 and "did you mean 'train.max_steps'" in result.stderr


def test_merge_and_export_on_smollm2(run_dir, tmp_path):
    """The packaged model's run merged into a folder stock transformers loads with the run's greedy tokens, and
    exported for peft and vLLM."""
    from transformers import AutoModelForCausalLM

    from transferkit.runs import load_trained

    cli("merge", str(run_dir), "--out", str(tmp_path / "merged"))
    report = json.loads((tmp_path / "merged" / "merge_report.json").read_text())
    assert report["within_tolerance"] and report["fidelity"]["equal_greedy"] == 1.0
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
    trained, tokenizer, _ = load_trained(run_dir)
    batch = tokenizer(["Convert to a JSON record: Ana Silva is a 34-year-old nurse from Lisbon."], return_tensors="pt")
    with torch.no_grad():
        a, b = merged(**batch).logits, trained(**batch).logits
    assert torch.equal(a.argmax(-1), b.argmax(-1)) and (a - b).abs().max() < 1e-2
    cli("export", str(run_dir), "--target", "vllm", "--out", str(tmp_path / "vllm"))
    manifest = json.loads((tmp_path / "vllm" / "manifest.json").read_text())
    assert manifest["base"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and manifest["method"] == "lora"


def test_serve_and_chat_on_smollm2(run_dir):
    """The real CLI: the quickstart run and its base served together answer as `transferkit generate` does with
    each alone (greedy), streamed or not; `transferkit chat` answers the same."""
    from served import call, serve_process

    prompt = "Convert to a JSON record with keys name, age, city, job: Bo Lind, 51, is a pilot in Oslo."
    alone = {name: cli("generate", *flag, "--prompt", prompt, "--max-new-tokens", "24").stdout.strip()
             for name, flag in (("quick", ("--adapter", str(run_dir))), ("smollm2-135m", ("--model", "smollm2-135m")))}
    assert alone["quick"] != alone["smollm2-135m"]
    with serve_process("--model", "smollm2-135m", "--adapter", f"quick={run_dir}") as address:
        status, models = call(address, "GET", "/v1/models")
        assert status == 200 and {m["id"]: m["shares_base"] for m in models["data"]} == {"quick": True,
                                                                                         "smollm2-135m": True}
        for name, expected in alone.items():
            status, body = call(address, "POST", "/v1/chat/completions", {
                "model": name, "messages": [{"role": "user", "content": prompt}], "max_tokens": 24, "temperature": 0})
            assert status == 200 and body["choices"][0]["message"]["content"].strip() == expected, body
        status, body = call(address, "POST", "/v1/chat/completions", {
            "model": "quick", "messages": [{"role": "user", "content": prompt}], "max_tokens": 24, "temperature": 0,
            "stream": True})
        chunks = [json.loads(line[6:]) for line in body.split("\n\n") if line.startswith("data: {")]
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks).strip() == alone["quick"]
        assert call(address, "POST", "/v1/chat/completions", {"model": "nope", "messages": []})[0] == 400
    chat = subprocess.run([sys.executable, "-m", "transferkit", "chat", str(run_dir), "--max-tokens", "24"], cwd=ROOT,
                          input=prompt + "\n/exit\n", capture_output=True, text=True, timeout=600)
    assert chat.returncode == 0, chat.stderr[-2000:]
    assert alone["quick"] in chat.stdout
