"""Tokenize examples for causal-LM training with completion-only labels.

Instruction examples are rendered with the model's chat template; only the
assistant turns (their content and the end-of-turn token the template puts
after it) carry labels, every other position is IGNORE (-100). Plain text is
tokenized whole and split into `max_length` chunks, every token labelled.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import DataError
from .schema import Example

IGNORE = -100

# Used only when a tokenizer ships no chat template (base models, tiny test
# models): a minimal ChatML so prompts and completions stay delimited.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Tokenized:
    input_ids: list[int]
    labels: list[int]          # causal LM: same length, IGNORE where no loss is taken; classification: [class]
    where: str                 # "file:line" of the source row
    truncated: bool = False
    per_example: bool = False  # classification, preference: one loss unit for the whole example
    # preference: input_ids / labels hold prompt + chosen; these prompt + rejected, labels on the answer only
    rejected: tuple[list[int], list[int]] | None = None
    # preference: the reference model's summed answer log-probabilities (chosen, rejected), once computed
    reference: tuple[float, float] | None = None

    @property
    def tokens(self) -> int:
        """Tokens the model reads for this example (both sides of a pair)."""
        return len(self.input_ids) + (len(self.rejected[0]) if self.rejected is not None else 0)

    @property
    def num_labels(self) -> int:
        """The loss units this sequence adds: 1 for a classification example; for causal LM the predicted tokens.
        Token t is predicted from position t − 1, so a label on the first position is never a loss term."""
        if self.per_example:
            return 1
        return sum(1 for t in self.labels[1:] if t != IGNORE)


def ensure_chat_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE


def encode_chat(tokenizer, messages, *, add_generation_prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def tokenize_instruction(tokenizer, example: Example) -> tuple[list[int], list[int]]:
    """Token ids of the whole conversation and labels on assistant turns only."""
    messages = list(example.messages)
    input_ids = encode_chat(tokenizer, messages, add_generation_prompt=False)
    labels = [IGNORE] * len(input_ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        # The turn's tokens are the difference between the conversation up to
        # it (ending in the generation prompt) and the conversation including it.
        start = len(encode_chat(tokenizer, messages[:i], add_generation_prompt=True))
        upto = encode_chat(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if input_ids[: len(upto)] != upto or start > len(upto):
            raise DataError(example.source, "the chat template does not render this conversation as a prefix of "
                            "its continuation, so turns cannot be masked exactly", example.line, "messages")
        labels[start: len(upto)] = input_ids[start: len(upto)]
    return input_ids, labels


def tokenize_preference(tokenizer, example: Example) -> tuple[tuple[list[int], list[int]], tuple[list[int], list[int]]]:
    """(ids, labels) of prompt + chosen and of prompt + rejected: the same prompt tokens, labels on the answer only
    (what `objectives.preference.pair_logprobs` sums)."""
    sides = []
    for answer in (example.chosen, example.rejected):
        turns = (*example.messages, {"role": "assistant", "content": answer})
        sides.append(tokenize_instruction(tokenizer, dataclasses.replace(example, messages=turns)))
    return sides[0], sides[1]


def tokenize_pair(tokenizer, example: Example, max_length: int, overlong: str) -> Tokenized:
    """A preference pair as one `Tokenized`; a pair whose prompt leaves an answer no token within `max_length`
    is an error naming the prompt (truncating it would compare nothing)."""
    (chosen, chosen_labels), (rejected, rejected_labels) = tokenize_preference(tokenizer, example)
    truncated = check_length(example, max(len(chosen), len(rejected)), max_length, overlong)
    for labels, side in ((chosen_labels, "chosen"), (rejected_labels, "rejected")):
        if all(t == IGNORE for t in labels[1:max_length]):
            raise DataError(example.source, f"the prompt fills data.max_length={max_length} tokens: no token of the "
                            f"{side} answer is left to compare (shorten the prompt or raise data.max_length)",
                            example.line, "prompt")
    return Tokenized(chosen[:max_length], chosen_labels[:max_length], example.where, truncated, per_example=True,
                     rejected=(rejected[:max_length], rejected_labels[:max_length]))


def check_length(example: Example, length: int, max_length: int, overlong: str) -> bool:
    """Whether the example must be truncated; with `data.overlong=error`, an error naming its line instead."""
    if length > max_length and overlong == "error":
        raise DataError(example.source, f"example is {length} tokens, longer than data.max_length={max_length} "
                        "(set data.overlong=truncate to cut it)", example.line)
    return length > max_length


def tokenize_examples(tokenizer, examples: list[Example], schema: str, max_length: int,
                      overlong: str = "truncate", labels: list[str] | None = None) -> list[Tokenized]:
    """Token ids and labels: next-token labels for instruction/lm, [class index] for classification."""
    out: list[Tokenized] = []
    if schema == "instruction":
        ensure_chat_template(tokenizer)
        for ex in examples:
            ids, labels = tokenize_instruction(tokenizer, ex)
            truncated = check_length(ex, len(ids), max_length, overlong)
            out.append(Tokenized(ids[:max_length], labels[:max_length], ex.where, truncated))
    elif schema == "preference":
        ensure_chat_template(tokenizer)
        out.extend(tokenize_pair(tokenizer, ex, max_length, overlong) for ex in examples)
    elif schema == "lm":
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        for ex in examples:
            ids = tokenizer(ex.text, add_special_tokens=True)["input_ids"] + eos
            # Long texts are split, not cut: every token is trained on.
            for start in range(0, len(ids), max_length):
                chunk = ids[start: start + max_length]
                if len(chunk) > 1:
                    out.append(Tokenized(chunk, list(chunk), ex.where))
    elif schema == "classification":
        index = {name: i for i, name in enumerate(labels or [])}
        for ex in examples:
            ids = tokenizer(ex.text, ex.text_pair, add_special_tokens=True)["input_ids"]
            truncated = check_length(ex, len(ids), max_length, overlong)
            # One label per example: the class index (loss is normalised by examples).
            out.append(Tokenized(ids[:max_length], [index[ex.label]], ex.where, truncated, per_example=True))
    else:
        raise ValueError(f"cannot tokenize schema {schema!r}")
    return out


def check_has_labels(tokenized: list[Tokenized], source: str) -> int:
    """Preflight: refuse data in which masking left nothing to learn."""
    total = sum(t.num_labels for t in tokenized)
    if total == 0:
        truncated = sum(t.truncated for t in tokenized)
        raise DataError(source, f"after masking, no token carries a label (all completions empty or truncated away; "
                        f"{truncated} of {len(tokenized)} examples were cut at data.max_length); nothing to train on")
    return total
