"""The engine: one worker thread owns the models; requests wait in a queue and run in batches grouped by model.

    HTTP handlers ──submit(Job)──► queue ──► worker: take what is waiting (≤ max_batch)
                                               group by (model, work, decoding)  ← `Job.group_key`
                                               per group: activate its adapter, run the batch
    Job.sink ◄── Delta(text) … Done(reason, usage) | Failed(message) ── called from the worker thread

A family of plain LoRA adapters (`Family.mixable`) batches its adapters and its base together: each row names its
adapter (peft's `adapter_names`; "__base__" for the base), so requests for three adapters are one batch of
decoding steps instead of three. Other families batch one adapter at a time (`set_adapter`).

Generation is `model.generate` on the group's prompts, left-padded (positions follow the attention mask), with
two hooks: `RowStream` receives every step's new tokens and turns each row into its request's text deltas, and
`RowStop` ends a row on its own limit — a stop token, a stop string, its `max_tokens`, or its client gone — so
requests with different limits share a batch and the batch ends when its last row does. A seeded sampled request
runs alone (its randomness must not depend on its neighbours). Greedy answers of a request served in a batch
equal its answer served alone up to float rounding of the padded batch (fp32: identical on the tests' prompts).
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..evaluate.generation import Sampling, left_padded, stop_token_ids
from ..runtime import Runtime, for_inference
from .pool import Served


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Done:
    finish_reason: str          # "stop" (a stop token or string) | "length" (max_tokens)
    prompt_tokens: int
    completion_tokens: int
    result: object = None       # classification: one {"label", "probabilities"} per input


@dataclass(frozen=True)
class Failed:
    message: str


Event = Delta | Done | Failed


@dataclass
class Job:
    """One request's work: a prompt to continue, or texts to classify."""

    served: Served
    sink: Callable[[Event], None]
    prompt_ids: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)           # classification
    max_tokens: int = 16
    sampling: Sampling | None = None                           # None: greedy
    stop: tuple[str, ...] = ()
    cancelled: threading.Event = field(default_factory=threading.Event)

    def group_key(self) -> tuple:
        """Jobs with equal keys run as one batch: the same model — or the same family when its rows can mix
        adapters — the same work and the same decoding."""
        if self.sampling is not None and self.sampling.seed is not None:
            return (self.served.name, "seeded", id(self))
        decoding = None if self.sampling is None else (self.sampling.temperature, self.sampling.top_p)
        model = id(self.served.family) if self.served.family.mixable else self.served.name
        return (model, "classify" if self.texts else "generate", decoding)

    def adapter_name(self) -> str:
        """peft's name of this job's rows in a mixed batch."""
        return self.served.adapter or "__base__"


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """Characters at the end of `text` that may begin a stop string: not sent until the next token decides."""
    return max([k for stop in stops for k in range(1, len(stop)) if text.endswith(stop[:k])], default=0)


class RowStream:
    """generate()'s streamer: each step's new tokens [B] → every live row's text delta, stop and length."""

    def __init__(self, jobs: list[Job], tokenizer, stop_ids: list[int]):
        self.jobs, self.tokenizer, self.stop_ids = jobs, tokenizer, set(stop_ids)
        self.tokens: list[list[int]] = [[] for _ in jobs]
        self.sent = [""] * len(jobs)
        self.reason: list[str | None] = [None] * len(jobs)
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # the first call hands over the prompt
            self.prompt_seen = True
            return
        for row, token in enumerate(value.reshape(len(self.jobs), -1)[:, -1].tolist()):
            if self.reason[row] is None:
                self.step(row, token)

    def step(self, row: int, token: int) -> None:
        job = self.jobs[row]
        if job.cancelled.is_set():
            self.reason[row] = "cancelled"
            return
        if token in self.stop_ids:
            self.finish(row, "stop")
            return
        self.tokens[row].append(token)
        text = self.tokenizer.decode(self.tokens[row], skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in job.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.send(row, text[:cut])
            self.finish(row, "stop")
            return
        if len(self.tokens[row]) >= job.max_tokens:
            self.send(row, text)
            self.finish(row, "length")
            return
        if not text.endswith("\ufffd"):  # an incomplete character waits for its next byte
            self.send(row, text[:len(text) - held_back(text, job.stop)])

    def send(self, row: int, text: str) -> None:
        if len(text) > len(self.sent[row]):
            self.jobs[row].sink(Delta(text[len(self.sent[row]):]))
            self.sent[row] = text

    def finish(self, row: int, reason: str) -> None:
        self.reason[row] = reason
        job = self.jobs[row]
        job.sink(Done(reason, len(job.prompt_ids), len(self.tokens[row])))

    def end(self) -> None:
        """generate() returned: rows it ended (its own length limit) finish as "length"."""
        for row, reason in enumerate(self.reason):
            if reason is None:
                self.send(row, self.tokenizer.decode(self.tokens[row], skip_special_tokens=True))
                self.finish(row, "length")


class RowStop:
    """generate()'s stopping criterion: a row is done when its `RowStream` says so."""

    def __init__(self, stream: RowStream):
        self.stream = stream

    def __call__(self, input_ids: torch.Tensor, scores, **_) -> torch.Tensor:
        return torch.tensor([r is not None for r in self.stream.reason], device=input_ids.device)


@torch.no_grad()
def generate_batch(model, tokenizer, jobs: list[Job], runtime: Runtime, mixed: bool = False) -> None:
    """Continue every job's prompt on `model` (one batch); results go to the jobs' sinks. `mixed`: each row runs
    its own job's adapter (peft's `adapter_names`)."""
    from transformers import StoppingCriteriaList

    stops = stop_token_ids(tokenizer)
    input_ids, attention = left_padded([job.prompt_ids for job in jobs], tokenizer.pad_token_id)
    stream = RowStream(jobs, tokenizer, stops)
    sampling = jobs[0].sampling
    if sampling is not None and sampling.seed is not None:
        torch.manual_seed(sampling.seed)
    decoding = sampling.generate_kwargs() if sampling is not None else {"do_sample": False}
    with for_inference(model), runtime.autocast():
        model.generate(input_ids=input_ids.to(runtime.device), attention_mask=attention.to(runtime.device),
                       max_new_tokens=max(job.max_tokens for job in jobs), eos_token_id=stops,
                       pad_token_id=tokenizer.pad_token_id, streamer=stream,
                       stopping_criteria=StoppingCriteriaList([RowStop(stream)]), **decoding,
                       **({"adapter_names": [job.adapter_name() for job in jobs]} if mixed else {}))
    stream.end()


@torch.no_grad()
def classify_batch(model, tokenizer, jobs: list[Job], runtime: Runtime, mixed: bool = False) -> None:
    """Class probabilities for every job's texts (one batch); `mixed` as for `generate_batch`."""
    texts = [text for job in jobs for text in job.texts]
    rows = {"adapter_names": [job.adapter_name() for job in jobs for _ in job.texts]} if mixed else {}
    batch = tokenizer(texts, padding=True, truncation=True,
                      max_length=jobs[0].served.max_length, return_tensors="pt")
    with for_inference(model), runtime.autocast():
        logits = model(input_ids=batch["input_ids"].to(runtime.device),
                       attention_mask=batch["attention_mask"].to(runtime.device), **rows).logits.float()  # [N, C]
    probabilities = torch.softmax(logits, dim=-1).cpu()
    lengths = batch["attention_mask"].sum(1).tolist()
    start = 0
    for job in jobs:
        labels = job.served.labels
        rows = range(start, start + len(job.texts))
        result = [{"label": labels[int(probabilities[i].argmax())],
                   "probabilities": {label: round(float(p), 6) for label, p in zip(labels, probabilities[i])}}
                  for i in rows]
        job.sink(Done("stop", int(sum(lengths[i] for i in rows)), 0, result))
        start += len(job.texts)


class Engine:
    """The worker thread and its queue. `submit` from any thread; `close` drains and stops it."""

    def __init__(self, runtime: Runtime, max_batch: int = 8, batch_wait_s: float = 0.025):
        self.runtime, self.max_batch, self.batch_wait_s = runtime, max_batch, batch_wait_s
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.batches = 0                         # batches run so far (for /health and the tests)
        self.thread = threading.Thread(target=self.work, name="transferkit-engine", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        self.queue.put(job)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=60)

    def take(self) -> list[Job] | None:
        """At least one job (blocks for it), then whatever else arrives within `batch_wait_s`, at most `max_batch`;
        None when closed. The wait lets clients answered by the last batch join the next one instead of the first
        of them running alone (measured by benchmarks/serve_load.py)."""
        first = self.queue.get()
        if first is None:
            return None
        jobs = [first]
        deadline = time.monotonic() + self.batch_wait_s
        while len(jobs) < self.max_batch:
            try:
                job = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                self.queue.put(None)
                break
            jobs.append(job)
        return jobs

    def work(self) -> None:
        while (jobs := self.take()) is not None:
            groups: dict[tuple, list[Job]] = {}
            for job in jobs:
                if not job.cancelled.is_set():
                    groups.setdefault(job.group_key(), []).append(job)
            for group in groups.values():
                self.run(group)

    def run(self, jobs: list[Job]) -> None:
        family = jobs[0].served.family
        mixed = len({job.adapter_name() for job in jobs}) > 1
        batch = classify_batch if jobs[0].texts else generate_batch
        try:
            with family.activate(None if mixed else jobs[0].served.adapter, mixed) as model:
                batch(model, family.tokenizer, jobs, self.runtime, mixed)
            self.batches += 1
        except Exception as exc:  # noqa: BLE001 — a failed batch answers its requests with 500; the server goes on
            for job in jobs:
                job.sink(Failed(f"{type(exc).__name__}: {exc}"))
