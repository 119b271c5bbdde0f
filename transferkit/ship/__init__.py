"""Shipping a run: merged into its base (`merge.py`), exported for peft / vLLM / transformers (`export.py`)."""

from .export import TARGETS, export_run, vllm_problems
from .merge import merge_run

__all__ = ["TARGETS", "export_run", "merge_run", "vllm_problems"]
