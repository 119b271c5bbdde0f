"""Models: `load_model(ref) -> (model, tokenizer, folder)` and what a loaded model is.

`ref` is a packaged short name (`smollm2-135m`, `minilm-l6`), a local Hugging
Face folder, or a `.gguf` file. GGUF weights are converted once into a plain
float checkpoint in the cache folder (see `gguf.py`) and loaded from there.
`classifier` is the sequence classifier (backbone, pooling, new head);
`heads` says what a model is for from its structure; `params` counts its
parameters, each tensor once; `fingerprint` ties an adapter to its base.
"""

from .classifier import POOLINGS, SequenceClassifier
from .heads import task_head_name, task_of, underlying_model
from .loading import architecture, load_model, load_tokenizer, model_type, resolve_model, skeleton_model
from .packaged import PACKAGED, packaged_names
from .params import count_parameters, format_trainable, trainable_parameters, trainable_tensors, unique_parameters

__all__ = ["POOLINGS", "SequenceClassifier", "load_model", "skeleton_model", "load_tokenizer", "resolve_model", "model_type", "architecture", "PACKAGED",
           "packaged_names", "task_head_name", "task_of", "underlying_model", "count_parameters", "format_trainable",
           "trainable_parameters", "trainable_tensors", "unique_parameters"]
