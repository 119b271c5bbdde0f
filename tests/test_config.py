import dataclasses
from pathlib import Path

import pytest

from transferkit.config import describe_keys, dump_config, load_config
from transferkit.errors import ConfigError

RECIPES = sorted(Path(__file__).resolve().parents[1].joinpath("recipes").glob("*.yaml"))


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


BASE = "data:\n  train: t.jsonl\ntrain:\n  max_steps: 3\n"


def test_overrides_and_types(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ["train.max_steps=5", "train.lr=2e-4", "output_dir=/tmp/x",
                                              "method.target_modules=q_proj,v_proj"])
    assert cfg.train.max_steps == 5
    assert cfg.train.lr == pytest.approx(2e-4)  # YAML reads 2e-4 as a string; coerced to float
    assert cfg.output_dir == "/tmp/x"
    assert cfg.method.target_modules == ["q_proj", "v_proj"]


def test_a_config_without_a_method_section_gets_the_default_methods_own_keys(tmp_path):
    """recipes/compare-*.yaml leave `method` out (compare sets it per method); `transferkit cost` and `train` on
    such a file crashed reading LoRA's rank from the bare MethodConfig."""
    from transferkit.methods import get_method

    cfg = load_config(write(tmp_path, BASE))
    assert cfg.method.name == "lora" and type(cfg.method) is get_method("lora").config_cls
    assert (cfg.method.r, cfg.method.dropout) == (None, 0.0)


def test_unknown_key_suggests_closest(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'train.max_step'; did you mean 'train.max_steps'"):
        load_config(write(tmp_path, BASE + "  max_step: 4\n"))
    with pytest.raises(ConfigError, match=r"unknown config key 'method.rank'; did you mean 'method.r'\?$"):
        load_config(write(tmp_path, BASE), ["method.rank=4"])  # peft's name, mapped to ours
    with pytest.raises(ConfigError, match=r"unknown config key 'trian'; did you mean 'train'"):
        load_config(write(tmp_path, BASE), ["trian.lr=1"])


def test_wrong_type_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"'train.batch_size' must be int, got str 'eight'"):
        load_config(write(tmp_path, BASE), ["train.batch_size=eight"])
    with pytest.raises(ConfigError, match=r"'train.precision' must be one of .*did you mean 'bf16'"):
        load_config(write(tmp_path, BASE), ["train.precision=bf61"])


@pytest.mark.parametrize("override, message", [
    ("method.r=0", r"'method.r' must be > 0"),
    ("train.lr=-1", r"'train.lr' must be > 0"),
    ("train.max_steps=-3", r"'train.max_steps' must be > 0"),
])
def test_out_of_range_values(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, BASE), [override])


def test_unknown_method_lists_known(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown method .lorra.*did you mean .lora.*Known methods: adapter, dora"):
        load_config(write(tmp_path, BASE), ["method.name=lorra"])
    with pytest.raises(ConfigError, match=r"unknown method 'loRA'.*did you mean 'lora'"):
        load_config(write(tmp_path, BASE), ["method.name=loRA"])


def test_cross_field_rules(tmp_path):
    with pytest.raises(ConfigError, match="one of 'train.max_steps' and 'train.epochs', not both"):
        load_config(write(tmp_path, BASE), ["train.epochs=1"])
    with pytest.raises(ConfigError, match="multiple of 'train.micro_batch_size'"):
        load_config(write(tmp_path, BASE), ["train.batch_size=8", "train.micro_batch_size=3"])
    with pytest.raises(ConfigError, match="'data.train' is required"):
        load_config(write(tmp_path, "train:\n  max_steps: 3\n"))


def test_invalid_yaml_names_line(tmp_path):
    with pytest.raises(ConfigError, match=r"c.yaml:3: invalid YAML"):
        load_config(write(tmp_path, "data:\n  train: x\n\tbad: 1\n"))


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ["method.r=4"])
    again = load_config(write(tmp_path, dump_config(cfg)))
    assert again == cfg


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])
def test_every_shipped_recipe_is_valid(recipe):
    cfg = load_config(recipe)
    root = recipe.parents[1]
    for split in ("train", "validation", "test"):
        path = getattr(cfg.data, split)
        if path:
            assert (root / path).exists(), f"{recipe.name}: data.{split} {path} does not exist"


def test_every_key_has_help():
    rows = describe_keys()
    assert {"train.max_steps", "data.train", "eval.baseline", "output_dir", "method.name"} <= {r[0] for r in rows}
    assert all(r[3] for r in rows)


@pytest.mark.parametrize("override, key, value", [
    ("train.max_steps=5.0", "max_steps", 5), ("train.lr=1", "lr", 1.0), ("train.lr=2e-4", "lr", 2e-4),
    ("train.batch_size='16'", "batch_size", 16)])
def test_numbers_are_read_exactly(tmp_path, override, key, value):
    cfg = load_config(write(tmp_path, BASE), [override])
    assert getattr(cfg.train, key) == value and type(getattr(cfg.train, key)) is type(value)


@pytest.mark.parametrize("override", ["train.max_steps=5.5", "train.max_steps=true", "train.lr=fast", "train.lr=[1]"])
def test_numbers_that_are_not_are_refused(tmp_path, override):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        load_config(write(tmp_path, BASE), [override])


# The defaults each method module declares (`Defaults`), written out here: changing one is a decision that must
# show up in this test, docs/defaults.md and the recipes.
METHOD_LR = {"full": 1e-4, "freeze": 6e-4, "lora": 1e-3, "dora": 1e-3, "rslora": 1e-3, "qlora": 1e-3,
             "adapter": 1e-3, "ia3": 5e-3, "prefix": 1e-2, "prompt": 3e-2, "probe": 1e-2}
SELECT = {"probe": "last"}  # the others end with their best validation's weights
# where a decoder's default rate on classification / instruction data differs from the method's
DECODER_CLASSIFIER_LR = {"freeze": 1.8e-3, **{m: 3e-3 for m in ("lora", "dora", "rslora", "qlora", "probe")}}
DECODER_INSTRUCTION_LR = {m: 3e-3 for m in ("lora", "dora", "rslora", "qlora")}
HEAD_LR = {m: 1e-2 for m in ("full", "freeze", "lora", "dora", "rslora", "qlora", "adapter")}  # the others: lr


@pytest.mark.parametrize("method", sorted(METHOD_LR))
def test_null_train_keys_take_the_methods_defaults(tmp_path, method):
    from transferkit.config import with_method_defaults

    cfg = load_config(write(tmp_path, BASE), [f"method.name={method}"])
    assert (cfg.train.lr, cfg.train.head_lr, cfg.train.warmup_ratio, cfg.train.weight_decay, cfg.train.select) == \
        (None,) * 5
    causal = with_method_defaults(cfg, "instruction").train
    assert (causal.lr, causal.head_lr, causal.warmup_ratio, causal.weight_decay) == (METHOD_LR[method], None, 0.05, 0.0)
    assert causal.select == SELECT.get(method, "best")
    assert causal.max_steps == 3 and causal.epochs is None  # a budget given stays as given
    classify = with_method_defaults(cfg, "classification").train
    assert (classify.lr, classify.head_lr) == (METHOD_LR[method], HEAD_LR.get(method, METHOD_LR[method]))
    # by the model's architecture and the data's schema: a decoder on classification or instruction data may differ;
    # an encoder, or a decoder on plain text or preference pairs, not
    decoder = with_method_defaults(cfg, "classification", "decoder").train
    assert decoder.lr == DECODER_CLASSIFIER_LR.get(method, METHOD_LR[method])
    assert with_method_defaults(cfg, "instruction", "decoder").train.lr == DECODER_INSTRUCTION_LR.get(method,
                                                                                                     METHOD_LR[method])
    assert with_method_defaults(cfg, "classification", "encoder").train.lr == METHOD_LR[method]
    for schema in ("lm", "preference"):
        assert with_method_defaults(cfg, schema, "decoder").train.lr == METHOD_LR[method]
    # What the user sets wins, and a resolved config resolves to itself.
    mine = load_config(write(tmp_path, BASE), [f"method.name={method}", "train.lr=0.5", "train.head_lr=0.25",
                                               "train.warmup_ratio=0", "train.weight_decay=0.1",
                                               f"train.select={'best' if SELECT.get(method) == 'last' else 'last'}"])
    resolved = with_method_defaults(mine, "classification")
    assert (resolved.train.lr, resolved.train.head_lr, resolved.train.warmup_ratio, resolved.train.weight_decay) == \
        (0.5, 0.25, 0.0, 0.1)
    assert resolved.train.select != SELECT.get(method, "best")
    assert with_method_defaults(resolved, "classification") == resolved


def test_keys_lists_each_methods_defaults(capsys):
    from transferkit.cli import main

    assert main(["keys"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert "per method" in lines["train.lr"] and "full 0.0001" in lines["train.lr"] and "lora 0.001" in lines["train.lr"]
    assert "full 0.01" in lines["train.head_lr"] and "lora 0.01" in lines["train.head_lr"] and "ia3 lr" in lines["train.head_lr"]
    assert "probe last" in lines["train.select"] and "lora best" in lines["train.select"]
    assert "freeze 0.0006 (decoder classification 0.0018)" in lines["train.lr"]


def test_a_run_records_the_defaults_it_used(tiny_config, tmp_path):
    """config.yaml names the learning rate, warmup, weight decay and selection the run trained with."""
    from transferkit import train

    cfg = tiny_config("method={name: lora, r: 4}", "train.max_steps=1", "eval.baseline=false", "train.eval_every=0")
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=None))
    summary = train(cfg)
    recorded = load_config(Path(cfg.output_dir) / "config.yaml").train
    # LoRA's rate for a decoder on instruction data (the tiny config's), not its shared 1e-3
    assert (recorded.lr, recorded.head_lr, recorded.warmup_ratio, recorded.weight_decay, recorded.select) == \
        (3e-3, None, 0.05, 0.0, "best")
    assert summary["steps"] == 1
    # The method keys the model decided: alpha 2r, the tiny Llama's attention projections.
    method = load_config(Path(cfg.output_dir) / "config.yaml").method
    assert (method.r, method.alpha, method.target_modules) == (4, 8.0, ["q_proj", "k_proj", "v_proj", "o_proj"])


def test_a_run_takes_the_default_rate_of_its_models_architecture(tiny_config, topics, tiny_bert_dir, tiny_qwen_dir):
    """freeze's top blocks train at 1.8e-3 in a decoder classifier and at 6e-4 in an encoder's; config.yaml
    records the rate the run resolved."""
    from transferkit import train

    for folder, lr in ((tiny_qwen_dir, 1.8e-3), (tiny_bert_dir, 6e-4)):
        cfg = tiny_config(f"model={folder}", "method={name: freeze, train_top: 1}", f"data.train={topics['train']}",
                          f"data.validation={topics['validation']}", f"data.test={topics['test']}",
                          "train.max_steps=1", "train.eval_every=0", "train.save_every=0", "eval.baseline=false",
                          "forgetting.reference=none", f"output_dir={folder.parent / ('freeze-' + folder.name)}")
        train(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=None)))
        assert load_config(Path(cfg.output_dir) / "config.yaml").train.lr == lr


def test_no_budget_takes_the_methods_epochs(tmp_path):
    from transferkit.config import with_method_defaults

    for method, epochs in (("probe", 20.0), ("lora", 3.0), ("full", 3.0)):
        cfg = load_config(write(tmp_path, "data:\n  train: t.jsonl\n"), [f"method.name={method}"])
        assert (cfg.train.max_steps, cfg.train.epochs) == (None, None)
        assert with_method_defaults(cfg, "classification").train.epochs == epochs
    with pytest.raises(ConfigError, match="not both"):
        load_config(write(tmp_path, BASE), ["train.epochs=1"])


def test_paths_in_a_config_file_are_read_from_its_folder(tmp_path, monkeypatch):
    """A config runs the same from any directory: its relative data paths are its own folder's; paths given
    on the command line, and output_dir, stay relative to the working directory."""
    project = tmp_path / "project"
    (project / "configs").mkdir(parents=True)
    (project / "configs" / "run.yaml").write_text(
        "data:\n  train: ../data/train.jsonl\n  test: test.jsonl\ntrain:\n  max_steps: 1\n"
        "forgetting:\n  reference: general\noutput_dir: runs/x\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config("project/configs/run.yaml", ["data.validation=val.jsonl"])
    assert cfg.data.train == str(project / "data" / "train.jsonl")
    assert cfg.data.test == str(project / "configs" / "test.jsonl")
    assert cfg.data.validation == "val.jsonl" and cfg.output_dir == "runs/x"
    assert cfg.forgetting.reference == "general"  # a packaged text's name, not a path


def test_a_missing_data_file_names_its_key_and_full_path(tmp_path, monkeypatch, capsys):
    from transferkit.cli import main

    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "run.yaml").write_text(f"data:\n  train: rt_train.csv\ntrain:\n  max_steps: 1\n"
                                                f"output_dir: {tmp_path / 'run'}\n")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "cfg/run.yaml"]) == 2
    err = capsys.readouterr().err
    assert f"config key 'data.train': no such file or folder: {tmp_path / 'cfg' / 'rt_train.csv'}" in err
    assert not (tmp_path / "run").exists()


def test_keys_is_one_aligned_row_per_key(capsys):
    from transferkit.cli import main

    assert main(["keys"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    keys = [line.split()[0] for line in lines]
    assert len(keys) == len(set(keys))  # method.r: one row saying what it means for each method
    r = next(line for line in lines if line.startswith("method.r "))
    assert "adapter: bottleneck width" in r and "dora, lora, qlora, rslora: LoRA rank" in r
    starts = {line.index(line.split()[1], len(line.split()[0])) for line in lines}
    assert len(starts) == 1  # the type column starts at the same place on every line


def test_help_and_version(capsys):
    from transferkit.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.startswith("transferkit 0.")
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "Adapt a pretrained model to your task" in capsys.readouterr().out


def test_a_bad_value_in_a_yaml_file_names_its_line(tmp_path):
    path = write(tmp_path, "data:\n  train: t.jsonl\ntrain:\n  max_steps: 3\n  lr: fast\n")
    with pytest.raises(ConfigError, match=rf"^{path}:5: config key 'train.lr' must be float"):
        load_config(path)
    with pytest.raises(ConfigError, match=rf"^{path}:2: unknown config key 'data.trian'"):
        load_config(write(tmp_path, "data:\n  trian: t.jsonl\n"))
    with pytest.raises(ConfigError, match=r"^config key 'train.lr' must be float, got str 'slow'"):
        load_config(write(tmp_path, BASE), ["train.lr=slow"])  # a command-line override has no line
