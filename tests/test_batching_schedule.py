import math

import pytest
import torch

from transferkit.data.batching import collate, length_grouped_batches
from transferkit.data.tokenize import IGNORE, Tokenized
from transferkit.train.schedule import lr_multiplier, warmup_steps


def test_length_grouped_batches_cover_everything_once_and_group_lengths():
    lengths = [(i * 37) % 101 + 1 for i in range(200)]
    batches = length_grouped_batches(lengths, batch_size=8, seed=0, epoch=0, window=5)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(200))
    assert len(batches) == math.ceil(200 / 8)
    # Grouping keeps the spread inside a batch far below the spread of the data.
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 0.25 * (max(lengths) - min(lengths))


def test_batch_order_is_a_function_of_seed_and_epoch():
    lengths = list(range(1, 50))
    a = length_grouped_batches(lengths, 4, seed=1, epoch=0)
    assert a == length_grouped_batches(lengths, 4, seed=1, epoch=0)
    assert a != length_grouped_batches(lengths, 4, seed=1, epoch=1)
    assert a != length_grouped_batches(lengths, 4, seed=2, epoch=0)


def test_collate_pads_right_and_masks_padding():
    items = [Tokenized([5, 6, 7], [IGNORE, 6, 7], "a:1"), Tokenized([8], [8], "a:2")]
    batch = collate(items, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]


def test_schedule_warmup_then_cosine_to_floor():
    total, warm = 100, warmup_steps(100, 0.1)
    values = [lr_multiplier(s, total, warm, 0.1) for s in range(total + 1)]
    assert warm == 10
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(values[:9], values[1:10]))          # warmup rises
    assert all(a >= b for a, b in zip(values[10:], values[11:]))         # cosine falls
    assert values[10] == pytest.approx(1.0)
    assert values[55] == pytest.approx(0.1 + 0.9 * 0.5, abs=1e-9)        # half-way: cos(pi/2) = 0
    assert values[100] == pytest.approx(0.1)


def test_schedule_drives_lambda_lr():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_multiplier(s, 10, 2, 0.0))
    seen = []
    for _ in range(10):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[:2] == [0.5, 1.0] and seen[-1] < 0.05


def test_attention_choice():
    from transferkit.train.hardware import pick_attention

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert pick_attention("auto", cpu, 300) == "eager"
    assert pick_attention("auto", cpu, 2048) == "sdpa"   # eager would hold [B, heads, T, T] scores per layer
    assert pick_attention("auto", cuda, 300) == "sdpa"
    assert pick_attention("sdpa", cpu, 10) == "sdpa"
