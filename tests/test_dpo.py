"""Preference training (issue 19) on the tiny model: a DPO run end to end, the reference without a second model
(the adapter switched off equals the base; cached and recomputed references train alike; full fine-tuning's
cached reference is its base), resume mid-DPO, chaining on an SFT run directory, and what is refused."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tiny import write_jsonl
from transferkit.data.synthetic import person_records, preference_pairs
from transferkit.errors import ConfigError, DataError

RIG = ("train.max_steps=8", "train.batch_size=4", "train.eval_every=4", "train.save_every=4", "eval.batch_size=8",
       "preference.beta=0.5")


@pytest.fixture()
def pref_data(tmp_path) -> dict[str, Path]:
    """Quickstart prompts with the correct record chosen and a record with one wrong field rejected; the 8 training
    pairs three times over, which the tiny random model can learn within a dozen steps."""
    splits = {split: preference_pairs(person_records(n, seed))
              for split, n, seed in (("train", 8, 1), ("validation", 8, 2), ("test", 8, 3))}
    splits["train"] *= 3
    return {split: write_jsonl(tmp_path / f"pref-{split}.jsonl", rows) for split, rows in splits.items()}


@pytest.fixture()
def dpo_config(tiny_config, pref_data):
    def make(*overrides: str):
        return tiny_config(*(f"data.{split}={path}" for split, path in pref_data.items()), *RIG, *overrides)
    return make


def events(run: str | Path, kind: str) -> list[dict]:
    lines = (Path(run) / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == kind]


def test_a_dpo_run_starts_at_log_2_and_is_judged_by_preference_accuracy_against_its_base(dpo_config):
    from transferkit import train

    cfg = dpo_config("train.max_steps=18", "train.lr=3e-2")
    summary = train(cfg)
    run = Path(cfg.output_dir)
    windows = events(run, "train")
    first, last = windows[0], windows[-1]
    # the policy is the reference at the first step: every pair's implicit reward is 0
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-4) and abs(first["reward_margin"]) < 1e-4
    late = windows[-6:]  # the last epoch: the training pairs' chosen rewards now exceed their rejected ones
    assert sum(w["loss"] for w in late) / 6 < math.log(2) - 0.05 and sum(w["reward_margin"] for w in late) > 0
    for key in ("preference_accuracy", "reward_accuracy", "chosen_logp", "rejected_logp"):
        assert key in last
    assert summary["schema"] == "preference" and summary["selection"]["metric"] == "preference_accuracy"
    comparison, base = summary["comparison"], summary["baseline"]["zero_shot"]
    assert comparison["metric"] == "preference_accuracy" and comparison["baseline_prompt"] == "zero_shot"
    assert comparison["baseline"] == base["preference_accuracy"] and comparison["tuned"] == \
        summary["test"]["preference_accuracy"]
    assert "loss" not in base  # the base is the reference: it has no reward to report
    # held-out figures against the cached reference: the reward margin is tuned − base on the same pairs
    test = summary["test"]
    assert test["reward_margin"] == pytest.approx(0.5 * (test["logp_margin"] - base["logp_margin"]), abs=1e-4)
    assert set(test["slices"]) == {"name", "city", "job"}
    predictions = [json.loads(line) for line in (run / "test_predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 8 and sum(p["match"] for p in predictions) / 8 == test["preference_accuracy"]
    assert summary["forgetting"] is not None  # forgetting is measured as for every run


def test_the_reference_with_the_adapter_switched_off_is_the_base(tiny_model_dir, pref_data):
    from transferkit.config import load_config
    from transferkit.data import load_splits
    from transferkit.evaluate.metrics import pair_log_probs
    from transferkit.methods import get_method
    from transferkit.models import load_model
    from transferkit.runtime import Runtime

    runtime = Runtime.resolve("cpu", "fp32")
    model, tokenizer, _ = load_model(str(tiny_model_dir))
    cfg = load_config(None, [f"data.train={pref_data['test']}", "method.name=lora", "method.r=4"])
    pairs = load_splits(cfg.data, tokenizer, 0).train.tokenized
    base = pair_log_probs(model, pairs, tokenizer.pad_token_id, 8, runtime)
    lora = get_method("lora")
    model = lora.apply(model, cfg.method, "causal-lm")
    torch.manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # a trained adapter: B is no longer zero
            param.data.normal_(0, 0.2)
    adapted = pair_log_probs(model, pairs, tokenizer.pad_token_id, 8, runtime)
    assert (adapted.chosen - base.chosen).abs().max() > 0.1
    with lora.disabled(model) as off:
        reference = pair_log_probs(off, pairs, tokenizer.pad_token_id, 8, runtime)
    torch.testing.assert_close(reference.chosen, base.chosen, rtol=0, atol=1e-4)
    torch.testing.assert_close(reference.rejected, base.rejected, rtol=0, atol=1e-4)


def test_a_reference_recomputed_every_step_trains_as_the_cached_one(dpo_config, tmp_path):
    from transferkit import train

    cached = train(dpo_config("preference.reference=cached", f"output_dir={tmp_path / 'cached'}"))
    live = train(dpo_config("preference.reference=adapter_off", f"output_dir={tmp_path / 'live'}"))
    stored = json.loads((tmp_path / "live" / "reference_logprobs.json").read_text())
    assert stored["train"] is None and len(stored["test"]) == 8  # held-out pairs are always cached
    for key in ("loss", "reward_margin", "preference_accuracy", "chosen_logp"):
        assert live["test"][key] == pytest.approx(cached["test"][key], rel=1e-3, abs=1e-4)
    assert [e["loss"] for e in events(tmp_path / "live", "train")] == pytest.approx(
        [e["loss"] for e in events(tmp_path / "cached", "train")], rel=1e-3)


def test_full_fine_tuning_caches_its_base_as_the_reference(dpo_config, tiny_model_dir, pref_data, tmp_path):
    from transferkit import train
    from transferkit.api import evaluate_run

    from transferkit.config import with_method

    summary = train(with_method(dpo_config("train.lr=1e-3", f"output_dir={tmp_path / 'full'}"), "full"))
    assert summary["params"]["trainable"] == summary["params"]["total"]
    stored = json.loads((tmp_path / "full" / "reference_logprobs.json").read_text())
    # measured in the run's numerics (fp32): `precision` auto is bf16 autocast on an AVX512-BF16 CPU
    base, _ = evaluate_run(str(pref_data["test"]), model=str(tiny_model_dir), precision="fp32")
    chosen = [c for c, _ in stored["test"]]
    assert sum(chosen) / len(chosen) == pytest.approx(base["metrics"]["chosen_logp"], abs=1e-3)
    assert summary["test"]["chosen_logp"] != pytest.approx(base["metrics"]["chosen_logp"], abs=1e-3)  # it trained


@pytest.mark.parametrize("method", ["lora", "full"])
def test_resume_mid_dpo_equals_the_straight_run(dpo_config, tmp_path, monkeypatch, method):
    """The resumed run reads the reference log-probabilities back rather than taking another pass (they are taken
    before the checkpoint is restored, so a second pass would give the same numbers; full fine-tuning checks it)."""
    from tiny import crash_and_resume

    from transferkit import train
    from transferkit.config import with_method

    def config(out: str):
        cfg = dpo_config("train.lr=1e-3", f"output_dir={tmp_path / out}")
        return cfg if method == "lora" else with_method(cfg, method)

    straight = train(config("straight"))
    from transferkit.train import reference

    passes, real = [], reference.pair_log_probs
    monkeypatch.setattr(reference, "pair_log_probs", lambda *a, **k: passes.append(1) or real(*a, **k))
    resumed = crash_and_resume(train, config("resumed"), monkeypatch, crash_at=6)
    assert len(passes) == 3  # train, validation and test: once, in the run that crashed
    assert resumed["resumed_from_step"] == 4
    for key in ("loss", "reward_margin", "chosen_logp", "rejected_logp", "preference_accuracy"):
        assert resumed["test"][key] == pytest.approx(straight["test"][key], rel=1e-5, abs=1e-6)
    assert events(tmp_path / "resumed", "train")[-1]["loss"] == pytest.approx(
        events(tmp_path / "straight", "train")[-1]["loss"], rel=1e-5)


def test_dpo_on_an_sft_run_directory_starts_from_the_sft_model(tiny_config, dpo_config, pref_data, tiny_model_dir,
                                                               tmp_path):
    from transferkit import train
    from transferkit.api import evaluate_run
    from transferkit.runs import find_runs

    sft = tmp_path / "sft"
    train(tiny_config("train.max_steps=4", "eval.baseline=false", "eval.exact_match=false", f"output_dir={sft}"))
    summary = train(dpo_config(f"model={sft}", f"output_dir={tmp_path / 'dpo'}"))
    assert (sft / "merged" / "config.json").is_file() and (sft / "merged" / "merge_report.json").is_file()
    # the DPO run's baseline is the SFT model (its adapter on its base), not the base the SFT run started from
    of_sft, _ = evaluate_run(str(pref_data["test"]), run_dir=str(sft), precision="fp32")  # the runs' numerics
    base = summary["baseline"]["zero_shot"]
    assert base["chosen_logp"] == pytest.approx(of_sft["metrics"]["chosen_logp"], abs=1e-3)
    assert base["preference_accuracy"] == of_sft["metrics"]["preference_accuracy"]
    of_tiny, _ = evaluate_run(str(pref_data["test"]), model=str(tiny_model_dir), precision="fp32")
    assert base["chosen_logp"] != pytest.approx(of_tiny["metrics"]["chosen_logp"], abs=1e-2)
    assert summary["model"] == str(sft)  # config.yaml names the run: reloading resolves it to its merged folder
    rows = {row.path: row for row in find_runs(tmp_path)}
    assert rows["dpo"].headline.startswith("preference_accuracy")
    # the DPO run is a normal run of its base: it reloads on the SFT model and merges within the fp32 tolerance
    from transferkit.api import merge

    report = merge(tmp_path / "dpo", tmp_path / "dpo-merged")
    assert report["within_tolerance"] and report["base"] == str(sft)


@pytest.mark.parametrize("method, override, words", [
    ("lora", "train.pack_tokens=64", "cannot be packed"),
    ("lora", "forgetting.replay=0.2", "no rejected answer"),
    ("full", "preference.reference=adapter_off", "no off switch"),
])
def test_what_preference_training_refuses(dpo_config, method, override, words):
    from transferkit import train
    from transferkit.config import with_method

    cfg = dpo_config(override)
    with pytest.raises(ConfigError, match=words):
        train(cfg if method == "lora" else with_method(cfg, method))
    assert not Path(cfg.output_dir).exists()


def test_a_prompt_that_fills_the_context_is_an_error_naming_its_line(dpo_config, tmp_path):
    from transferkit import train

    rows = preference_pairs(person_records(6, 1))
    rows[3]["prompt"] = "word " * 300
    path = write_jsonl(tmp_path / "long.jsonl", rows)
    with pytest.raises(DataError) as error:
        train(dpo_config(f"data.train={path}", "data.max_length=128"))
    assert error.value.line == 4 and error.value.field == "prompt" and "no token of the chosen" in str(error.value)
    assert not Path(dpo_config().output_dir).exists()  # nothing written


def test_the_chosen_answers_falling_is_flagged():
    from transferkit.train.finish import chosen_falls

    windows = [{"event": "train", "chosen_logp": v} for v in (-20.0, -21.5, -23.0)]
    assert "fell during training" in chosen_falls(windows, {"chosen_reward": -0.4}, 0.0)
    assert "set preference.sft_weight" in chosen_falls(windows, {"chosen_reward": -0.4}, 0.0)
    assert "raise preference.sft_weight (now 1)" in chosen_falls(windows, {"chosen_reward": -0.4}, 1.0)
    assert chosen_falls(windows, {"chosen_reward": 0.1}, 0.0) is None          # held-out chosen answers rose
    assert chosen_falls(windows[::-1], {"chosen_reward": -0.4}, 0.0) is None   # training windows rose


@pytest.mark.parametrize("method", ["adapter", "dora", "freeze", "full", "ia3", "lora", "qlora", "rslora"])
def test_every_method_that_starts_at_its_base_trains_on_preferences(dpo_config, method, tmp_path):
    """Each method's first step starts from its reference (loss log 2: the `starts_at_base` trait holds), and the
    held-out rewards move."""
    from transferkit import train
    from transferkit.config import with_method

    cfg = with_method(dpo_config("train.max_steps=2", "train.eval_every=0", "eval.baseline=false",
                                 "forgetting.reference=none", f"output_dir={tmp_path / method}"), method)
    summary = train(cfg)
    first = events(tmp_path / method, "train")[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-3), method
    assert summary["test"]["reward_margin"] != 0 and summary["test"]["chosen_reward"] != 0


@pytest.mark.parametrize("method, words", [("probe", "cannot train a causal-lm task"),
                                           ("prefix", "does not begin at its reference"),
                                           ("prompt", "does not begin at its reference")])
def test_methods_that_do_not_fit_preferences_are_refused_with_the_reason(dpo_config, method, words):
    from transferkit import train
    from transferkit.config import with_method

    with pytest.raises(ConfigError, match=words):
        train(with_method(dpo_config(), method))


def test_auto_picks_the_reference_with_fewer_forward_passes_and_records_it(dpo_config, tmp_path):
    """24 training pairs in batches of 4 are 6 steps an epoch: 3 steps recompute 12 references instead of caching
    24, 8 steps cache them; full fine-tuning, with no off switch, always caches."""
    import yaml

    from transferkit import train
    from transferkit.config import with_method

    for steps, method, expected in ((3, "lora", "adapter_off"), (8, "lora", "cached"), (3, "full", "cached")):
        out = tmp_path / f"{method}-{steps}"
        cfg = dpo_config(f"train.max_steps={steps}", "train.eval_every=0", "eval.baseline=false",
                         "forgetting.reference=none", f"output_dir={out}")
        train(with_method(cfg, method) if method != "lora" else cfg)
        assert yaml.safe_load((out / "config.yaml").read_text())["preference"]["reference"] == expected
        stored = json.loads((out / "reference_logprobs.json").read_text())
        assert (stored["train"] is None) == (expected == "adapter_off")


def test_cost_counts_both_sequences_of_a_pair_and_the_reference(dpo_config, pref_data):
    from transferkit.cost import custom_hardware, estimate
    from transferkit.data.readers import read_rows
    from transferkit.data.schema import to_example
    from transferkit.data.tokenize import tokenize_preference
    from transferkit.models import load_tokenizer, resolve_model

    hardware = custom_hardware(memory_gb=64, tflops=1, price_per_hour=2.0, mfu=0.5, device="cpu")
    cfg = dpo_config("train.micro_batch_size=2")
    tokenizer = load_tokenizer(resolve_model(cfg.model))
    sides = [side for row in read_rows(str(pref_data["train"]))
             for side in tokenize_preference(tokenizer, to_example(row, "preference"))]
    tokens = [len(ids) for ids, _ in sides]
    for steps, read in ((8, sum(tokens)), (3, 3 * 4 * 2 * sum(tokens) / len(tokens))):  # cached / recomputed
        cost = estimate(dpo_config("train.micro_batch_size=2", f"train.max_steps={steps}"), hardware)
        work = cost.workload
        assert work.micro_batch == 4 and work.accumulation == 2 and work.longest == max(tokens)
        assert work.reference_tokens == pytest.approx(read, abs=1)
        step_seconds = cost.flops_per_step / (1e12 * 0.5)
        assert cost.seconds == pytest.approx(steps * step_seconds + 2 * cost.params_total * work.reference_tokens
                                             / (1e12 * 0.5))


def test_a_preference_report_shows_both_answers_and_its_numbers_are_the_summary(dpo_config, tmp_path):
    from browser import check_numbers_are_the_summary

    from transferkit import train

    summary = train(dpo_config(f"output_dir={tmp_path / 'run'}"))
    page = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    check_numbers_are_the_summary(page, summary, ("comparison.tuned", "comparison.baseline", "test.preference_accuracy",
                                                  "test.reward_margin", "test.chosen_logp",
                                                  "baseline.zero_shot.logp_margin"))
    assert "answer log-probability (train)" in page and page.count("<svg") >= 3
