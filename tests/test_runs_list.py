"""`transferkit runs`: every run under a folder at a glance."""

from pathlib import Path


def test_runs_lists_finished_and_unfinished_runs(tiny_config, tmp_path, capsys):
    from transferkit import train
    from transferkit.cli import main

    finished = tiny_config(f"output_dir={tmp_path / 'runs' / 'a'}", "train.max_steps=2", "eval.baseline=false")
    summary = train(finished)
    cut = tiny_config(f"output_dir={tmp_path / 'runs' / 'nested' / 'b'}", "train.max_steps=3", "eval.baseline=false")
    train(cut)
    (Path(cut.output_dir) / "summary.json").unlink()  # as if it had been killed before the end
    (tmp_path / "runs" / "not-a-run").mkdir()
    capsys.readouterr()
    assert main(["runs", str(tmp_path / "runs")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "method", "task", "headline", "gain", "forgetting", "minutes", "status"]
    a = next(line for line in lines if line.startswith("a "))
    assert summary["comparison"] is None  # no baseline: the headline is the run's own (free-form answers: token F1)
    assert "lora" in a and "instruction" in a and f"token_f1 {summary['test']['token_f1']:.4g}" in a
    assert a.endswith("finished")
    assert f"{summary['forgetting']['forgetting']:+.2%}" in a
    b = next(line for line in lines if line.startswith("nested/b "))
    assert b.endswith("not finished: last logged step 3")
    assert not any(line.startswith("not-a-run") for line in lines)
    assert main(["runs", str(tmp_path / "runs" / "not-a-run")]) == 2
