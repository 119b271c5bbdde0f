"""Model loading: `load(ref) -> (model, tokenizer)`.

`ref` is a packaged short name (`smollm2-135m`, `minilm-l6`), a local Hugging
Face folder, or a `.gguf` file. GGUF weights are converted once into a plain
float checkpoint in the cache folder (see `gguf.py`) and loaded from there.
"""

from .loading import load_model, load_tokenizer, resolve_model
from .packaged import PACKAGED, packaged_names

__all__ = ["load_model", "load_tokenizer", "resolve_model", "PACKAGED", "packaged_names"]
