"""`transferkit predict`: a run's answers on unlabelled rows, as JSON lines."""

import csv
import json
from pathlib import Path

import pytest
from tiny import write_jsonl


def test_a_classifier_labels_new_text(tiny_config, topics, tiny_bert_dir, tmp_path, capsys):
    from transferkit import train
    from transferkit.cli import main

    cfg = tiny_config(f"model={tiny_bert_dir}", "forgetting.reference=none", "method={name: probe}",
                      f"data.train={topics['train']}", f"data.validation={topics['validation']}",
                      f"data.test={topics['test']}", "train.max_steps=3",
                      "eval.baseline=false", "train.eval_every=0")
    train(cfg)
    tested = [json.loads(line) for line in (Path(cfg.output_dir) / "test_predictions.jsonl").open()]
    rows = [json.loads(line) for line in Path(topics["test"]).open()]
    unlabelled = tmp_path / "new.csv"
    with unlabelled.open("w", newline="") as f:  # a CSV of text only, as a user has it
        writer = csv.writer(f)
        writer.writerow(["text"])
        writer.writerows([[r["text"]] for r in rows])
    out = tmp_path / "predictions.jsonl"
    assert main(["predict", cfg.output_dir, "--data", str(unlabelled), "--out", str(out), "--precision", "fp32"]) == 0
    predicted = [json.loads(line) for line in out.open()]
    assert len(predicted) == len(rows) and predicted[0]["where"] == f"{unlabelled}:2"
    assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-5 for p in predicted)
    assert all(p["confidence"] == max(p["probabilities"].values()) for p in predicted)
    # The same texts give the same classes as the run's own test evaluation.
    assert [p["prediction"] for p in predicted] == [t["prediction"] for t in tested]
    assert f"{len(rows)} predictions in {out}" in capsys.readouterr().err


def test_an_instruction_run_answers_prompts(tiny_config, tmp_path, capsys):
    from transferkit import generate, train
    from transferkit.cli import main

    cfg = tiny_config("train.max_steps=2", "eval.baseline=false", "train.eval_every=0")
    train(cfg)
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"prompt": "Anna is 31 and lives in Oslo."}, {"messages": [
        {"role": "user", "content": "Bo is a baker in Lund, 40."}]}])
    capsys.readouterr()
    assert main(["predict", cfg.output_dir, "--data", str(prompts), "--max-new-tokens", "8", "--precision", "fp32"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["where"] for line in lines] == [f"{prompts}:1", f"{prompts}:2"]
    expected = generate(["Anna is 31 and lives in Oslo.", "Bo is a baker in Lund, 40."], adapter=cfg.output_dir,
                        max_new_tokens=8, precision="fp32")
    assert [line["prediction"] for line in lines] == expected


def test_a_bad_row_is_one_line_and_no_output_file(tiny_config, topics, tiny_bert_dir, tmp_path, capsys):
    from transferkit import train
    from transferkit.cli import main

    cfg = tiny_config(f"model={tiny_bert_dir}", "forgetting.reference=none", "method={name: probe}",
                      f"data.train={topics['train']}", f"data.validation={topics['validation']}",
                      "data.test=null", "train.max_steps=1", "eval.baseline=false",
                      "train.eval_every=0")
    train(cfg)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "fine"}, {"txt": "typo"}])
    out = tmp_path / "out.jsonl"
    assert main(["predict", cfg.output_dir, "--data", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2: field 'text'" in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".out.jsonl.tmp-*"))


@pytest.mark.parametrize("row, field", [({"messages": [{"role": "system", "content": "x"}]}, "messages")])
def test_unanswerable_chat_is_refused(tmp_path, row, field):
    from transferkit.data.readers import read_rows
    from transferkit.data.schema import to_input
    from transferkit.errors import DataError

    path = write_jsonl(tmp_path / "d.jsonl", [row])
    with pytest.raises(DataError, match=f"d.jsonl:1: field '{field}'"):
        to_input(read_rows(path)[0], "instruction")
