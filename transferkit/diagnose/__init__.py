"""Where did the network change? Layer probes, representational similarity (CKA) and weight change between a
base model and its tuned version (`diagnosis.py`), or the probe curve of one model (`transferkit probe`)."""

from .diagnosis import Sample, diagnose, diagnose_run, parse_layers, pooling_for, probe_model, read_sample, write_diagnostics
from .similarity import cka_matrix, linear_cka
from .weights import weight_changes

__all__ = ["Sample", "cka_matrix", "diagnose", "diagnose_run", "parse_layers", "linear_cka", "pooling_for", "probe_model", "read_sample",
           "weight_changes", "write_diagnostics"]
