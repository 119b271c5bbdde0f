"""A corpus of bad inputs through the command line: each gives exit code 2 and a
one-line error naming the file, the line (or row) and the field, and leaves no
run folder behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tiny import write_jsonl

from transferkit.cli import main

GOOD_ROW = {"prompt": "hi", "completion": "hello"}


def _classes(n: int, labels=("a", "b")) -> list[dict]:
    return [{"text": f"example {i}", "label": labels[i % len(labels)]} for i in range(n)]


def _write(path: Path, content: str | bytes) -> Path:
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return path


class Case:
    """One bad input: build(folder) writes its files and returns (the config's data section, extra CLI args)."""

    def __init__(self, name: str, build, expect: list[str]):
        self.name, self.build, self.expect = name, build, expect


def jsonl_lines(*lines: str) -> str:
    return "".join(line + "\n" for line in lines)


GOOD = json.dumps(GOOD_ROW)

# Each build(tmp) returns (data section, extra overrides); `expect` are substrings of the error line.
CASES = [
    Case("malformed json line", lambda t: ({"train": str(_write(t / "d.jsonl", jsonl_lines(GOOD, '{"prompt": "x",')))}, []),
         ["d.jsonl:2", "malformed JSON"]),
    Case("non-utf8 bytes", lambda t: ({"train": str(_write(t / "d.jsonl", GOOD.encode() + b"\n" + b'{"prompt": "caf\xe9"}\n'))}, []),
         ["d.jsonl:2", "not UTF-8"]),
    Case("utf-16 bom", lambda t: ({"train": str(_write(t / "d.jsonl", (GOOD + "\n").encode("utf-16")))}, []),
         ["d.jsonl:1", "UTF-16"]),
    Case("empty file", lambda t: ({"train": str(_write(t / "d.jsonl", ""))}, []), ["d.jsonl", "no data rows"]),
    Case("header only csv", lambda t: ({"train": str(_write(t / "d.csv", "prompt,completion\n"))}, []),
         ["d.csv", "no data rows"]),
    Case("missing required field", lambda t: ({"train": str(_write(t / "d.jsonl", jsonl_lines(GOOD, '{"prompt": "x"}')))}, []),
         ["d.jsonl:2", "field 'completion'", "missing"]),
    Case("null field", lambda t: ({"train": str(_write(t / "d.jsonl", jsonl_lines(GOOD, '{"prompt": "x", "completion": null}')))}, []),
         ["d.jsonl:2", "field 'completion'", "null"]),
    Case("wrong type", lambda t: ({"train": str(_write(t / "d.jsonl", jsonl_lines(GOOD, '{"prompt": "x", "completion": 7}')))}, []),
         ["d.jsonl:2", "field 'completion'", "string"]),
    Case("unknown schema", lambda t: ({"train": str(_write(t / "d.jsonl", jsonl_lines('{"question": "x", "answer": "y"}')))}, []),
         ["d.jsonl:1", "cannot detect the task schema"]),
    Case("label unseen in training", lambda t: ({
        "train": str(write_jsonl(t / "train.jsonl", _classes(8))),
        "validation": str(write_jsonl(t / "val.jsonl", _classes(2) + [{"text": "z", "label": "c"}]))}, []),
        ["val.jsonl:3", "field 'label'", "'c'"]),
    Case("single class", lambda t: ({"train": str(write_jsonl(t / "train.jsonl", _classes(6, labels=("a",))))}, []),
         ["train.jsonl", "at least two classes"]),
    Case("unknown role", lambda t: ({"train": str(write_jsonl(t / "d.jsonl", [
        {"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]}]))}, []),
        ["d.jsonl:1", "field 'messages[1].role'", "unknown role"]),
    Case("messages out of order", lambda t: ({"train": str(write_jsonl(t / "d.jsonl", [
        {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]}]))}, []),
        ["d.jsonl:1", "field 'messages[0].role'"]),
    Case("prompt longer than the context", lambda t: ({"train": str(write_jsonl(t / "d.jsonl", [
        GOOD_ROW, {"prompt": "word " * 400, "completion": "x"}])), "max_length": 64, "overlong": "error"}, []),
        ["d.jsonl:2", "longer than data.max_length=64"]),
    Case("all-masked dataset", lambda t: ({"train": str(write_jsonl(t / "d.jsonl", [
        {"prompt": "word " * 200, "completion": "x"}] * 3)), "max_length": 32}, []),
        ["d.jsonl", "no token carries a label", "3 of 3 examples were cut"]),
    Case("missing path", lambda t: ({"train": str(t / "nope.jsonl")}, []), ["nope.jsonl", "no such file"]),
    Case("directory instead of a file", lambda t: ({"train": str(t)}, []), ["data", "is a folder"]),
    Case("unsupported file type", lambda t: ({"train": str(_write(t / "d.xlsx", "x"))}, []), ["d.xlsx", "unsupported file type"]),
    Case("unknown config key", lambda t: ({"train": str(write_jsonl(t / "d.jsonl", [GOOD_ROW]))}, ["train.learning_rate=1e-3"]),
         ["train.learning_rate", "did you mean", "train.lr"]),
    Case("wrong config type", lambda t: ({"train": str(write_jsonl(t / "d.jsonl", [GOOD_ROW]))}, ["train.batch_size=eight"]),
         ["train.batch_size", "must be int", "'eight'"]),
    Case("rank not positive", lambda t: ({"train": str(write_jsonl(t / "d.jsonl", [GOOD_ROW]))}, ["method.r=0"]),
         ["method.r", "> 0"]),
    Case("learning rate not positive", lambda t: ({"train": str(write_jsonl(t / "d.jsonl", [GOOD_ROW]))}, ["train.lr=-1e-4"]),
         ["train.lr", "> 0"]),
    Case("head lr without a head", lambda t: ({"train": str(write_jsonl(t / "d.jsonl", [GOOD_ROW]))}, ["train.head_lr=1e-3"]),
         ["train.head_lr", "task is causal-lm", "no new head"]),
    Case("negative steps", lambda t: ({"train": str(write_jsonl(t / "d.jsonl", [GOOD_ROW]))}, ["train.max_steps=-5"]),
         ["train.max_steps", "> 0"]),
    Case("unknown method", lambda t: ({"train": str(write_jsonl(t / "d.jsonl", [GOOD_ROW]))}, ["method.name=lroa"]),
         ["method.name", "did you mean 'lora'", "Known methods"]),
    Case("unknown model", lambda t: ({"train": str(write_jsonl(t / "d.jsonl", [GOOD_ROW]))}, ["model=smollm-9000"]),
         ["smollm-9000", "smollm2-135m"]),
    Case("missing forgetting reference", lambda t: ({"train": str(write_jsonl(t / "d.jsonl", [GOOD_ROW]))},
                                                     [f"forgetting.reference={t / 'general.txt'}"]),
         ["forgetting.reference", "general.txt", "not found"]),
    Case("bad replay text", lambda t: ({"train": str(write_jsonl(t / "d.jsonl", [GOOD_ROW]))},
                                       ["forgetting.replay=0.5", "train.batch_size=4",
                                        f"forgetting.replay_data={write_jsonl(t / 'g.jsonl', [{'text': 'ok'}, {'txt': 'x'}])}"]),
         ["g.jsonl:2", "field 'text'", "missing"]),
    Case("replay on a classifier", lambda t: ({"train": str(write_jsonl(t / "d.jsonl", _classes(8)))},
                                              ["forgetting.replay=0.25"]), ["forgetting.replay", "causal-LM"]),
    Case("unknown task metric", lambda t: ({"train": str(write_jsonl(t / "d.jsonl", [GOOD_ROW]))}, ["eval.task_metric=jsno"]),
         ["eval.task_metric", "jsno", "json"]),
    Case("preference pair with one answer twice", lambda t: ({"train": str(write_jsonl(t / "d.jsonl", [
        {"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "a", "rejected": "a"}]))}, []),
        ["d.jsonl:2", "rejected", "nothing to prefer"]),
    Case("preference schema configured on instruction rows", lambda t: ({
        "train": str(write_jsonl(t / "d.jsonl", [GOOD_ROW])), "schema": "preference"}, []),
        ["d.jsonl:1", "chosen", "missing required field"]),
    Case("preference prompt longer than the context", lambda t: ({"train": str(write_jsonl(t / "d.jsonl", [
        {"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p " * 64, "chosen": "a", "rejected": "b"}])),
        "max_length": 16}, []), ["d.jsonl:2", "prompt", "no token of the chosen answer"]),
    Case("test rows seen in training", lambda t: ({
        "train": str(write_jsonl(t / "train.jsonl", [GOOD_ROW, {"prompt": "other", "completion": "x"}])),
        "test": str(write_jsonl(t / "test.jsonl", [{"prompt": "new", "completion": "y"}, {**GOOD_ROW, "prompt": " HI "}])),
        "overlap": "error"}, []), ["test.jsonl:2", "also occurs in train", "train.jsonl:1"]),
    Case("yaml syntax error", None, ["bad.yaml:", "invalid YAML", "line 2"]),
    Case("target module the model lacks", lambda t: ({"train": str(write_jsonl(t / "d.jsonl", [GOOD_ROW]))},
                                                     ["method.target_modules=[query]"]),
         ["method.target_modules", "query matches no linear layer", "q_proj", "down_proj"]),
    Case("IA3 feed-forward outside its targets", lambda t: ({"train": str(write_jsonl(t / "d.jsonl", [GOOD_ROW]))},
                                                            ["method={name: ia3, target_modules: [k_proj], "
                                                             "feedforward_modules: [down_proj]}"]),
         ["method.feedforward_modules", "down_proj", "must also be in method.target_modules"]),
]


def _run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gives_one_line_and_exit_2(case, tiny_model_dir, tmp_path, capsys):
    run = tmp_path / "run"
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    config_path = tmp_path / "bad.yaml"
    if case.build is None:  # the config file itself is broken
        config_path.write_text("model: tiny\ntrain: [unclosed\n")
        extra: list[str] = []
    else:
        data, extra = case.build(data_dir)
        config = {"model": str(tiny_model_dir), "data": data, "output_dir": str(run),
                  "method": {"name": "lora", "r": 4}, "train": {"max_steps": 2, "precision": "fp32"}}
        config_path.write_text(yaml.safe_dump(config))
    code, err = _run_cli(["train", str(config_path), *extra], capsys)
    assert code == 2, err
    line = _error_line(err)
    for expected in case.expect:
        assert expected in line, (expected, line)
    assert not run.exists() or not any(run.iterdir()), sorted(run.iterdir())


def test_duplicate_rows_are_counted_and_kept(tiny_config, quick_data, caplog):
    import logging

    from transferkit import train

    rows = [json.loads(line) for line in quick_data["train"].read_text().splitlines()]
    write_jsonl(quick_data["train"], rows + rows[:3])
    with caplog.at_level(logging.INFO, logger="transferkit"):
        summary = train(tiny_config("train.max_steps=1", "eval.baseline=false", "eval.exact_match=false"))
    out = caplog.text
    assert "3 duplicate rows" in out and "train.jsonl" in out
    assert summary["data"]["train"]["duplicates"] == 3
    assert summary["data"]["train"]["examples"] == len(rows) + 3  # warned, not dropped


def test_good_config_with_utf8_bom_is_accepted(tiny_config, quick_data):
    from transferkit import train

    text = quick_data["train"].read_text()
    quick_data["train"].write_bytes(b"\xef\xbb\xbf" + text.encode())
    summary = train(tiny_config("train.max_steps=1", "eval.baseline=false", "eval.exact_match=false"))
    assert summary["steps"] == 1


def test_eval_refuses_a_corrupt_adapter(tiny_config, capsys):
    from transferkit import train

    cfg = tiny_config("train.max_steps=1", "eval.baseline=false", "eval.exact_match=false")
    train(cfg)
    weights = Path(cfg.output_dir) / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    code, err = _run_cli(["eval", cfg.output_dir, "--data", cfg.data.test, "--no-generate"], capsys)
    assert code == 2
    line = _error_line(err)
    assert "adapter_model.safetensors" in line and "corrupt" in line


def test_adapter_from_another_base_is_refused(tiny_config, tmp_path, capsys):
    from tiny import save_tiny_model_folder

    from transferkit import train

    cfg = tiny_config("train.max_steps=1", "eval.baseline=false", "eval.exact_match=false")
    train(cfg)
    other = save_tiny_model_folder(tmp_path / "other-base", family="qwen2")
    run = Path(cfg.output_dir)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"] = str(other)  # the run now claims another base than the one its adapter was trained on
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    code, err = _run_cli(["eval", str(run), "--data", cfg.data.test, "--no-generate"], capsys)
    assert code == 2
    line = _error_line(err)
    assert "adapter" in line and "another base model" in line


def test_overwrite_only_ever_replaces_a_run_directory(tiny_config, quick_data, tmp_path):
    from transferkit import train
    from transferkit.errors import UserError

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a transferkit run directory"):
        train(tiny_config(f"output_dir={precious}", "train.max_steps=1"), overwrite=True)
    assert (precious / "notes.txt").read_text() == "keep me"

    # A previous run's folder that now also holds this run's training file.
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: x\n")
    inside = run / "train.jsonl"
    inside.write_text(quick_data["train"].read_text())
    with pytest.raises(UserError, match="an input of this run"):
        train(tiny_config(f"data.train={inside}", "train.max_steps=1"), overwrite=True)
    assert inside.is_file()


def test_run_directory_refuses_writes_outside_itself(tmp_path):
    from transferkit.errors import UserError
    from transferkit.rundir import RunDir

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.write_json(run.summary, {"ok": True})
    with pytest.raises(UserError, match="outside the run directory"):
        run.write_json(run.path / ".." / "escaped.json", {})
    assert not (tmp_path / "escaped.json").exists()


@pytest.mark.parametrize("trusted", [False, True])
def test_remote_code_runs_only_when_the_config_says_so(tiny_config, monkeypatch, trusted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from transferkit import train

    seen = []
    for cls in (AutoModelForCausalLM, AutoTokenizer):
        real = cls.from_pretrained

        def spy(*args, _real=real, **kwargs):
            seen.append(kwargs.get("trust_remote_code"))
            return _real(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    train(tiny_config("train.max_steps=1", "eval.baseline=false", "eval.exact_match=false",
                      f"trust_remote_code={str(trusted).lower()}"))
    assert seen and set(seen) == {trusted}


def test_eval_of_a_base_encoder_on_labelled_data_says_what_to_do(tiny_bert_dir, topics, capsys):
    code, err = _run_cli(["eval", "--model", str(tiny_bert_dir), "--data", str(topics["test"])], capsys)
    assert code == 2
    line = _error_line(err)
    assert "no trained classification head" in line and "method probe" in line and "need a decoder" not in line
