"""Forgetting and its mitigations: the measure, EWC / L2-SP penalties, replay mixing."""

import json
from pathlib import Path

import pytest
import torch

from transferkit.errors import ConfigError
from transferkit.runtime import CPU
from transferkit.data.general import general_paragraphs, probe_sentences
from transferkit.evaluate.forgetting import forgetting, general_ability
from transferkit.train.regularizers import AnchorPenalty, diagonal_fisher, ewc_penalty, l2sp_penalty
from transferkit.train.replay import replay_sequences, replay_units


def test_reference_and_pool_are_disjoint_halves_of_every_topic():
    reference, pool = general_paragraphs("reference"), general_paragraphs("pool")
    assert len(reference) == len(pool) == 24
    assert not {r["text"] for r in reference} & {p["text"] for p in pool}
    topics = {r["topic"] for r in reference}
    assert topics == {p["topic"] for p in pool} and len(topics) == 8
    sentences, labels = probe_sentences()
    assert len(sentences) == len(labels) > 70 and set(labels) == topics


def _r_serialized(strings: list[str | None], version: int = 3) -> bytes:
    """A character vector in R's XDR serialization, built by hand from the format's description."""
    import struct

    out = b"X\n" + struct.pack(">iii", version, 0x040201, 0x030500)
    if version == 3:
        out += struct.pack(">i", 5) + b"UTF-8"
    out += struct.pack(">ii", 16, len(strings))
    for text in strings:
        data = None if text is None else text.encode("utf-8")
        out += struct.pack(">ii", 0x00040009, -1) if data is None else struct.pack(">ii", 0x00040009, len(data)) + data
    return out


@pytest.mark.parametrize("version", [2, 3])
def test_r_lazy_load_entries_read_back(version):
    import struct
    import zlib

    from transferkit.data.austen import r_entries, r_strings

    first, second = ["PERSUASION", "", "Sir Walter Elliot, of Kellynch Hall…", None], ["Émma", "by Jane Austen"]
    database = b"".join(struct.pack(">I", len(blob)) + zlib.compress(blob)
                        for blob in (_r_serialized(first, version), _r_serialized(second, version)))
    assert [r_strings(entry) for entry in r_entries(database)] == [first, second]
    with pytest.raises(ValueError, match="not a character vector"):
        r_strings(_r_serialized([], version)[:-8] + struct.pack(">ii", 19, 0))  # a list (VECSXP), not strings


def test_the_reference_is_austen_and_disjoint_from_the_pool():
    from transferkit.data.austen import austen_file
    from transferkit.data.general import describe_reference, general_texts

    if austen_file() is None:
        pytest.skip("Debian's r-cran-janeaustenr is not extracted here (scripts/setup.sh does it)")
    reference, validation = general_texts("general", "reference"), general_texts("general-validation", "reference")
    pool = general_texts("general", "pool")
    assert sum(len(e.text.split()) for e in reference) >= 16_000 and "Persuasion" in describe_reference("general")
    assert reference[0].text.startswith("Sir Walter Elliot, of Kellynch Hall")
    assert sum(len(e.text.split()) for e in validation) >= 8_000
    texts = [{e.text for e in part} for part in (reference, validation, pool)]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])


def _weights():
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    fisher = [torch.rand_like(p) for p in layer.parameters()]
    return layer, fisher


def test_ewc_penalty_is_zero_at_the_anchor_and_quadratic_in_the_step():
    layer, fisher = _weights()
    penalty = ewc_penalty(layer, 5.0, fisher)
    assert float(penalty.value()) == 0.0
    direction = [torch.randn_like(p) for p in layer.parameters()]

    def moved(t: float) -> float:
        with torch.no_grad():
            for p, a, d in zip(layer.parameters(), penalty.anchors, direction):
                p.copy_(a + t * d)
        return float(penalty.value())

    expected = 5.0 * sum(float((f * d * d).sum()) for f, d in zip(fisher, direction))  # λ Σ F δ²
    assert moved(1.0) == pytest.approx(expected, rel=1e-6)
    assert moved(2.0) == pytest.approx(4 * expected, rel=1e-6) and moved(0.5) == pytest.approx(expected / 4, rel=1e-6)


def test_penalty_gradient_matches_autograd():
    layer, fisher = _weights()
    penalty = ewc_penalty(layer, 3.0, fisher)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p))
    value = penalty.add_gradient()
    ours = [p.grad.clone() for p in layer.parameters()]
    for p in layer.parameters():
        p.grad = None
    reference = sum(3.0 * (f * (p - a) ** 2).sum() for p, a, f in zip(layer.parameters(), penalty.anchors, fisher))
    reference.backward()
    assert float(value) == pytest.approx(float(reference), rel=1e-6)
    for a, p in zip(ours, layer.parameters()):
        torch.testing.assert_close(a, p.grad)


def test_l2sp_is_half_alpha_squared_distance():
    layer, _ = _weights()
    penalty = l2sp_penalty(layer, 0.4)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1)
    n = sum(p.numel() for p in layer.parameters())
    assert float(penalty.value()) == pytest.approx(0.4 / 2 * n * 0.01, rel=1e-6)


def test_frozen_parameters_carry_no_penalty():
    layer, _ = _weights()
    layer.bias.requires_grad_(False)
    assert [p is layer.weight for p in l2sp_penalty(layer, 1.0).params] == [True]


def test_diagonal_fisher_is_the_mean_squared_per_sequence_gradient(tiny_model_dir, tokenizer):
    from transferkit.data.batching import collate
    from transferkit.data.tokenize import Tokenized
    from transferkit.models import load_model
    from transferkit.objectives import OBJECTIVES
    from transferkit.objectives.loss import token_loss_sum

    model, tok, _ = load_model(str(tiny_model_dir))
    seqs = [Tokenized(ids, ids, "t") for ids in (tok(t)["input_ids"] for t in ["hello world", "the quick brown fox"])]
    fisher = diagonal_fisher(model, seqs, OBJECTIVES["causal-lm"], tok.pad_token_id, CPU)
    params = [p for p in model.parameters() if p.requires_grad]
    squares = [torch.zeros_like(p) for p in params]
    for seq in seqs:
        model.zero_grad()
        loss, _ = token_loss_sum(model, collate([seq], tok.pad_token_id))
        loss.backward()
        for s, p in zip(squares, params):
            s += p.grad ** 2
    for f, s in zip(fisher, squares):
        torch.testing.assert_close(f, s / 2)
    assert any(float(f.sum()) > 0 for f in fisher)


def test_replay_adds_exactly_the_share_of_labelled_tokens():
    from transferkit.data.tokenize import Tokenized

    assert replay_units(300, 0.0) == 0 and replay_units(300, 0.25) == 100 and replay_units(90, 0.5) == 90
    pool = [Tokenized(list(range(n)), list(range(n)), f"g:{i}") for i, n in enumerate([11, 21, 31, 41])]  # 10..40 units
    chosen = replay_sequences(pool, step=7, units=45, seed=1)
    assert sum(t.num_labels for t in chosen) == 45 and chosen[-1].truncated  # exact: the last one is cut
    assert chosen == replay_sequences(pool, 7, 45, seed=1)  # a pure function of (seed, step): resumable
    assert [t.where for t in replay_sequences(pool, 8, 100, seed=1)] != [t.where for t in replay_sequences(
        pool, 7, 100, seed=1)]
    assert sum(t.num_labels for t in replay_sequences(pool, 0, 500, seed=0)) == 500  # a small pool cycles
    assert replay_sequences(pool, 0, 0, seed=0) == []


def test_training_keeps_its_task_examples_and_adds_the_stated_share_of_general_tokens(tiny_config, monkeypatch):
    from transferkit import train
    from transferkit.train import loop

    seen: list[tuple[int, int, int]] = []  # per step: task sequences, task tokens, general tokens
    real_step = loop.optimizer_step

    def recording_step(parts, items, *args):
        general = [t for t in items if t.where.startswith("<packaged general text, pool>")]
        task = [t for t in items if t not in general]
        seen.append((len(task), sum(t.num_labels for t in task), sum(t.num_labels for t in general)))
        return real_step(parts, items, *args)

    monkeypatch.setattr(loop, "optimizer_step", recording_step)
    cfg = tiny_config("train.max_steps=8", "train.batch_size=8", "forgetting.replay=0.25", "eval.baseline=false")
    train(cfg)
    assert len(seen) == 8 and all(n == 8 for n, _, _ in seen)  # the task budget of a run without replay
    assert all(general == round(task * 0.25 / 0.75) > 0 for _, task, general in seen)  # 25 % of the loss terms
    events = [json.loads(line) for line in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    assert [e["replayed_tokens"] for e in events if e["event"] == "train"] == [g for _, _, g in seen]


def _distance_from_start(run_dir: Path, start: dict) -> float:
    from safetensors.torch import load_file

    trained = load_file(str(run_dir / "adapter" / "trainable.safetensors"))
    return sum(float((trained[k].float() - start[k].float()).pow(2).sum()) for k in trained)


@pytest.mark.parametrize("mitigation", ["forgetting.l2sp=2000", "forgetting.ewc=1e6"])
def test_penalties_hold_weights_near_the_start(tiny_config, tiny_model_dir, tmp_path, mitigation):
    from safetensors.torch import load_file

    from transferkit import train

    start = load_file(str(Path(tiny_model_dir) / "model.safetensors"))
    common = ["method={name: full}", "train.max_steps=6", "train.lr=3e-3", "eval.baseline=false",
              "eval.exact_match=false", "train.warmup_ratio=0"]
    plain = train(tiny_config(*common, f"output_dir={tmp_path / 'plain'}"))
    held = train(tiny_config(*common, mitigation, f"output_dir={tmp_path / 'held'}"))
    assert held["mitigations"] != plain["mitigations"]
    assert _distance_from_start(tmp_path / "held", start) < 0.7 * _distance_from_start(tmp_path / "plain", start)
    events = [json.loads(line) for line in (tmp_path / "held" / "metrics.jsonl").read_text().splitlines()]
    assert all(e["penalty"] >= 0 for e in events if e["event"] == "train")
    assert [e["penalty"] for e in events if e["event"] == "train"][0] == 0.0  # the first step starts at θ₀


def test_forgetting_is_zero_for_an_untouched_model(tiny_config):
    from transferkit import train

    # LoRA starts as the identity (B = 0) and a learning rate of 1e-12 leaves it there.
    summary = train(tiny_config("train.lr=1e-12", "eval.baseline=false", "eval.exact_match=false"))
    assert summary["forgetting"]["forgetting"] == pytest.approx(0.0, abs=1e-6)
    assert summary["general"]["base"]["tokens"] > 1000  # measured on real text, not an empty set


@pytest.mark.parametrize("method", ["lora", "adapter", "full"])
def test_forgetting_compares_base_and_tuned_in_the_same_numerics(tiny_config, method):
    """With bf16 precision the frozen weights are stored in bf16 for training; the base is measured with the same
    storage (its adapted model, method switched off), so an adapter that did not move has forgotten nothing."""
    from transferkit import evaluate_run, train

    cfg = tiny_config(f"method={{name: {method}}}", "train.lr=1e-12", "train.precision=bf16", "train.frozen_bf16=true",
                      "eval.baseline=false", "eval.exact_match=false")
    summary = train(cfg)
    assert summary["precision"] == "bf16"
    assert summary["forgetting"]["forgetting"] == pytest.approx(0.0, abs=1e-6)
    # `eval` measures the same two models the same way (weight storage, attention kernel): the same numbers,
    # not merely the same verdict.
    result, _ = evaluate_run(cfg.data.test, run_dir=cfg.output_dir, precision="bf16", eval_cfg=cfg.eval)
    assert result["general"]["base"]["loss"] == summary["general"]["base"]["loss"]
    assert result["general"]["evaluated"]["loss"] == summary["general"]["tuned"]["loss"]
    assert result["forgetting"]["forgetting"] == summary["forgetting"]["forgetting"]


def test_forgetting_grows_when_the_model_changes(tiny_model_dir):
    from transferkit.models import load_model

    model, tok, _ = load_model(str(tiny_model_dir))
    base = general_ability(model, tok, "causal-lm", "general", CPU)
    assert forgetting(base, general_ability(model, tok, "causal-lm", "general", CPU))["forgetting"] == 0.0
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    assert forgetting(base, general_ability(model, tok, "causal-lm", "general", CPU))["forgetting"] > 0.05


def test_probe_drop_is_zero_for_the_same_encoder(tiny_bert_dir):
    from transferkit.models import load_model

    model, tok, _ = load_model(str(tiny_bert_dir), task="classification", labels=["a", "b"])
    first = general_ability(model, tok, "classification", "general", CPU)
    assert 0.0 <= first["probe_accuracy"] <= 1.0
    assert forgetting(first, general_ability(model, tok, "classification", "general", CPU))["forgetting"] == 0.0


def test_mitigations_that_need_general_text_refuse_classification(tiny_config, tiny_bert_dir, topics):
    from transferkit import train

    cfg = tiny_config(f"model={tiny_bert_dir}", "forgetting.reference=general", f"data.train={topics['train']}", f"data.validation={topics['validation']}",
                      f"data.test={topics['test']}", "forgetting.ewc=10")
    with pytest.raises(ConfigError, match="forgetting.ewc"):
        train(cfg)


def test_anchor_penalty_with_scalar_weights_matches_closed_form():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    penalty = AnchorPenalty("x", [p], [0.5])
    with torch.no_grad():
        p.add_(torch.tensor([1.0, -2.0]))
    assert float(penalty.add_gradient()) == pytest.approx(0.5 * (1 + 4))
    torch.testing.assert_close(p.grad, torch.tensor([1.0, -2.0]))
