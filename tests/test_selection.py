"""Model selection (`train.select`, `train.patience`): the best validation's weights are the ones a run ends
with, and a run out of patience stops."""

import json
from pathlib import Path

import pytest
import torch

from transferkit.train.selection import Selection


def test_selection_scores_by_direction_ties_go_later_and_a_repeat_is_not_scored():
    model = torch.nn.Linear(2, 1)
    accuracy = Selection()
    for step, value in [(1, 0.5), (2, 0.7), (3, 0.6), (4, 0.7)]:
        accuracy.observe(step, {"accuracy": value}, "accuracy", model)
    assert (accuracy.best_step, accuracy.best_value, accuracy.since_best) == (4, 0.7, 0)  # the tie went later
    perplexity = Selection()
    for step, value in [(1, 9.0), (2, 5.0), (3, 6.0), (3, 1.0), (4, 7.0)]:
        perplexity.observe(step, {"perplexity": value, "loss": 0.0}, "perplexity", model)
    assert (perplexity.best_step, perplexity.best_value) == (2, 5.0)  # lower wins; step 3's repeat is ignored
    assert perplexity.since_best == 2 and perplexity.exhausted(2) and not perplexity.exhausted(3)
    assert not perplexity.exhausted(0)  # patience 0: never


def test_best_weights_are_a_copy_and_come_back():
    model = torch.nn.Linear(2, 1)
    selection = Selection()
    selection.observe(1, {"accuracy": 0.9}, "accuracy", model)
    kept = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)  # training moves on in place
    selection.observe(2, {"accuracy": 0.1}, "accuracy", model)
    assert not torch.equal(model.weight, kept)
    selection.restore_best(model)
    assert torch.equal(model.weight, kept)
    assert Selection(keep_weights=False).observe(1, {"accuracy": 1.0}, "accuracy", model) is True


def events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_run_whose_last_step_is_worse_reports_the_best_one(tiny_config, quick_data):
    """At a learning rate far too high (no warmup, no decay) validation perplexity is best early and worse at the
    end; the run must end with the best validation's weights: the adapter, the summary's validation and test
    figures all belong to that step, and `select: last` on the same run keeps the final step's."""
    from transferkit import evaluate_run, train

    common = ("train.max_steps=8", "train.eval_every=1", "train.save_every=0", "train.lr=0.3", "train.warmup_ratio=0",
              "train.min_lr_ratio=1", "eval.baseline=false", "eval.exact_match=false", "train.max_bad_steps=8")
    best_cfg = tiny_config(*common, "train.select=best")
    best = train(best_cfg)
    run = Path(best_cfg.output_dir)
    scored = {e["step"]: e["perplexity"] for e in events(run) if e["event"] == "eval"}
    final = max(scored)
    chosen = best["selection"]["chosen_step"]
    assert scored[chosen] == min(scored.values()) and scored[final] > scored[chosen], scored
    assert best["selection"] == {"select": "best", "metric": "perplexity", "best_step": chosen,
                                 "best_value": scored[chosen], "chosen_step": chosen}
    assert best["validation"]["perplexity"] == scored[chosen]
    # The adapter holds the chosen weights: evaluated again, it gives the chosen step's validation figures.
    again, _ = evaluate_run(str(quick_data["validation"]), run_dir=str(run), precision="fp32")
    assert again["metrics"]["perplexity"] == pytest.approx(scored[chosen], rel=1e-5)

    last_cfg = tiny_config(*common, "train.select=last", f"output_dir={run.parent / 'last'}")
    last = train(last_cfg)
    assert last["selection"]["chosen_step"] == final and last["selection"]["best_step"] == chosen
    assert last["validation"]["perplexity"] == pytest.approx(scored[final], rel=1e-6)
    assert last["test"]["loss"] != pytest.approx(best["test"]["loss"], rel=1e-3)


RIG = ("train.max_steps=8", "train.eval_every=1", "train.lr=0.3", "train.warmup_ratio=0", "train.min_lr_ratio=1",
       "eval.baseline=false", "eval.exact_match=false", "train.max_bad_steps=8")


def test_patience_stops_the_run_after_that_many_validations_without_improvement(tiny_config):
    from transferkit import train

    cfg = tiny_config(*RIG, "train.save_every=0", "train.patience=2")
    summary = train(cfg)
    scored = [(e["step"], e["perplexity"]) for e in events(Path(cfg.output_dir)) if e["event"] == "eval"]
    best_step = summary["selection"]["best_step"]
    after = [value for step, value in scored if step > best_step]
    assert summary["stopped_early"] and summary["steps"] == best_step + 2 < 8, scored
    assert len(after) >= 2 and all(value > summary["selection"]["best_value"] for value in after)
    assert summary["selection"]["chosen_step"] == best_step
    # The step it stopped at was validated once, in the loop; finish reuses that validation.
    assert [step for step, _ in scored] == list(range(1, summary["steps"] + 1))
    assert summary["validation"]["perplexity"] == summary["selection"]["best_value"]


def test_a_resumed_run_selects_as_the_straight_one(tiny_config, tmp_path, monkeypatch):
    """The best weights and counters travel in the checkpoints: a crash at step 7, resumed from step 6,
    ends with the same chosen step and the same test figures as the uninterrupted run."""
    from tiny import crash_and_resume

    from transferkit import train

    common = (*RIG, "train.save_every=2")
    straight = train(tiny_config(*common, f"output_dir={tmp_path / 'straight'}"))
    resumed = crash_and_resume(train, tiny_config(*common, f"output_dir={tmp_path / 'resumed'}"), monkeypatch,
                               crash_at=7)
    assert resumed["resumed_from_step"] == 6 and straight["selection"]["chosen_step"] < 6
    assert resumed["selection"] == pytest.approx(straight["selection"])
    assert resumed["test"]["loss"] == pytest.approx(straight["test"]["loss"], rel=1e-5)


class StepClock:
    """The loop's clock, advanced `seconds` by every optimizer step: training time without waiting for it."""

    def __init__(self, loop, monkeypatch, seconds: float):
        self.now, real_step = 0.0, loop.optimizer_step

        def timed_step(*args, **kwargs):
            self.now += seconds
            return real_step(*args, **kwargs)

        monkeypatch.setattr(loop, "optimizer_step", timed_step)
        monkeypatch.setattr(loop, "time", type("Clock", (), {"perf_counter": lambda _: self.now})())


def test_max_minutes_ends_the_run_at_the_step_that_crosses_it(tiny_config, tmp_path, monkeypatch):
    from transferkit import train
    from transferkit.train import loop

    StepClock(loop, monkeypatch, seconds=10.0)
    summary = train(tiny_config("train.max_steps=8", "train.max_minutes=0.5", "train.eval_every=0"))
    assert summary["steps"] == 3 and summary["out_of_time"] and not summary["stopped_early"]
    assert summary["test"]["loss"] > 0  # it finished as a run does: evaluated, summary written
    uncapped = train(tiny_config("train.max_steps=8", "train.max_minutes=5", "train.eval_every=0",
                                 f"output_dir={tmp_path / 'uncapped'}"))
    assert uncapped["steps"] == 8 and not uncapped["out_of_time"]


def test_a_resumed_run_counts_its_earlier_minutes(tiny_config, tmp_path, monkeypatch):
    """60 s allowed at 10 s a step: a crash during step 5, resumed from the checkpoint after step 4 (40 s used),
    still ends after step 6, as the uninterrupted run does."""
    from tiny import crash_and_resume

    from transferkit import train
    from transferkit.train import loop

    StepClock(loop, monkeypatch, seconds=10.0)
    common = ("train.max_steps=8", "train.max_minutes=1", "train.eval_every=0", "train.save_every=2")
    straight = train(tiny_config(*common, f"output_dir={tmp_path / 'straight'}"))
    resumed = crash_and_resume(train, tiny_config(*common, f"output_dir={tmp_path / 'resumed'}"), monkeypatch,
                               crash_at=5)
    assert straight["steps"] == resumed["steps"] == 6 and resumed["resumed_from_step"] == 4
    assert resumed["out_of_time"]
