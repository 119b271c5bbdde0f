"""Tiny models and tokenizers built in code: no downloads, milliseconds per step."""

from __future__ import annotations

import json
from pathlib import Path

import torch

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "Convert to a JSON record with keys name, age, city, job:",
    "Ana Silva is a 34-year-old nurse from Lisbon. {\"name\": \"Ana Silva\", \"age\": 34}",
    "the quick brown fox jumps over the lazy dog 0123456789 ,.;:!?()[]{}'\"-_/",
    "hello world, what is two plus two? It is four. user assistant system",
]


def tiny_tokenizer(chat_template: str | None = CHATML):
    """A byte-level BPE tokenizer (~400 tokens) with ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(CORPUS * 4, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  bos_token="<|endoftext|>", unk_token=None)
    tok.chat_template = chat_template
    return tok


SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=256, pad_token_id=0)


def _build(config_cls, model_cls, seed: int, **sizes):
    torch.manual_seed(seed)
    return model_cls(config_cls(**{**SMALL, **sizes}))


def tiny_llama(vocab_size: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    return _build(LlamaConfig, LlamaForCausalLM, seed, vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                  num_key_value_heads=2, tie_word_embeddings=True)


def tiny_llama64(vocab_size: int, seed: int = 0):
    """Hidden size 64: bitsandbytes' CPU NF4 kernels need rows of at least one 64-value block."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return _build(LlamaConfig, LlamaForCausalLM, seed, vocab_size=vocab_size, num_hidden_layers=3,
                  num_key_value_heads=2, tie_word_embeddings=True)


def tiny_qwen2(vocab_size: int, seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return _build(Qwen2Config, Qwen2ForCausalLM, seed, vocab_size=vocab_size, num_key_value_heads=2,
                  tie_word_embeddings=False)


def tiny_bert_classifier(vocab_size: int, seed: int = 0, num_labels: int = 3, pooling: str = "mean"):
    from transformers import BertConfig, BertModel

    from transferkit.models import SequenceClassifier

    backbone = _build(BertConfig, BertModel, seed, vocab_size=vocab_size, num_labels=num_labels)
    torch.manual_seed(seed)
    return SequenceClassifier(backbone, pooling, decoder=False)


def tiny_bert(vocab_size: int, seed: int = 0):
    from transformers import BertConfig, BertModel

    return _build(BertConfig, BertModel, seed, vocab_size=vocab_size)


DECODERS = {"llama": tiny_llama64, "qwen2": tiny_qwen2}


def save_tiny_model_folder(folder: Path, family: str = "llama32") -> Path:
    """An HF folder with a tiny decoder and the tiny tokenizer, usable as `model:`."""
    tok = tiny_tokenizer()
    builders = {"llama32": tiny_llama, "bert": tiny_bert, **DECODERS}
    model = builders[family](len(tok))
    model.save_pretrained(str(folder), safe_serialization=True)
    tok.save_pretrained(str(folder))
    return folder


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def crash_and_resume(train, cfg, monkeypatch, crash_at: int) -> dict:
    """Run `cfg` with the optimizer step numbered `crash_at` raising (a simulated crash mid-run), then resume it
    to the end; returns the resumed run's summary."""
    import pytest

    from transferkit.train import loop

    real_step, calls = loop.optimizer_step, []

    def crashing_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == crash_at:
            raise RuntimeError(f"simulated crash during step {crash_at}")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "optimizer_step", crashing_step)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg)
    monkeypatch.setattr(loop, "optimizer_step", real_step)
    return train(cfg, resume=True)
