"""Training: `train(cfg)` = setup → fit → finish (`recipe.py`).

    setup.py        data, model, method, optimizer, run directory, the base's measurements
    loop.py         the fit loop and one optimizer step
    finish.py       adapter, evaluation, assessment, summary.json
    optimizer.py    AdamW and its parameter groups;  schedule.py  warmup + cosine
    checkpoint.py   resumable checkpoints, atomic;    signals.py   graceful stop
    regularizers.py EWC / L2-SP;                     replay.py    general text mixed into batches
    hardware.py     micro-batch, attention kernel, bf16 storage, gradient checkpointing by device
    selection.py    the best validation's weights (train.select) and early stopping (train.patience)
    distributed.py  several processes: each rank's share of a step, DDP / FSDP2, the main process writes
"""

from .recipe import train

__all__ = ["train"]
