"""Replay: general text mixed into every training step, against forgetting.

`forgetting.replay = r` is the share of each step's *labelled tokens* (its loss terms) that come from general
text. The task part of a step is unchanged — `train.batch_size` task sequences, the same examples as without
replay — and general sequences are added until they hold

    n_general = round(n_task · r / (1 − r))          labelled tokens (n_task: the step's task tokens)

the last one cut so that the count is exact. A share of sequences would not do: a general paragraph holds
~85 labelled tokens against ~27 per quickstart answer, so "25 % of the sequences" is about half the loss.
Which general sequences a step gets depends only on (seed, step), so a resumed run replays exactly what the
uninterrupted one would.
"""

from __future__ import annotations

import random

from ..data.tokenize import Tokenized


def replay_units(task_units: int, share: float) -> int:
    """General-text labelled tokens for a step whose task part has `task_units` (n_general above)."""
    if share <= 0:
        return 0
    return round(task_units * share / (1 - share))


def replay_order(step: int, pool_size: int, seed: int) -> list[int]:
    """The order in which step `step` draws pool sequences: a permutation, seeded by (seed, step)."""
    order = list(range(pool_size))
    random.Random(seed * 1_000_003 + step).shuffle(order)
    return order


def replay_sequences(pool: list[Tokenized], step: int, units: int, seed: int) -> list[Tokenized]:
    """General sequences holding exactly `units` labelled tokens, drawn in `replay_order` (cycling through the
    pool if it is too small); the last one is cut to fit."""
    chosen: list[Tokenized] = []
    order = [i for i in replay_order(step, len(pool), seed) if pool[i].num_labels]
    needed, drawn = units, 0
    while needed > 0 and order:
        sequence = pool[order[drawn % len(order)]]
        drawn += 1
        if sequence.num_labels > needed:  # keep needed + 1 tokens: the first is never a loss term
            sequence = Tokenized(sequence.input_ids[: needed + 1], sequence.labels[: needed + 1], sequence.where,
                                 truncated=True)
        chosen.append(sequence)
        needed -= sequence.num_labels
    return chosen
