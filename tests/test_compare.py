"""`transferkit compare`: every method a normal run on the same data and budget, failures recorded, finished
runs reused on a re-run, the table's marks and advice, and bad input refused in one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from transferkit.cost.calibrate import Measured
from transferkit.errors import ConfigError


@pytest.fixture()
def compared(tiny_config):
    """baseline, lora, ia3 and prefix for 3 steps, with gradient checkpointing on: prefix is refused with it."""
    from transferkit.api import compare

    cfg = tiny_config("train.gradient_checkpointing=true", "train.eval_every=0")
    return cfg, compare(cfg, "baseline,lora,ia3,prefix", "steps=3")


def test_each_method_is_a_run_on_the_same_budget_and_a_failure_is_recorded(compared):
    cfg, result = compared
    out = Path(cfg.output_dir)
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == {"lora", "ia3", "prefix"}
    assert "gradient_checkpointing" in rows["prefix"]["failed"]
    summaries = {m: json.loads((out / m / "summary.json").read_text()) for m in ("lora", "ia3")}
    assert all(s["steps"] == 3 for s in summaries.values())
    assert summaries["lora"]["baseline"] is not None and summaries["ia3"]["baseline"] is None  # measured once
    assert summaries["lora"]["method"] == "lora" and summaries["ia3"]["method"] == "ia3"
    for name in ("lora", "ia3"):
        row = rows[name]
        assert row["score"] == summaries[name]["test"][row["metric"]]
        assert row["gain"] == pytest.approx(row["score"] - summaries["lora"]["comparison"]["baseline"])  # one baseline
        assert row["trainable"] == summaries[name]["params"]["trainable"]
        assert row["adapter_bytes"] > 0 and (out / name / "report.html").is_file()
    assert json.loads((out / "comparison.json").read_text()) == json.loads(json.dumps(result))
    assert (out / "comparison.png").is_file()
    assert result["advice"].startswith("Use lora") or result["advice"].startswith("Use ia3")


def test_a_rerun_reuses_finished_runs_and_a_changed_budget_trains_again(compared, monkeypatch):
    from transferkit import compare as ladder
    from transferkit.api import compare

    cfg, first = compared
    calls = []
    real_plan = ladder.plan_run
    monkeypatch.setattr(ladder, "plan_run", lambda c: calls.append((Path(c.output_dir).name, real_plan(c))) or calls[-1][1])
    again = compare(cfg, "baseline,lora,ia3,prefix", "steps=3")
    assert calls == [("lora", "finished"), ("ia3", "finished"), ("prefix", "fresh")]  # only the failed one again
    assert [r.get("score") for r in again["rows"]] == [r.get("score") for r in first["rows"]]
    calls.clear()
    compare(cfg, "lora", "steps=4")
    assert calls == [("lora", "fresh")]


def test_a_killed_run_is_resumed_from_its_checkpoint(tiny_config, monkeypatch):
    """A comparison whose run crashed after step 3's checkpoint: the re-run resumes that run from there."""
    from transferkit import compare as ladder
    from transferkit.api import compare
    from transferkit.train import loop

    cfg = tiny_config("train.save_every=3", "train.eval_every=0", "eval.baseline=false")
    run_cfg = ladder.method_config(cfg, "lora", 6, Path(cfg.output_dir), False)
    real_step, calls = loop.optimizer_step, []

    def crashing_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("simulated crash during step 5")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "optimizer_step", crashing_step)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ladder.continue_run(run_cfg)  # what `compare` runs for the method, here in this process to crash it
    monkeypatch.setattr(loop, "optimizer_step", real_step)
    assert ladder.plan_run(run_cfg) == "resume"
    result = compare(cfg, "lora", "steps=6")
    summary = json.loads((Path(cfg.output_dir) / "lora" / "summary.json").read_text())
    assert summary["resumed_from_step"] == 3 and summary["steps"] == 6 and result["rows"][0]["score"] is not None


def test_pareto_marks_and_advice():
    from transferkit.compare import advice, pareto

    rows = [{"method": "probe", "metric": "macro_f1", "score": 0.80, "train_s": 10, "mem": 1},
            {"method": "lora", "metric": "macro_f1", "score": 0.905, "train_s": 50, "mem": 3},
            {"method": "full", "metric": "macro_f1", "score": 0.91, "train_s": 200, "mem": 9},
            {"method": "freeze", "metric": "macro_f1", "score": 0.79, "train_s": 30, "mem": 2}]
    assert pareto(rows, "train_s") == {"probe", "lora", "full"}  # freeze: worse and slower than the probe
    assert advice(rows, True).startswith("Use lora: macro_f1 0.905, within 0.01 of the best (full")


def test_bootstrap_interval_brackets_the_score(tmp_path):
    from transferkit.compare import bootstrap_interval

    rows = [{"label": "a", "prediction": "a"}] * 40 + [{"label": "b", "prediction": "a"}] * 10 + \
        [{"label": "b", "prediction": "b"}] * 50
    (tmp_path / "test_predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    low, high = bootstrap_interval(tmp_path, "macro_f1")
    # by hand: a: tp 40, fp 10, fn 0 → 80/90; b: tp 50, fp 0, fn 10 → 100/110
    by_hand = (80 / 90 + 100 / 110) / 2
    assert low < by_hand < high and high - low < 0.2
    # where macro-F1 and accuracy part (a rare class mostly missed) the interval is macro-F1's, not accuracy's
    skewed = [{"label": "a", "prediction": "a"}] * 80 + [{"label": "b", "prediction": "a"}] * 15 + \
        [{"label": "b", "prediction": "b"}] * 5
    (tmp_path / "test_predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in skewed))
    low, high = bootstrap_interval(tmp_path, "macro_f1")
    assert low < (160 / 175 + 10 / 25) / 2 < high < 0.85  # 0.85: the accuracy
    assert bootstrap_interval(tmp_path, "perplexity") is None


def test_bad_methods_and_budgets_are_one_clear_error(tiny_config, tmp_path, capsys):
    import yaml

    from transferkit.api import compare
    from transferkit.cli import main
    from transferkit.config import config_to_dict

    with pytest.raises(ConfigError, match=r"unknown 'lorra', 'fulll'; known: baseline, .*lora"):
        compare(tiny_config(), "lorra,fulll", "steps=3")
    with pytest.raises(ConfigError, match="nothing to train"):
        compare(tiny_config(), "baseline", "steps=3")
    with pytest.raises(ConfigError, match="less than one optimizer step"):
        compare(tiny_config(), "lora", "tokens=3")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(tiny_config())))
    for bad in ("minutes=soon", "steps=1.5", "hours=2", "minutes=0", "minutes=inf"):
        assert main(["compare", str(path), "--methods", "lora", "--budget", bad]) == 2
        assert f"--budget '{bad}': give steps=N, tokens=N (whole numbers) or minutes=N" in capsys.readouterr().err


def test_a_minutes_budget_plans_each_method_from_its_measured_speed(tiny_config, monkeypatch):
    """minutes=N: each method's steps are N minutes over its seconds per step, measured by a few real steps in a
    child process and kept in <method>.speed.json; a re-run measures nothing and reuses the finished run; a
    method too slow for one step in N minutes is a failed row, and the others go on."""
    from transferkit import compare as ladder
    from transferkit.api import compare

    cfg = tiny_config("eval.baseline=false", "train.eval_every=0")
    out = Path(cfg.output_dir)
    first = compare(cfg, "lora", "minutes=0.02")
    speed = json.loads((out / "lora.speed.json").read_text())
    (row,) = first["rows"]
    seconds = speed["seconds_per_step"]
    assert 0 < seconds < 1.2 and row["planned_steps"] == math.floor(60 * 0.02 / seconds)  # as timed_steps plans
    summary = json.loads((out / "lora" / "summary.json").read_text())
    assert row["steps"] == summary["steps"] <= row["planned_steps"] and first["steps"] is None
    assert summary["steps"] == row["planned_steps"] or summary["out_of_time"]
    assert "minutes=0.02 of training per method" in ladder.format_table(first)

    def must_not_measure(*args):
        raise AssertionError("measured again")

    monkeypatch.setattr(ladder, "measure_steps", must_not_measure)
    calls, real_plan = [], ladder.plan_run
    monkeypatch.setattr(ladder, "plan_run", lambda c: calls.append(real_plan(c)) or calls[-1])
    assert compare(cfg, "lora", "minutes=0.02")["rows"] == first["rows"] and calls == ["finished"]

    step_seconds = {"full": [119.0, 121.0], "ia3": [0.5, 1.5]}  # means: 120 s and 1 s
    monkeypatch.setattr(ladder, "measure_steps", lambda cfg, steps, who: Measured(0, step_seconds[cfg.method.name],
                                                                                  [0] * (steps + 1)))
    result = compare(cfg, "full,ia3", "minutes=0.1")
    rows = {r["method"]: r for r in result["rows"]}
    assert rows["full"]["failed"] == "--budget minutes=0.1 holds no whole optimizer step of full (measured 120.0 s " \
                                     "per step here)"
    assert rows["ia3"]["planned_steps"] == 6 and rows["ia3"]["steps"] >= 1


def test_the_comparison_report_shows_comparison_json_in_a_browser(compared):
    from browser import find_chromium, lookup, numbers_in, open_page

    cfg, result = compared
    page = Path(cfg.output_dir) / "report.html"
    html = page.read_text(encoding="utf-8")
    assert 'href="lora/report.html"' in html and "failed: " in html and "<script" not in html
    found = numbers_in(html)
    assert {"rows.0.score", "rows.0.predicted_peak_bytes", "rows.1.train_s"} <= {k for k, _ in found}
    assert all(value == lookup(result, key) for key, value in found)
    assert all(r["predicted_peak_bytes"] > 0 for r in result["rows"] if "failed" not in r)  # trained on this CPU
    if find_chromium() is None:
        pytest.skip("no Chromium here: `bash scripts/setup.sh --browser` installs Debian's chromium")
    dom, console = open_page(page, Path(__file__).resolve().parents[1] / "test-artifacts" / "comparison.png")
    assert console == [] and all(value == lookup(result, key) for key, value in numbers_in(dom))


def test_a_run_killed_by_the_kernel_is_recorded_as_killed(tiny_config, monkeypatch):
    """An out-of-memory kill (SIGKILL) leaves a progress bar as the child's last output: the row says killed."""
    import io

    from transferkit import compare as ladder

    class Killed:
        def __init__(self, *args, **kwargs):
            self.stderr = io.BytesIO("train:  40%|████      | 2/5 [00:01<00:01]\r".encode())

        def wait(self):
            return -9

    monkeypatch.setattr(ladder.subprocess, "Popen", Killed)
    cfg = tiny_config("eval.baseline=false")
    result = ladder.compare(cfg, ["lora"], ladder.Budget("steps", 2), 0.0)
    assert result["rows"] == [{"method": "lora", "run": str(Path(cfg.output_dir) / "lora"),
                               "failed": "killed by signal 9 (as the kernel's out-of-memory killer does)"}]
    assert result["advice"].startswith("No method finished")
