"""Adaptation methods: one module per method, each registering itself in `registry.py`.

Importing this package imports every method module, so the registry is complete. The contract
(apply / save / load, traits) is in `registry.py`; `adapter.py` is the template of a method of our own,
`lora.py` of one through `peft`. Adding a method: a module that calls `register(Method(...))`, imported
below, and its rows in tests/test_methods_matrix.py.
"""

from . import adapter, freeze, full, ia3, lora, prefix, probe, prompt, qlora  # noqa: F401  (each registers itself)
from .registry import Method, check_task, get_method, method_config_from_dict, method_names, register

__all__ = ["Method", "check_task", "get_method", "method_config_from_dict", "method_names", "register"]
