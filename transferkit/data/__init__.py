"""Data: read any supported file, detect and validate the task schema, tokenize, batch and pack.

    readers.py    rows of .jsonl/.json/.csv/.parquet/.txt files and saved HF datasets, with file and line
    schema.py     detect the task schema from the columns, validate every row into an `Example`
    tokenize.py   chat-template rendering with completion-only labels; plain text; classes
    splits.py     `load_splits`: train / validation / test, tokenized, with the facts worth printing
    batching.py   length-grouped batches, padding and packing
    general.py    general English for forgetting, replay and the EWC Fisher
    synthetic.py  tasks the project generates itself (quickstart, topics)
"""

from ..errors import DataError
from .readers import Row, read_rows
from .schema import Example
from .splits import TASK_OF_SCHEMA, Split, Splits, load_splits, read_examples, read_train

__all__ = ["TASK_OF_SCHEMA", "read_train", "Row", "read_rows", "Example", "Split", "Splits", "load_splits",
           "read_examples", "DataError"]
