"""Parameter counts by arithmetic on a model's config: the closed forms of the methods that train the
model's own weights (full, freeze), written from the architectures' definitions, not by walking the
instantiated model, so a count that disagrees with the instantiated one is a real finding.

With hidden size h, heads n_h, key/value heads n_kv, head size d, MLP width I, vocabulary V, L blocks:

    Llama-like block    q, k, v, o:  h·n_h·d + 2·h·n_kv·d + n_h·d·h   (+ biases: Qwen2 q/k/v, Llama attention_bias)
                        MLP:         3·h·I                           (gate, up, down; + biases with mlp_bias)
                        two RMSNorm: 2·h
    Llama-like rest     embeddings V·h; final RMSNorm h; LM head V·h unless tied to the embeddings;
                        a classifier's head h·C (no bias)
    BERT block          q, k, v, attention output: 4·(h² + h); two LayerNorms 4·h; MLP h·I + I + I·h + h
    BERT rest           embeddings (V + positions + token types)·h + LayerNorm 2·h; classifier h·C + C;
                        the pooler h² + h only with `pooling: pooler`
"""

from __future__ import annotations

from dataclasses import dataclass

from .targets import LLAMA_LIKE


@dataclass(frozen=True)
class Layout:
    """Parameters of one model, by part."""

    embeddings: int   # input embeddings (with positions, token types and their norm for BERT)
    block: int        # one transformer block
    blocks: int       # how many blocks
    final: int        # after the last block, before the head: final norm (decoders), pooler (BERT)
    head: int         # the output or task head; 0 when it is the input embedding (tied)

    @property
    def total(self) -> int:
        return self.embeddings + self.blocks * self.block + self.final + self.head


def _llama_block(c) -> int:
    h, heads = c.hidden_size, c.num_attention_heads
    kv, d = getattr(c, "num_key_value_heads", None) or heads, getattr(c, "head_dim", None) or h // heads
    attention = h * heads * d + 2 * h * kv * d + heads * d * h
    if c.model_type == "qwen2":
        attention += heads * d + 2 * kv * d                  # q, k, v biases
    elif getattr(c, "attention_bias", False):
        attention += heads * d + 2 * kv * d + h              # q, k, v and o biases
    mlp = 3 * h * c.intermediate_size + (2 * c.intermediate_size + h if getattr(c, "mlp_bias", False) else 0)
    return attention + mlp + 2 * h


def _bert_block(c) -> int:
    h, inner = c.hidden_size, c.intermediate_size
    return 4 * (h * h + h) + 4 * h + (h * inner + inner) + (inner * h + h)


def layout(config, task: str, num_labels: int = 0, pooling: str | None = None) -> Layout | None:
    """The parameter layout of a model with `config` loaded for `task` (None for a family not written here);
    a classifier keeps BERT's pooler only when it pools with it (`pooling: pooler`)."""
    h, vocab = config.hidden_size, config.vocab_size
    if config.model_type in LLAMA_LIKE:
        tied = getattr(config, "tie_word_embeddings", False)
        head = h * num_labels if task == "classification" else (0 if tied else vocab * h)
        return Layout(vocab * h, _llama_block(config), config.num_hidden_layers, h, head)
    if config.model_type == "bert":
        embeddings = (vocab + config.max_position_embeddings + config.type_vocab_size) * h + 2 * h
        head = h * num_labels + num_labels if task == "classification" else 0
        pooler = h * h + h if task == "classification" and pooling == "pooler" else 0
        return Layout(embeddings, _bert_block(config), config.num_hidden_layers, pooler, head)
    return None
