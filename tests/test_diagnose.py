"""Where did the network change: CKA's properties, probes that find a planted signal, the rank of weight
updates (LoRA's from its factors), and `diagnose` / `probe` on tiny models end to end."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from transferkit.diagnose.similarity import centered, gram, hsic_unbiased, linear_cka
from transferkit.diagnose.weights import lora_singular_values, spectrum, weight_changes

rng = np.random.default_rng(0)


def test_cka_is_one_on_itself_and_invariant_to_rotation_and_scale():
    x = rng.normal(size=(300, 20))
    rotation, _ = np.linalg.qr(rng.normal(size=(20, 20)))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 3.7 * x @ rotation) == pytest.approx(1.0)
    assert linear_cka(x, x @ rotation, debiased=True) == pytest.approx(1.0)
    # not invariant to an arbitrary linear map: stretch one direction a lot
    stretch = np.eye(20)
    stretch[0, 0] = 50.0
    assert linear_cka(x, x @ stretch) < 0.5


def test_cka_of_independent_features_is_near_zero_at_large_n_and_biased_at_small_n():
    assert linear_cka(rng.normal(size=(4000, 5)), rng.normal(size=(4000, 5))) < 0.01
    small = [(linear_cka(a, b), linear_cka(a, b, debiased=True))
             for a, b in ((rng.normal(size=(20, 50)), rng.normal(size=(20, 50))) for _ in range(200))]
    plain, debiased = np.mean(small, 0)
    assert plain > 0.5 and abs(debiased) < 0.03  # the plain estimator's bias at n=20, p=50; the debiased one's none


def test_unbiased_hsic_averages_to_the_population_value():
    """x ~ N(0, I₄), y = A x + noise: the population HSIC of linear kernels is ‖Cov(y, x)‖²_F = ‖A‖²_F (by hand,
    not by the code under test). The unbiased estimator's mean over many small samples hits it; the plain
    (biased) estimator's misses it."""
    a = np.array([[1.0, 0.5, 0, 0], [0, 1.0, 0, 0], [0, 0, 0.3, 0]])
    truth = float(np.sum(a ** 2))
    unbiased, plain = [], []
    for _ in range(3000):
        x = rng.normal(size=(8, 4))
        y = x @ a.T + rng.normal(size=(8, 3))
        k, l = gram(x), gram(y)  # noqa: E741
        unbiased.append(hsic_unbiased(k, l))
        plain.append(np.sum(centered(k) * centered(l)) / (8 - 1) ** 2)
    assert np.mean(unbiased) == pytest.approx(truth, rel=0.05)
    assert abs(np.mean(plain) - truth) > 0.1 * truth


def test_a_probe_finds_the_layer_where_the_signal_was_planted():
    from transferkit.diagnose.diagnosis import probe_curve

    labels = ["a", "b"] * 60
    states = rng.normal(size=(120, 5, 8))
    states[:, 3, :2] += 1.2 * np.array([1.0 if y == "a" else -1.0 for y in labels])[:, None]  # only layer 3 knows
    curve = probe_curve(states, labels, "probes")
    assert int(np.argmax(curve)) == 3 and curve[3] > 0.8 and max(curve[:3] + curve[4:]) < 0.7


def test_effective_rank_of_a_constructed_rank_r_update():
    u, _ = torch.linalg.qr(torch.randn(64, 64, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(32, 32, dtype=torch.float64))
    for r in (1, 3, 8):
        delta = u[:, :r] @ v[:, :r].T * 0.2       # r equal singular values
        effective, rank_90 = spectrum(torch.linalg.svdvals(delta))
        assert effective == pytest.approx(r, abs=1e-6) and rank_90 == r
    skewed = u[:, :4] @ torch.diag(torch.tensor([10.0, 1, 0.1, 0.01], dtype=torch.float64)) @ v[:, :4].T
    effective, rank_90 = spectrum(torch.linalg.svdvals(skewed))
    assert 1 < effective < 2 and rank_90 == 1      # 10² / (10² + 1 + …) > 0.9
    assert spectrum(torch.zeros(5)) == (0.0, 0)


def test_lora_singular_values_from_the_factors_equal_the_products():
    b, a = torch.randn(48, 4), torch.randn(4, 40)
    dense = torch.linalg.svdvals(0.5 * b.double() @ a.double())[:4]
    assert torch.allclose(lora_singular_values(b, a, 0.5), dense, rtol=1e-9)


def lora_model(r: int = 4):
    """A tiny Llama with LoRA on every default target and random B (LoRA starts at ΔW = 0)."""
    from tiny import tiny_llama

    from transferkit.methods import get_method
    from transferkit.options import from_dict

    base = tiny_llama(64)
    method = get_method("lora")
    tuned = method.apply(copy.deepcopy(base), from_dict(method.config_cls, {"name": "lora", "r": r}), "causal-lm")
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return base, tuned, method


def test_lora_updates_have_rank_at_most_r_and_the_factor_route_matches_the_merged_weights():
    base, tuned, method = lora_model(r=4)
    from_factors = {c.name: c for c in weight_changes(base, tuned)}
    merged = {c.name: c for c in weight_changes(base, method.merge(copy.deepcopy(tuned)))}
    adapted = [c for c in from_factors.values() if c.relative > 0]
    assert adapted and all(c.rank_90 <= 4 and c.effective_rank <= 4 + 1e-6 for c in adapted)
    for name, c in from_factors.items():  # the dense difference of the merged model: the same numbers
        assert merged[name].relative == pytest.approx(c.relative, rel=1e-4, abs=1e-9)
        assert merged[name].rank_90 == c.rank_90


def test_an_untouched_model_has_cka_one_everywhere_and_no_weight_change(tokenizer):
    from transferkit.diagnose import Sample, diagnose
    from transferkit.runtime import Runtime

    from tiny import tiny_llama

    base = tiny_llama(len(tokenizer))
    texts = [f"sample text number {i} about {topic}" for i, topic in enumerate(["rain", "goal", "soup", "train"] * 5)]
    sample = Sample("made up", texts, ["w", "s", "f", "t"] * 5)
    result = diagnose(base, copy.deepcopy(base), tokenizer, sample, Runtime.resolve("cpu", "fp32"), pooling="last")
    assert result["cka"]["by_layer"] == pytest.approx([1.0] * len(result["layers"]))
    assert result["probes"]["base"] == result["probes"]["tuned"]
    matrices = result["weights"]["matrices"]
    assert matrices and all(m["relative"] == 0 and m["effective_rank"] == 0 for m in matrices)
    assert result["suggested_freeze_bottom"] == base.config.num_hidden_layers
    assert "No block weight changed" in result["reading"]


@pytest.fixture()
def classifier_run(tiny_config, topics, tiny_bert_dir):
    """A tiny BERT classifier fully fine-tuned on the topics, diagnosed at the end of training."""
    from transferkit import train

    cfg = tiny_config(f"model={tiny_bert_dir}", "forgetting.reference=none", "method={name: full}",
                      f"data.train={topics['train']}", f"data.validation={topics['validation']}",
                      f"data.test={topics['test']}", "train.max_steps=12", "train.lr=2e-3", "train.eval_every=0",
                      "train.save_every=0", "eval.baseline=false", "diagnose.enabled=true")
    return cfg, train(cfg)


def test_training_with_diagnose_enabled_writes_diagnostics_shown_in_the_report(classifier_run):
    from browser import find_chromium, lookup, numbers_in, open_page

    cfg, summary = classifier_run
    run = Path(cfg.output_dir)
    result = json.loads((run / "diagnostics" / "diagnostics.json").read_text())
    blocks = 2  # the tiny BERT's
    assert result["layers"] == list(range(blocks + 1)) and result["examples"] == 16
    assert all(-1e-6 <= v <= 1 + 1e-6 for v in result["cka"]["by_layer"]) and min(result["cka"]["by_layer"]) < 1
    assert len(result["probes"]["tuned"]) == blocks + 1
    changed = [m for m in result["weights"]["matrices"] if m["relative"] > 0]
    assert changed and {m["layer"] for m in changed} == set(range(blocks))  # full fine-tuning moved every block
    assert "diagnose" in summary["timings_s"]
    html = (run / "report.html").read_text(encoding="utf-8")
    assert "Where the network changed" in html and result["reading"].split(";")[0] in html
    found = dict(numbers_in(html))
    assert found and all(value == lookup({"diagnostics": result}, key) for key, value in found.items()
                         if key.startswith("diagnostics."))
    assert any(key.startswith("diagnostics.") for key in found)
    if find_chromium() is None:
        pytest.skip("no Chromium here: `bash scripts/setup.sh --browser` installs Debian's chromium")
    dom, console = open_page(run / "report.html", Path(__file__).resolve().parents[1] / "test-artifacts" /
                             "report-diagnostics.png")
    shown = [(key, value) for key, value in numbers_in(dom) if key.startswith("diagnostics.")]
    assert console == [] and shown and all(value == lookup({"diagnostics": result}, key) for key, value in shown)


def test_diagnose_and_probe_commands(classifier_run, topics, tiny_bert_dir, tmp_path, capsys):
    from tiny import write_jsonl

    from transferkit.cli import main

    cfg, _ = classifier_run
    run = Path(cfg.output_dir)
    assert main(["diagnose", str(run), "--layers", "0,2", "--debiased", "--max-examples", "12"]) == 0
    out = capsys.readouterr().out
    result = json.loads((run / "diagnostics" / "diagnostics.json").read_text())
    assert result["layers"] == [0, 2] and result["cka"]["debiased"] and result["examples"] == 12
    assert "CKA base/tuned" in out and result["reading"] in out
    assert main(["probe", "--model", str(tiny_bert_dir), "--data", str(topics["train"]), "--out",
                 str(tmp_path / "probe")]) == 0
    curve = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert len(curve["probe"]) == 3 and (tmp_path / "probe" / "probe.png").is_file()
    assert "majority class: 0.250" in capsys.readouterr().out
    # bad input: one line, exit 2
    assert main(["diagnose", str(run), "--layers", "0,9"]) == 2
    assert "--layers '0,9': give 'all' or layer numbers within 0..2" in capsys.readouterr().err
    rows = [{"text": "a b", "label": "x", "topic": "t"}, {"text": "c d", "label": "y"}]
    write_jsonl(tmp_path / "missing.jsonl", rows)
    assert main(["probe", "--model", str(tiny_bert_dir), "--data", str(tmp_path / "missing.jsonl"),
                 "--label-column", "topic"]) == 2
    assert "missing.jsonl:2: field 'topic': no value to probe" in capsys.readouterr().err
    assert main(["probe", "--model", str(tiny_bert_dir), "--data", str(tmp_path / "missing.jsonl")]) == 2
    assert "probes need at least two labels with two examples each" in capsys.readouterr().err


def test_a_block_moves_by_its_matrices_together_and_untouched_ones_count_as_unchanged():
    from transferkit.diagnose.weights import Change, by_layer

    moved = Change("l.0.q.weight", 0, "q", 0.75, 3.0, 4.0, 2.5, 2, (4, 4))
    kept = Change("l.0.k.weight", 0, "k", 0.0, 0.0, 3.0, 0.0, 0, (4, 4))
    (row,) = by_layer([moved, kept])
    assert row["relative"] == pytest.approx(3 / 5) and (row["changed"], row["matrices"]) == (1, 2)  # √(9)/√(16+9)
    assert row["effective_rank"] == 2.5 and row["rank_90"] == 2  # the changed matrix's, not a median with zeros


def test_a_layer_constant_across_examples_has_undefined_cka_not_a_crash():
    """Last-token pooling over prompts that all end in the same token: the embedding layer is one vector for every
    example, so CKA there is undefined (None in the JSON, 'undefined' in the reading), and the rest still reads."""
    from transferkit.diagnose.diagnosis import reading, unchanged_bottom
    from transferkit.diagnose.similarity import cka_matrix

    states = rng.normal(size=(30, 3, 4))
    states[:, 0] = 1.0  # layer 0 constant
    matrix = cka_matrix(states, states)
    assert np.isnan(matrix[0, 0]) and matrix[1, 1] == pytest.approx(1.0)
    result = {"layers": [0, 1, 2], "cka": {"by_layer": [None, 0.995, 0.5]},
              "weights": {"by_layer": [], "matrices": []}, "suggested_freeze_bottom": unchanged_bottom([0, 1, 2],
                                                                                                 [None, 0.995, 0.5])}
    text = reading(result)
    assert result["suggested_freeze_bottom"] == 1 and "CKA is undefined at layer 0" in text
    assert "changed most at layers 2 (CKA 0.500), 1 (CKA 0.995)" in text


def test_diagnose_a_qlora_run_reads_its_lora_factors_and_skips_the_4bit_weights(tiny_config, tmp_path):
    from tiny import save_tiny_model_folder

    from transferkit import train
    from transferkit.api import diagnose
    from transferkit.options import DiagnoseConfig

    folder = save_tiny_model_folder(tmp_path / "llama64", family="llama")
    cfg = tiny_config(f"model={folder}", "method={name: qlora, r: 4}", "train.max_steps=3", "train.eval_every=0",
                      "train.save_every=0", "eval.baseline=false", "forgetting.reference=none")
    train(cfg)
    result = diagnose(cfg.output_dir, DiagnoseConfig(max_examples=8), precision="fp32")
    changed = [m for m in result["weights"]["matrices"] if m["delta_norm"] > 0]
    assert changed and all(m["rank_90"] <= 4 for m in changed)
    assert len(changed) == len(result["weights"]["matrices"])  # the packed 4-bit weights are not compared
    blocks = json.loads((folder / "config.json").read_text())["num_hidden_layers"]
    assert len(result["cka"]["by_layer"]) == blocks + 1  # the embeddings and every block


def test_a_bad_diagnose_label_column_is_refused_before_training(tiny_config, tmp_path):
    from transferkit import train
    from transferkit.errors import DataError

    cfg = tiny_config("diagnose.enabled=true", "diagnose.label_column=domain")
    with pytest.raises(DataError, match=r":1: field 'domain': no value to probe"):
        train(cfg)
    assert not Path(cfg.output_dir).exists()  # nothing written: refused before the run directory


def test_diagnose_in_bf16_reads_the_base_in_the_tuned_models_weight_storage(tiny_config):
    """Under bf16 precision training keeps frozen weights in bf16 (`train.frozen_bf16`); diagnose loads the base
    into the same storage, so a matrix LoRA never adapted has not moved (rather than by bf16's rounding, ~1e-3 of
    ‖W‖) and the embeddings' representation is the same (CKA 1 at layer 0)."""
    from transferkit import train
    from transferkit.api import diagnose
    from transferkit.options import DiagnoseConfig

    cfg = tiny_config("train.precision=bf16", "train.frozen_bf16=true", "train.max_steps=3", "train.eval_every=0",
                      "train.save_every=0", "eval.baseline=false", "forgetting.reference=none")
    train(cfg)
    result = diagnose(cfg.output_dir, DiagnoseConfig(max_examples=8, pooling="mean"), precision="bf16")
    targets = set(json.loads((Path(cfg.output_dir) / "adapter" / "adapter_config.json").read_text())["target_modules"])
    matrices = result["weights"]["matrices"]
    untouched = [m for m in matrices if m["module"] not in targets]
    assert untouched and all(m["delta_norm"] == 0 for m in untouched)
    assert all(m["delta_norm"] > 0 and m["rank_90"] <= 4 for m in matrices if m["module"] in targets)
    assert result["cka"]["by_layer"][0] == pytest.approx(1.0, abs=1e-9)
