"""The training engine on a tiny Llama: loss, accumulation, resume, run directory."""

import json
from pathlib import Path

import pytest
import torch
from tiny import tiny_llama, tiny_tokenizer

from transferkit.data import read_examples
from transferkit.data.batching import collate
from transferkit.data.tokenize import Tokenized, tokenize_examples
from transferkit.errors import UserError
from transferkit.objectives.loss import token_loss_sum


def _batch(tmp_path, n=8):
    from tiny import write_jsonl

    from transferkit.data.synthetic import person_records

    tok = tiny_tokenizer()
    write_jsonl(tmp_path / "d.jsonl", person_records(n, seed=5))
    schema, examples = read_examples(str(tmp_path / "d.jsonl"))
    return tok, tokenize_examples(tok, examples, schema, 256)


def test_token_loss_matches_transformers_loss(tmp_path):
    tok, items = _batch(tmp_path)
    model = tiny_llama(len(tok))
    batch = collate(items, tok.pad_token_id)
    loss_sum, n = token_loss_sum(model, batch)
    reference = model(**batch).loss  # transformers shifts labels and averages over labelled tokens
    assert int(n) == sum(t.num_labels for t in items)
    torch.testing.assert_close(loss_sum / n, reference, rtol=1e-5, atol=1e-6)


def test_loss_units_are_the_tokens_the_loss_predicts(tmp_path):
    """What the loop divides by (Tokenized.num_labels, known on the host) is what the loss counts: for plain text
    every token but the first (nothing predicts it), for instruction data the completion tokens."""
    tok, chats = _batch(tmp_path, n=4)
    texts = [Tokenized(ids, list(ids), "t") for ids in (tok(t)["input_ids"] for t in ["hello world", "the quick fox"])]
    model = tiny_llama(len(tok))
    for items in (chats, texts):
        _, count = token_loss_sum(model, collate(items, tok.pad_token_id))
        assert int(count) == sum(t.num_labels for t in items)
    assert [t.num_labels for t in texts] == [len(t.input_ids) - 1 for t in texts]


def _parts(model, tok, objective=None):
    """The loop's parts around `model`, with SGD at lr 1 (the update is exactly the gradient)."""
    from accelerate import Accelerator

    from transferkit.objectives import OBJECTIVES
    from transferkit.runtime import CPU
    from transferkit.train.loop import Parts

    objective = objective or OBJECTIVES["causal-lm"]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return Parts(model, optimizer, scheduler, Accelerator(cpu=True), objective, objective.collate, tok.pad_token_id, CPU)


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    """The real optimizer step over 8 sequences: 4 micro-batches of 2 give the loss, gradient norm and update of
    1 micro-batch of 8."""
    from transferkit.train.loop import optimizer_step

    tok, items = _batch(tmp_path)

    def step(micro: int):
        model = tiny_llama(len(tok), seed=3)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        result = optimizer_step(_parts(model, tok), items, micro, 1e9)  # a clipping bound that never bites
        return result, {n: before[n] - p.detach() for n, p in model.named_parameters()}

    (one, update_one), (four, update_four) = step(8), step(2)
    assert one.applied and four.applied
    assert one.labels == four.labels == sum(t.num_labels for t in items)
    torch.testing.assert_close(four.loss_sum, one.loss_sum, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(four.grad_norm, one.grad_norm, rtol=1e-4, atol=1e-6)
    assert max(float(u.abs().max()) for u in update_one.values()) > 0
    for name in update_one:
        torch.testing.assert_close(update_four[name], update_one[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("max_grad_norm", [1.0, 0.0])
def test_a_finite_loss_with_non_finite_gradients_is_not_applied(tmp_path, max_grad_norm):
    """0·sqrt(0) is 0 in the forward pass and NaN in the backward one: the loss stays finite, the gradients do
    not, and the weights must not move, with or without clipping."""
    from transferkit.objectives import OBJECTIVES, Objective
    from transferkit.train.loop import optimizer_step

    tok, items = _batch(tmp_path, n=4)
    model = tiny_llama(len(tok), seed=4)
    real = OBJECTIVES["causal-lm"]

    def poisoned(m, batch):
        loss, n, figures = real.loss_sum(m, batch)
        return loss + 0.0 * torch.sqrt(next(m.parameters()).sum() * 0.0), n, figures

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = optimizer_step(_parts(model, tok, Objective(real.collate, poisoned)), items, 2, max_grad_norm)
    assert bool(torch.isfinite(result.loss_sum)) and not bool(torch.isfinite(result.grad_norm))
    assert not result.applied
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert all(p.grad is None for p in model.parameters())


def _train_events(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_train_writes_the_run_directory(tiny_config):
    from transferkit import train

    cfg = tiny_config("train.max_steps=12", "train.save_every=6")
    summary = train(cfg)
    from pathlib import Path

    run = Path(cfg.output_dir)
    assert {"config.yaml", "metrics.jsonl", "summary.json", "adapter", "checkpoints"} <= {p.name for p in run.iterdir()}
    assert (run / "adapter" / "adapter_config.json").is_file() and (run / "adapter" / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000006", "step-000012"]
    events = _train_events(run)
    train_events = [e for e in events if e["event"] == "train"]
    assert [e["step"] for e in train_events] == list(range(1, 13))
    assert all({"step", "loss", "lr", "tokens_per_s"} <= set(e) for e in train_events)
    assert {e["event"] for e in events} >= {"baseline", "general_base", "train", "eval", "test"}
    for prompt in ("zero_shot", "4_shot"):  # the untrained model's answers, kept like the tuned model's
        answers = [json.loads(l) for l in (run / f"baseline_{prompt}_predictions.jsonl").read_text().splitlines()]
        assert [a["where"] for a in answers] == [json.loads(l)["where"] for l in
                                                 (run / "test_predictions.jsonl").read_text().splitlines()]
    assert train_events[-1]["loss"] < train_events[0]["loss"]
    for key in ("params", "wall_time_s", "tokens_per_s", "peak_memory_bytes", "test", "baseline", "comparison",
                "forgetting", "general", "validation"):
        assert key in summary, key
    # Baseline, tuned score, gain and forgetting side by side.
    assert set(summary["baseline"]) == {"split", "zero_shot", "4_shot"}
    comparison = summary["comparison"]
    # Free-form answers (JSON records of ~15 words): judged by token F1, the references' perplexity beside it.
    assert comparison["metric"] == "token_f1" and comparison["tuned"] == summary["test"]["token_f1"]
    assert comparison["perplexity"] == {"tuned": summary["test"]["perplexity"],
                                        "base": summary["baseline"]["zero_shot"]["perplexity"]}
    assert comparison["gain"] == comparison["tuned"] - comparison["baseline"]
    assert comparison["beats_baseline"] == (comparison["gain"] > 0)
    assert (not comparison["beats_baseline"]) == any("does not beat" in f for f in summary["flags"])
    general = summary["general"]
    assert summary["forgetting"]["forgetting"] == general["tuned"]["perplexity"] / general["base"]["perplexity"] - 1
    assert summary == json.loads((run / "summary.json").read_text())
    assert 0 < summary["params"]["trainable"] < summary["params"]["total"]


def test_refuses_to_overwrite_a_run(tiny_config):
    from transferkit import train

    cfg = tiny_config("train.max_steps=1", "eval.baseline=false")
    train(cfg)
    with pytest.raises(UserError, match="output_dir is not empty; use --resume"):
        train(cfg)
    train(cfg, overwrite=True)


def test_resume_equals_straight_run(tiny_config, tmp_path, monkeypatch):
    """10 steps straight == a crash after step 7, resume from the step-5 checkpoint, run to 10:
    same parameters and the same loss curve, with no gaps or duplicate events."""
    from safetensors.torch import load_file

    from tiny import crash_and_resume

    from transferkit import train

    common = ["train.max_steps=10", "train.save_every=5", "eval.baseline=false", "method.dropout=0.1"]
    train(tiny_config(*common, f"output_dir={tmp_path / 'straight'}"))
    crash_and_resume(train, tiny_config(*common, f"output_dir={tmp_path / 'resumed'}"), monkeypatch, crash_at=8)

    a = load_file(str(tmp_path / "straight" / "checkpoints" / "step-000010" / "trainable.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "checkpoints" / "step-000010" / "trainable.safetensors"))
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6, msg=name)
    loss_a = [e["loss"] for e in _train_events(tmp_path / "straight") if e["event"] == "train"]
    events_b = [e for e in _train_events(tmp_path / "resumed") if e["event"] == "train"]
    assert [e["step"] for e in events_b] == list(range(1, 11))  # no gaps, no duplicates
    assert [e["loss"] for e in events_b] == pytest.approx(loss_a, rel=1e-5)


def test_resuming_a_finished_run_trains_and_evaluates_nothing(tiny_config, caplog):
    import logging
    from pathlib import Path

    from transferkit import train

    cfg = tiny_config("train.max_steps=2", "train.eval_every=0", "eval.baseline=false")
    summary = train(cfg)
    metrics = (Path(cfg.output_dir) / "metrics.jsonl").read_text()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="transferkit"):
        assert train(cfg, resume=True) == summary
    said = caplog.text
    assert "finished at step 2 already; nothing to train" in said and "training" not in said.replace("to train", "")
    assert (Path(cfg.output_dir) / "metrics.jsonl").read_text() == metrics  # no step, no evaluation logged again


def test_ctrl_c_before_the_first_step_says_how_to_continue(tiny_config, monkeypatch, capsys):
    """Interrupted while the base is measured: a one-line message with the command, and that command finishes."""
    from pathlib import Path

    import importlib

    from transferkit import train
    from transferkit.cli import main
    from transferkit.train.signals import Stopped

    setup_module = importlib.import_module("transferkit.train.setup")

    cfg = tiny_config("train.max_steps=2", "train.eval_every=0", "eval.baseline=false")
    monkeypatch.setattr(setup_module, "measure_general_base", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(Stopped, match=f"Continue with: transferkit train --resume {cfg.output_dir}") as stop:
        train(cfg)
    assert stop.value.exit_code == 130 and (Path(cfg.output_dir) / "config.yaml").is_file()
    monkeypatch.undo()
    assert main(["train", "--resume", cfg.output_dir]) == 0
    assert (Path(cfg.output_dir) / "summary.json").is_file()


def test_incomplete_checkpoint_is_never_picked(tmp_path):
    from transferkit.train.checkpoint import latest

    (tmp_path / "step-000005").mkdir()
    (tmp_path / "step-000005" / "state.json").write_text("{}")
    (tmp_path / ".tmp-step-000010-123").mkdir()        # a crash mid-write
    (tmp_path / "step-000015").mkdir()                 # no state.json: not complete
    assert latest(tmp_path).name == "step-000005"


def test_adapter_loads_in_stock_peft_with_identical_logits(tiny_config, tiny_model_dir):
    from pathlib import Path

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from transferkit import load_trained, train

    cfg = tiny_config("train.max_steps=4", "eval.baseline=false")
    summary = train(cfg)
    ids = torch.tensor([[1, 5, 9, 42, 7, 100]])
    ours, _, _ = load_trained(cfg.output_dir)
    assert ours.config._attn_implementation == summary["attention"]  # the kernel the run trained with
    attention = {"attn_implementation": summary["attention"]}
    stock = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), **attention),
                                      str(Path(cfg.output_dir) / "adapter")).eval()
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    with torch.no_grad():
        torch.testing.assert_close(stock(ids).logits, ours(ids).logits, rtol=0, atol=0)
        assert not torch.allclose(stock(ids).logits, base(ids).logits)  # the adapter does something
    # Its base is named as the config named it (a packaged model by hub id: tests/test_e2e_smollm2.py).
    peft_config = json.loads((Path(cfg.output_dir) / "adapter" / "adapter_config.json").read_text())
    assert peft_config["base_model_name_or_path"] == cfg.model


def test_packaged_models_are_named_by_hub_id():
    from transferkit.models.packaged import portable_reference

    assert portable_reference("smollm2-135m") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert portable_reference("minilm-l6") == "sentence-transformers/all-MiniLM-L6-v2"
    assert portable_reference("/data/my-model") == "/data/my-model"


def test_bf16_and_fp32_reach_the_same_loss(tiny_config, tmp_path):
    from transferkit import train

    finals = {}
    for precision in ("fp32", "bf16"):
        cfg = tiny_config("train.max_steps=12", f"train.precision={precision}", "eval.baseline=false",
                          f"output_dir={tmp_path / precision}")
        summary = train(cfg)
        assert summary["precision"] == precision
        finals[precision] = summary["validation"]["loss"]
    assert finals["bf16"] == pytest.approx(finals["fp32"], rel=0.02), finals


def test_frozen_weights_stored_in_bf16_trained_ones_stay_fp32():
    from transferkit.methods import get_method, method_config_from_dict
    from transferkit.runtime import Runtime, store_frozen_weights

    model = get_method("lora").apply(tiny_llama(400), method_config_from_dict({"name": "lora", "r": 4}), "causal-lm")
    assert store_frozen_weights(model, Runtime(torch.device("cpu"), "fp32")) == 0  # fp32: nothing moves
    assert store_frozen_weights(model, Runtime(torch.device("cpu"), "bf16"), in_bf16=False) == 0
    moved = store_frozen_weights(model, Runtime(torch.device("cpu"), "bf16"))
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert moved == sum(p.numel() for p in frozen) > 0
    assert all(p.dtype == torch.bfloat16 for p in frozen)
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux's /proc/self/maps")
def test_casting_the_frozen_weights_leaves_no_map_of_the_weights_file(tmp_path):
    """Freeze's top layer stays fp32 while the rest is cast to bf16; the cast read every page of the file, and a
    weight left as it was would keep the file's memory map (and every page read) resident: it is copied out."""
    from tiny import save_tiny_model_folder

    from transferkit.models import load_model
    from transferkit.runtime import Runtime, store_frozen_weights

    folder = save_tiny_model_folder(tmp_path / "tiny")
    model, _, _ = load_model(str(folder))
    for name, param in model.named_parameters():
        param.requires_grad = ".layers.1." in name

    def mapped():
        return [line for line in Path("/proc/self/maps").read_text().splitlines() if str(folder) in line]

    assert mapped()  # loaded weights view the file's map
    top = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    assert store_frozen_weights(model, Runtime(torch.device("cpu"), "bf16")) > 0
    assert mapped() == []
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.dtype == torch.float32 and torch.equal(param, top[name])


@pytest.mark.parametrize("row_tokens", [0, 300, 4096])
def test_packed_rows_give_each_sequence_its_unpacked_logits_and_loss(tmp_path, row_tokens):
    from transferkit.data.batching import collate_packed

    tok, items = _batch(tmp_path, n=6)
    model = tiny_llama(len(tok), seed=1)
    packed = collate_packed(items, tok.pad_token_id, row_tokens=row_tokens)
    lengths = [len(t.input_ids) for t in items]
    capacity, rows = max(row_tokens, max(lengths)), packed["input_ids"].shape[0]
    assert packed["input_ids"].shape[1] <= capacity
    assert rows == 1 if row_tokens >= sum(lengths) else rows >= -(-sum(lengths) // capacity)  # ceil: no overfull row
    logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits  # [rows, T, V]
    # Walk the rows: every sequence restarts its position ids at 0.
    found = 0
    for row in range(packed["input_ids"].shape[0]):
        starts = (packed["position_ids"][row] == 0).nonzero().flatten().tolist() + [packed["input_ids"].shape[1]]
        for begin, end in zip(starts, starts[1:]):
            ids = packed["input_ids"][row, begin:end].tolist()
            match = [t for t in items if t.input_ids == ids]
            if not match:  # the row's padding run
                assert all(i == tok.pad_token_id for i in ids)
                continue
            alone = model(input_ids=torch.tensor([ids])).logits[0]
            torch.testing.assert_close(logits[row, begin:end], alone, rtol=1e-4, atol=1e-5)
            found += 1
    assert found == len(items)
    packed_sum, packed_n = token_loss_sum(model, packed)
    padded_sum, padded_n = token_loss_sum(model, collate(items, tok.pad_token_id))
    assert int(packed_n) == int(padded_n)
    torch.testing.assert_close(packed_sum, padded_sum, rtol=1e-4, atol=1e-4)


def test_packing_is_refused_where_sequences_cannot_share_a_row(tiny_config):
    from transferkit import train
    from transferkit.errors import ConfigError

    cfg = tiny_config("train.max_steps=1", "train.pack_tokens=256", "method={name: prompt}")
    with pytest.raises(ConfigError, match="pack_tokens"):
        train(cfg)
    assert not (cfg.output_dir and __import__("pathlib").Path(cfg.output_dir).exists())


def test_packed_training_runs_and_learns(tiny_config):
    from transferkit import train

    summary = train(tiny_config("train.max_steps=12", "train.pack_tokens=512", "train.lr=3e-3"))
    assert summary["train_loss"]["final"] < summary["train_loss"]["first_logged"]


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path):
    from transferkit.methods import get_method, method_config_from_dict
    from transferkit.train.hardware import enable_gradient_checkpointing

    tok, items = _batch(tmp_path, n=4)
    batch = collate(items, tok.pad_token_id)

    def lora_grads(checkpointing: bool):
        model = get_method("lora").apply(tiny_llama(len(tok), seed=2), method_config_from_dict({"name": "lora"}),
                                         "causal-lm")
        torch.manual_seed(0)
        for name, p in model.named_parameters():
            if "lora_B" in name:  # B starts at zero; make the adapter path non-trivial
                torch.nn.init.normal_(p, std=0.02)
        if checkpointing:
            enable_gradient_checkpointing(model)
        assert model.get_base_model().model.gradient_checkpointing is checkpointing
        model.train()
        loss_sum, n = token_loss_sum(model, batch)
        (loss_sum / n).backward()
        return {name: p.grad for name, p in model.named_parameters() if p.requires_grad}

    plain, recomputed = lora_grads(False), lora_grads(True)
    assert plain and plain.keys() == recomputed.keys()
    for name in plain:
        torch.testing.assert_close(recomputed[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)


def test_generate_output_contract_and_sampling(tiny_config, capsys, monkeypatch):
    """Plain text by default (a blank line between replies), JSON lines with --json; sampling is seeded, and a
    system message changes what the model reads."""
    import io

    from transferkit import generate, train
    from transferkit.cli import main
    from transferkit.evaluate.generation import Sampling

    cfg = tiny_config("train.max_steps=1", "eval.baseline=false", "train.eval_every=0")
    train(cfg)
    common = ["generate", "--adapter", cfg.output_dir, "--max-new-tokens", "6", "--precision", "fp32"]
    capsys.readouterr()
    assert main([*common, "--prompt", "a", "--prompt", "b", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["prompt"] for line in lines] == ["a", "b"]
    greedy = generate(["a", "b"], adapter=cfg.output_dir, max_new_tokens=6, precision="fp32")
    assert [line["reply"] for line in lines] == greedy
    assert main([*common, "--prompt", "a", "--prompt", "b"]) == 0
    assert capsys.readouterr().out == f"{greedy[0]}\n\n{greedy[1]}\n"
    hot = Sampling(temperature=5.0, top_p=1.0, seed=3)
    sampled = generate(["a"] * 4, adapter=cfg.output_dir, max_new_tokens=6, precision="fp32", sampling=hot)
    assert sampled == generate(["a"] * 4, adapter=cfg.output_dir, max_new_tokens=6, precision="fp32", sampling=hot)
    assert sampled != [greedy[0]] * 4  # at temperature 5 over a tiny vocabulary, not the greedy reply every time
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(common) == 2 and "no prompt" in capsys.readouterr().err
    seen = []
    monkeypatch.setattr("transferkit.api.generate_completions", lambda model, tok, chats, **kw: seen.extend(chats) or
                        [""] * len(chats))
    assert main([*common, "--prompt", "a", "--system", "Answer in JSON."]) == 0
    assert seen == [[{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "a"}]]


def test_the_python_api_prints_nothing_to_stdout(tiny_config, capsys, caplog):
    """Library calls log to the `transferkit` logger; only the CLI puts those lines on stdout."""
    import logging

    from transferkit import train
    from transferkit.cli import main

    cfg = tiny_config("train.max_steps=2", "eval.baseline=false", "train.eval_every=1")
    with caplog.at_level(logging.INFO, logger="transferkit"):
        train(cfg)
    assert capsys.readouterr().out == ""
    assert any(r.message.startswith("done: ") for r in caplog.records)
    assert any(r.message.startswith("step 1: validation loss") for r in caplog.records)  # said during training
    assert main(["train", "--overwrite", str(Path(cfg.output_dir) / "config.yaml")]) == 0
    out = capsys.readouterr().out
    assert "\nstep 1: validation loss" in out and "done: " in out
