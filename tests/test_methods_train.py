"""Every method that serves causal LM through the whole `train()` pipeline on a tiny decoder:
the run finishes, the loss falls, and the saved run reloads with identical outputs."""

import json
from pathlib import Path

import pytest
from tiny import save_tiny_model_folder

from transferkit.methods import get_method, method_names

CAUSAL_LM_METHODS = [m for m in method_names() if "causal-lm" in get_method(m).tasks]  # probe: see test_classification

LR = {"prompt": 5e-2, "prefix": 5e-2, "ia3": 5e-2, "full": 3e-3, "freeze": 3e-3}


@pytest.fixture(scope="module")
def llama64(tmp_path_factory):
    return save_tiny_model_folder(tmp_path_factory.mktemp("llama64"), family="llama")


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    from transferkit.data.synthetic import person_records

    path = tmp_path_factory.mktemp("lm") / "notes.txt"
    path.write_text("\n".join(r["completion"] for r in person_records(48, seed=4)) + "\n")
    return path


@pytest.mark.parametrize("name", CAUSAL_LM_METHODS)
def test_method_trains_on_plain_text(name, tiny_config, llama64, text_file):
    from transferkit import train

    cfg = tiny_config(f"model={llama64}", f"method={{name: {name}}}", f"data.train={text_file}",
                      "data.validation=null", "data.test=null", "train.max_steps=8", f"train.lr={LR.get(name, 1e-2)}",
                      "eval.baseline=false", "train.eval_every=0")
    summary = train(cfg)
    assert summary["schema"] == "lm" and summary["train_loss"]["final"] < summary["train_loss"]["first_logged"]


@pytest.mark.parametrize("name", CAUSAL_LM_METHODS)
def test_method_trains_end_to_end(name, tiny_config, llama64):
    from transferkit import load_trained, train

    overrides = [f"model={llama64}", f"method={{name: {name}}}", "train.max_steps=8", "train.batch_size=8",
                 f"train.lr={LR.get(name, 1e-2)}", "eval.baseline=false", "train.eval_every=0"]
    cfg = tiny_config(*overrides)
    summary = train(cfg)
    events = [json.loads(l) for l in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in events if e["event"] == "train"]
    assert losses[-1] < losses[0], losses
    assert summary["method"] == name and "exact_match" in summary["test"]

    # The reloaded run gives the loss the run reported on its test split.
    from transferkit.data import load_splits
    from transferkit.evaluate import mean_loss
    from transferkit.runtime import CPU

    model, tokenizer, loaded_cfg = load_trained(cfg.output_dir)
    splits = load_splits(loaded_cfg.data, tokenizer, loaded_cfg.seed)
    again = mean_loss(model, splits.test.tokenized, tokenizer.pad_token_id, 4, CPU)
    assert again["loss"] == pytest.approx(summary["test"]["loss"], rel=1e-4)


def test_prefix_with_gradient_checkpointing_is_refused_in_one_line(tiny_config):
    """transformers drops the key/value cache under checkpointing, so the prefix would silently vanish (or the
    attention fail on mismatched shapes): refused with the key named, before any step."""
    from transferkit import train
    from transferkit.errors import ConfigError

    import dataclasses

    from transferkit.methods import method_config_from_dict

    cfg = tiny_config("train.gradient_checkpointing=true")  # its method keys are LoRA's: swapped below
    cfg = dataclasses.replace(cfg, method=method_config_from_dict({"name": "prefix"}))
    with pytest.raises(ConfigError, match="train.gradient_checkpointing.*prefix"):
        train(cfg)
