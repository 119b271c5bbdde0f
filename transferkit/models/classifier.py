"""A sequence classifier: a pretrained backbone, a pooling of its last hidden states, a new linear head.

    input_ids, attention_mask [B, T] ─► backbone ─► hidden [B, T, H] ─► pool ─► [B, H] ─► dropout ─► classifier ─► [B, C]

Poolings (`method.pooling`):

    cls     hidden[:, 0]                                  BERT's [CLS] token
    pooler  tanh(W · hidden[:, 0] + b)                    BERT's pretrained pooler (trained for next-sentence prediction)
    mean    Σ_t m_t · hidden[:, t] / Σ_t m_t              over real tokens (m = attention mask); sentence-transformers
    last    hidden[:, last t with m_t = 1]                the last real token: what a decoder has read everything by

`auto` takes what the model declares — a sentence-transformers folder's `modules.json` → `1_Pooling/config.json`
(Reimers & Gurevych 2019) — else the architecture's convention: `last` for decoders (as transformers'
`*ForSequenceClassification` pools them), `mean` for encoders (measured in docs/defaults.md).

transformers' own `AutoModelForSequenceClassification` fixes the pooling per architecture (BERT: `pooler`;
Llama: the last non-padding token), which is wrong for sentence-transformers models, whose pooler was never
trained for their objective. The head follows transformers' conventions otherwise: named `classifier`, normal
init with the config's `initializer_range`, a bias for encoders and none for decoders (as `score`), and BERT's
classifier dropout.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from ..errors import ConfigError

POOLINGS = ("cls", "pooler", "mean", "last")
ST_POOLING_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean",
                   "pooling_mode_lasttoken": "last"}
ENCODER_DEFAULT = "mean"


def declared_pooling(folder: Path) -> str | None:
    """The pooling a sentence-transformers model folder declares (None: it declares none we can honour)."""
    modules = folder / "modules.json"
    if not modules.is_file():
        return None
    try:
        entries = json.loads(modules.read_text())
        pooling = next(e for e in entries if e.get("type", "").endswith(".Pooling"))
        config = json.loads((folder / pooling.get("path", "") / "config.json").read_text())
    except (OSError, json.JSONDecodeError, StopIteration, AttributeError):
        return None
    modes = [mode for key, mode in ST_POOLING_KEYS.items() if config.get(key)]
    return modes[0] if len(modes) == 1 else None


def resolve_pooling(requested: str, folder: Path, decoder: bool) -> str:
    """`requested` unless it is `auto`: then the declared pooling, else the architecture's convention."""
    if requested != "auto":
        if decoder and requested == "pooler":
            raise ConfigError("config key 'method.pooling': 'pooler' needs an encoder with a pretrained pooler "
                              "(BERT-style); decoders pool with last, mean or cls")
        return requested
    return declared_pooling(folder) or ("last" if decoder else ENCODER_DEFAULT)


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str, pooled: torch.Tensor | None = None) -> torch.Tensor:
    """[B, T, H] hidden states, [B, T'] attention mask (T' ≥ T: a prefix's virtual positions come first) → [B, H]."""
    mask = mask[:, mask.shape[1] - hidden.shape[1]:]                          # [B, T]
    if mode == "cls":
        return hidden[:, 0]
    if mode == "pooler":
        if pooled is None:
            raise ConfigError("config key 'method.pooling': this model has no pooler; use cls, mean or last")
        return pooled
    if mode == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)                         # [B, T, 1]
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
    if mode == "last":
        last = mask.long().cumsum(-1).argmax(-1)                              # [B]: the last position with m = 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling {mode!r}")


class SequenceClassifier(nn.Module):
    """backbone → pool → dropout → classifier over `config.num_labels` classes. `config` is the backbone's (it
    holds the labels), as peft expects."""

    supports_gradient_checkpointing = True

    def __init__(self, backbone: nn.Module, pooling: str, decoder: bool):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}")
        self.backbone = backbone
        self.pooling = pooling
        self.config = backbone.config
        hidden = self.config.hidden_size
        rate = getattr(self.config, "classifier_dropout", None) or getattr(self.config, "hidden_dropout_prob", 0.0)
        self.dropout = nn.Dropout(0.0 if decoder else rate)
        self.classifier = nn.Linear(hidden, self.config.num_labels, bias=not decoder)
        self.classifier.weight.data.normal_(0.0, getattr(self.config, "initializer_range", 0.02))
        if self.classifier.bias is not None:
            self.classifier.bias.data.zero_()
        if pooling != "pooler" and getattr(backbone, "pooler", None) is not None:
            backbone.pooler = None  # unused: it would be a frozen passenger with gradients of None

    device = property(lambda self: self.backbone.device)  # what peft's prompt learning asks a model for
    dtype = property(lambda self: self.backbone.dtype)
    is_loaded_in_4bit = property(lambda self: getattr(self.backbone, "is_loaded_in_4bit", False))  # QLoRA's check

    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()

    def set_attn_implementation(self, implementation: str) -> None:
        self.backbone.set_attn_implementation(implementation)

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        self.backbone.gradient_checkpointing_enable(**kwargs)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, past_key_values=None, output_hidden_states: bool = False,
                **_) -> SequenceClassifierOutput:
        """Logits [B, C]. Keyword arguments peft passes (labels, return_dict, …) are accepted and unused: the loss
        is computed by `objectives/`."""
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                            past_key_values=past_key_values, output_hidden_states=output_hidden_states,
                            return_dict=True)
        hidden = out.last_hidden_state                                        # [B, T, H]
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        features = pool(hidden, attention_mask, self.pooling, getattr(out, "pooler_output", None))
        logits = self.classifier(self.dropout(features))
        return SequenceClassifierOutput(logits=logits, hidden_states=out.hidden_states)
