"""`transferkit recommend`: the rules, the pricing of the ladder, and a recipe that trains as written."""

from pathlib import Path

import pytest

from transferkit.errors import UserError
from transferkit.recommend import (FEW_EXAMPLES, LARGE_SHIFT, PROBE_ENOUGH, PROBE_WEAK, SMALL_DATA, LADDER,
                                   DataFacts, Shift, needed_rung, rank)


def _facts(task: str, examples: int) -> DataFacts:
    schema = "classification" if task == "classification" else "instruction"
    return DataFacts(schema, task, examples, examples * 50, None, 0)


def _ppl(ratio: float) -> Shift:
    return Shift("perplexity ratio", ratio, ratio >= LARGE_SHIFT, "test")


def _probe(accuracy: float) -> Shift:
    return Shift("probe accuracy", accuracy, accuracy < PROBE_WEAK, "test")


@pytest.mark.parametrize("task, examples, shift, forgetting, rung", [
    ("classification", 500, _probe(PROBE_ENOUGH), "any", "probe"),
    ("classification", 500, _probe((PROBE_ENOUGH + PROBE_WEAK) / 2), "any", "LoRA r=8"),
    ("classification", 500, _probe(PROBE_WEAK - 0.1), "any", "LoRA r=16"),
    ("classification", SMALL_DATA, _probe(PROBE_WEAK - 0.1), "any", "full, LLRD 0.9"),
    ("classification", SMALL_DATA, _probe(PROBE_WEAK - 0.1), "low", "LoRA r=16"),
    ("causal-lm", 500, _ppl(LARGE_SHIFT - 0.5), "any", "LoRA r=8"),
    ("causal-lm", 500, _ppl(LARGE_SHIFT), "any", "LoRA r=16"),
    ("causal-lm", SMALL_DATA - 1, _ppl(LARGE_SHIFT + 1), "any", "LoRA r=16"),
    ("causal-lm", SMALL_DATA, _ppl(LARGE_SHIFT + 1), "any", "full, LLRD 0.9"),
    ("causal-lm", FEW_EXAMPLES - 1, _ppl(LARGE_SHIFT + 1), "any", "prompting (k-shot, nothing trained)"),
])
def test_the_rung_the_data_needs(task, examples, shift, forgetting, rung):
    need, why = needed_rung(_facts(task, examples), shift, forgetting)
    assert LADDER[need][0] == rung and why
    options = rank(_facts(task, examples), need, why, forgetting)
    assert options[0].rung == rung and options[0].reasons == why
    assert (forgetting == "low") == all(o.method != "full" for o in options)
    assert ("probe" in [o.method for o in options]) == (task == "classification")
    assert (None in [o.method for o in options]) == (task == "causal-lm")  # prompting needs a decoder


def test_a_rung_that_does_not_fit_or_overruns_the_budget_goes_last(tiny_config):
    from transferkit import recommend as rec
    from transferkit.cost import custom_hardware, estimate

    cfg = tiny_config()
    need, why = needed_rung(_facts("causal-lm", 40), _ppl(1.2), "any")
    roomy = custom_hardware(memory_gb=64, tflops=1e-6, price_per_hour=1, mfu=0.5, device="cpu")
    options = rank(_facts("causal-lm", 40), need, why, "any")
    rec.price(options, cfg, roomy, budget_minutes=None)
    assert all(o.usable for o in options) and options[0].rung == "LoRA r=8"
    lora = next(o for o in options if o.method == "lora")
    full = next(o for o in options if o.method == "full")
    # Beside the framework term: on a model this small, what importing peft leaves resident (LoRA's, not full
    # fine-tuning's) outweighs every tensor full fine-tuning adds.
    assert full.cost.peak_bytes - full.cost.memory["framework"] > lora.cost.peak_bytes - lora.cost.memory["framework"]
    assert full.cost.params_trainable == full.cost.params_total

    # A budget that only the cheapest-to-run rungs meet: the others are kept, last, saying why.
    budget = (lora.cost.seconds + full.cost.seconds) / 2 / 60
    options = rank(_facts("causal-lm", 40), need, why, "any")
    rec.price(options, cfg, roomy, budget_minutes=budget)
    assert options[-1].method == "full" and not options[-1].usable
    assert f"over the {budget:g}-minute budget" in options[-1].reasons[-1]

    # Memory for the 4-bit base but not the float one: LoRA becomes QLoRA.
    float_peak = lora.cost.peak_bytes
    qlora = estimate(rec.option_config(cfg, rec.Option("q", "qlora", {"method.r": 8}, [])), roomy)
    assert qlora.peak_bytes < float_peak
    tight = custom_hardware(memory_gb=(qlora.peak_bytes + float_peak) / 2 / 2**30, tflops=1, price_per_hour=0,
                            mfu=0.5, device="cpu")
    options = rank(_facts("causal-lm", 40), need, why, "any")
    rec.price(options, cfg, tight, budget_minutes=None)
    assert options[0].method == "qlora" and options[0].rung == "QLoRA r=8" and options[0].usable
    assert "QLoRA's 4-bit base does" in options[0].reasons[-1]


def test_recommend_measures_the_data_and_writes_a_recipe_that_trains_as_written(tiny_config, tmp_path,
                                                                                 monkeypatch):
    from transferkit import train
    from transferkit.config import load_config
    from transferkit.cost import custom_hardware
    from transferkit.recommend import recipe_text, recommend

    cfg = tiny_config()
    hardware = custom_hardware(memory_gb=64, tflops=1, price_per_hour=1, mfu=0.5, device="cpu")
    decided = recommend(cfg, hardware)
    assert decided.data.examples == 40 and decided.data.task == "causal-lm" and decided.data.duplicates == 0
    assert decided.shift.kind == "perplexity ratio" and decided.shift.value > 0
    assert decided.options[0].rung == decided.need
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(recipe_text(decided, cfg, "2026-11-30"))
    assert recipe.read_text().startswith("# Written by `transferkit recommend` on 2026-11-30")
    monkeypatch.chdir(tmp_path)
    summary = train(load_config(recipe))  # as written: no override
    assert summary["params"]["trainable"] > 0 and (tmp_path / "runs" / decided.trainable_top().method).is_dir()


def test_bad_budgets_and_forgetting_are_clear_errors(tiny_config):
    from transferkit.cost import custom_hardware
    from transferkit.recommend import recommend

    hardware = custom_hardware(memory_gb=64, tflops=1, price_per_hour=1, mfu=0.5, device="cpu")
    with pytest.raises(UserError, match="--budget-minutes must be a positive number of minutes, got -5"):
        recommend(tiny_config(), hardware, budget_minutes=-5)
    with pytest.raises(UserError, match="--forgetting must be low or any, got 'some'"):
        recommend(tiny_config(), hardware, forgetting="some")


def test_recommend_cli_on_classification_data(tiny_bert_dir, topics, tmp_path, capsys):
    import json

    from transferkit.cli import main

    out = tmp_path / "probe.yaml"
    assert main(["recommend", "--data", str(topics["train"]), "--model", str(tiny_bert_dir), "--json",
                 "--write", str(out)]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["shift"]["kind"] == "probe accuracy" and 0 <= answer["shift"]["value"] <= 1
    assert answer["data"]["label_counts"] and answer["options"][0]["rung"] == answer["needs"]
    assert out.read_text().count("method:") == 1
    assert main(["recommend", "--data", str(topics["train"]), "--hardware", "h1000"]) == 2
    assert Path(out).is_file()
