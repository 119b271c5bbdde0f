"""Learning-rate schedule: linear warmup, then cosine decay to a floor.

    lr(s) = lr_max · s / W                                    for s < W
    lr(s) = lr_max · (m + (1 − m) · ½(1 + cos(π · p)))        otherwise,
            p = (s − W) / (S − W)

with W warmup steps, S total steps and m = min_lr_ratio (Loshchilov & Hutter
2017, SGDR, without restarts). Returned as a multiplier for `LambdaLR`.
"""

from __future__ import annotations

import math


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    return int(round(total_steps * warmup_ratio))


def lr_multiplier(step: int, total_steps: int, warmup: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak lr for optimizer step `step` (0-based)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup  # the first step already moves: lr_max / W, not 0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
