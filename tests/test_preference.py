"""Preference pairs (issue 19's foundation): rows validated into pairs, the pair tokenized with labels on the answer
only, and the DPO / cDPO / IPO / SFT-term losses against hand computations and in a real gradient step."""

from __future__ import annotations

import math

import pytest
import torch

from transferkit.data.readers import Row
from transferkit.data.schema import to_example
from transferkit.errors import DataError
from transferkit.objectives.preference import PairLogProbs, pair_logprobs, preference_loss


def planted(chosen=-10.0, rejected=-12.0, chosen_tokens=4, rejected_tokens=2) -> PairLogProbs:
    return PairLogProbs(torch.tensor([chosen]), torch.tensor([rejected]), torch.tensor([chosen_tokens]),
                        torch.tensor([rejected_tokens]))


REFERENCE = planted(-11.0, -11.0)


@pytest.mark.parametrize("smoothing", [0.0, 0.2, 0.5])
def test_at_initialisation_the_sigmoid_loss_is_log_2(smoothing):
    same = planted(-7.5, -3.25)
    out = preference_loss(same, same, beta=0.3, label_smoothing=smoothing)
    assert out.losses.item() == pytest.approx(math.log(2))
    assert out.metrics()["reward_margin"] == 0 and out.metrics()["reward_accuracy"] == 0


def test_each_loss_equals_its_hand_computation():
    # h = (−10 − −11) − (−12 − −11) = 2; β = 0.5 → β h = 1
    dpo = preference_loss(planted(), REFERENCE, beta=0.5)
    assert dpo.losses.item() == pytest.approx(math.log(1 + math.exp(-1)))
    cdpo = preference_loss(planted(), REFERENCE, beta=0.5, label_smoothing=0.2)
    assert cdpo.losses.item() == pytest.approx(0.8 * math.log(1 + math.exp(-1)) + 0.2 * math.log(1 + math.exp(1)))
    # IPO on per-token averages: h̄ = 1/4 − (−1)/2 = 0.75; 1/(2β) = 1
    ipo = preference_loss(planted(), REFERENCE, loss="ipo", beta=0.5)
    assert ipo.losses.item() == pytest.approx((0.75 - 1) ** 2)
    # the SFT term: α × the chosen answer's mean token NLL = 0.5 × 10/4
    rpo = preference_loss(planted(), REFERENCE, beta=0.5, sft_weight=0.5)
    assert rpo.losses.item() == pytest.approx(math.log(1 + math.exp(-1)) + 1.25)
    assert dpo.metrics() == pytest.approx({"loss": math.log(1 + math.exp(-1)), "reward_accuracy": 1.0,
                                           "reward_margin": 1.0, "chosen_reward": 0.5, "rejected_reward": -0.5})
    with pytest.raises(ValueError, match="unknown preference loss"):
        preference_loss(planted(), REFERENCE, loss="kto")


def pairs_batch(tokenizer, rows: list[dict]) -> dict[str, torch.Tensor]:
    from transferkit.data.batching import collate
    from transferkit.data.tokenize import Tokenized, tokenize_preference

    chosen, rejected = [], []
    for i, fields in enumerate(rows):
        (c_ids, c_labels), (r_ids, r_labels) = tokenize_preference(tokenizer, to_example(Row("p.jsonl", i + 1, fields),
                                                                                         "preference"))
        chosen.append(Tokenized(c_ids, c_labels, f"p.jsonl:{i + 1}"))
        rejected.append(Tokenized(r_ids, r_labels, f"p.jsonl:{i + 1}"))
    return collate(chosen + rejected, tokenizer.pad_token_id)


PAIRS = [{"prompt": "Convert to a JSON record: Ana, 34", "chosen": '{"name": "Ana", "age": 34}',
          "rejected": '{"name": "Ana", "age": 43}'},
         {"prompt": [{"role": "user", "content": "hello world"}], "chosen": [{"role": "assistant", "content": "hello"}],
          "rejected": {"role": "assistant", "content": "what is two plus two"}}]


def test_a_dpo_step_raises_the_chosen_answer_relative_to_the_rejected(tokenizer):
    from tiny import tiny_llama

    model = tiny_llama(len(tokenizer), seed=3)
    batch = pairs_batch(tokenizer, PAIRS)
    with torch.no_grad():
        reference = pair_logprobs(model, batch)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    policy = pair_logprobs(model, batch)
    torch.testing.assert_close(policy.chosen, reference.chosen)
    out = preference_loss(policy, reference, beta=0.1)
    assert out.losses.mean().item() == pytest.approx(math.log(2), abs=1e-6)
    out.losses.mean().backward()
    optimizer.step()
    with torch.no_grad():
        after = pair_logprobs(model, batch)
    assert ((after.chosen - after.rejected) > (reference.chosen - reference.rejected)).all()
    # what was summed: the answers' tokens only, the prompt's never
    labelled = (batch["labels"][:, 1:] != -100).sum(1)
    assert torch.equal(policy.chosen_tokens, labelled[:2]) and torch.equal(policy.rejected_tokens, labelled[2:])
    assert (policy.chosen_tokens > 0).all() and (policy.rejected_tokens > 0).all()


def test_the_pair_shares_its_prompt_and_labels_only_the_answer(tokenizer):
    from transferkit.data.tokenize import tokenize_preference

    example = to_example(Row("p.jsonl", 1, PAIRS[0]), "preference")
    (c_ids, c_labels), (r_ids, r_labels) = tokenize_preference(tokenizer, example)
    first_c = next(i for i, label in enumerate(c_labels) if label != -100)
    first_r = next(i for i, label in enumerate(r_labels) if label != -100)
    assert first_c == first_r and c_ids[:first_c] == r_ids[:first_r]
    assert tokenizer.decode([t for t in c_labels if t != -100]).startswith(PAIRS[0]["chosen"])


BAD_ROWS = [  # (fields, field named, words)
    ({"prompt": "p", "chosen": "same", "rejected": "same"}, "rejected", "nothing to prefer"),
    ({"prompt": "p", "chosen": " ", "rejected": "b"}, "chosen", "is empty"),
    ({"prompt": "", "chosen": "a", "rejected": "b"}, "prompt", "is empty"),
    ({"prompt": "p", "chosen": "a"}, "rejected", "missing required field"),
    ({"prompt": "p", "chosen": 3, "rejected": "b"}, "chosen", "must be a string"),
    ({"prompt": "p", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}, "chosen.role", "assistant"),
    ({"prompt": "p", "chosen": [{"role": "assistant", "content": "a"}] * 2, "rejected": "b"}, "chosen", "one assistant"),
    ({"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "chosen": "a",
      "rejected": "b"}, "prompt", "user"),
]


@pytest.mark.parametrize("fields, field, words", BAD_ROWS)
def test_bad_preference_rows_name_file_line_and_field(fields, field, words):
    with pytest.raises(DataError) as error:
        to_example(Row("prefs.jsonl", 7, fields), "preference")
    assert error.value.line == 7 and error.value.field == field and words in str(error.value)
    assert "prefs.jsonl" in str(error.value)
