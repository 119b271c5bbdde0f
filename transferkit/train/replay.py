"""Replay: mix general-text sequences into every training batch, against forgetting.

With `forgetting.replay = r` and `train.batch_size = B`, each optimizer step holds
k = round(r·B) general sequences and B − k task sequences. Which general sequences a step
gets depends only on (seed, step), so a resumed run replays exactly what the uninterrupted one would.
"""

from __future__ import annotations

import random

from ..errors import ConfigError


def replay_count(batch_size: int, fraction: float) -> int:
    """General sequences per step (k above); at least one task and, when asked, one replay sequence."""
    if fraction <= 0:
        return 0
    k = round(fraction * batch_size)
    if k < 1 or k >= batch_size:
        raise ConfigError(f"config key 'forgetting.replay' ({fraction}) gives {k} of {batch_size} sequences per step; "
                          f"it must leave at least one task and one general sequence (raise train.batch_size)")
    return k


def replay_for(task_sequences: int, per_full_batch: int, task_batch: int) -> int:
    """General sequences for a step with `task_sequences` task sequences: k for a full batch, scaled down
    (rounded) for an epoch's smaller last batch, so the fraction holds there too."""
    return round(task_sequences * per_full_batch / task_batch)


def replay_indices(step: int, count: int, pool_size: int, seed: int) -> list[int]:
    """Which pool sequences step `step` replays: distinct when the pool is big enough."""
    rng = random.Random(seed * 1_000_003 + step)
    if count <= pool_size:
        return rng.sample(range(pool_size), count)
    return [rng.randrange(pool_size) for _ in range(count)]
