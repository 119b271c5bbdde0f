"""The library functions behind the CLI verbs."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .config import load_config, with_method
from .cost import Cost, activations_both_ways, cheapest_fit, estimate
from .data import TASK_OF_SCHEMA, Split, read_examples, read_train
from .data.general import PACKAGED
from .data.overlap import count_overlap, overlap_warnings
from .data.readers import read_rows
from .data.schema import check_known_labels, to_input
from .data.tokenize import Tokenized, tokenize_examples
from .errors import UserError
from .evaluate import evaluate_split, generate_completions
from .evaluate.assessment import Assessment, BaseModel, switched_off
from .evaluate.comparison import label_baselines
from .evaluate.generation import Sampling
from .evaluate.metrics import class_log_probs
from .methods import get_method, method_names
from .models import architecture, load_model, load_tokenizer, resolve_model, task_of
from .report import write_report
from .options import DiagnoseConfig, EvalConfig, RunConfig
from .rundir import RunDir
from .runs import load_trained
from .runtime import Runtime, quiet_libraries, store_frozen_weights
from .train import train as run_training
from .train.distributed import launched_rank

__all__ = ["train", "generate", "evaluate_run", "predict", "load_trained"]


def train(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False) -> dict:
    """Fine-tune as `cfg` says (`train/recipe.py`); returns the summary. Progress goes to the `transferkit`
    logger (the CLI shows it on stdout), never to stdout directly."""
    quiet_libraries()
    if launched_rank() == 0:  # with several processes the main one folds it; the others wait for it in setup
        write_chained_base(cfg.model)
    return run_training(cfg, resume=resume, overwrite=overwrite)


def write_chained_base(ref: str) -> None:
    """A finished run named as the model (SFT first, then DPO on top): its adapter folded into its base once, into
    <run>/merged, which `models.resolve_model` then loads for every run chained on it. `merge_run` checks the
    merged model against the unmerged run before writing (`ship/merge.py`)."""
    run = RunDir(ref)
    if not run.path.is_dir() or not run.config.is_file() or not run.adapter.is_dir():
        return
    if (run.merged / "config.json").is_file():
        return
    from .ship import merge_run

    logging.getLogger("transferkit").info(f"model {ref} is a finished run: folding its adapter into its base once, "
                                          f"into {run.merged}")
    merge_run(run.path, run.merged)


def generate(prompts: list[str], *, model: str | None = None, adapter: str | None = None,
             max_new_tokens: int = 128, precision: str = "auto", system: str | None = None,
             sampling: Sampling | None = None) -> list[str]:
    """Replies to user prompts from a base model or a run's adapter: greedy, or sampled as `sampling` says;
    `system` is a system message put before every prompt."""
    quiet_libraries()
    runtime = Runtime.resolve("auto", precision)
    if adapter is not None:
        lm, tokenizer, _ = load_trained(adapter, runtime.device)
        if task_of(lm) != "causal-lm":
            raise UserError(f"{adapter}: a classification run does not generate text; use `transferkit eval`")
    elif model is not None:
        lm, tokenizer, _ = load_model(model, device=runtime.device)
    else:
        raise ValueError("give a model or an adapter run directory")
    first = [{"role": "system", "content": system}] if system else []
    chats = [[*first, {"role": "user", "content": p}] for p in prompts]
    return generate_completions(lm, tokenizer, chats, max_new_tokens=max_new_tokens, batch_size=8, runtime=runtime,
                                sampling=sampling)


@dataclass
class Evaluated:
    """The model `eval` scores: a finished run's (with its config) or a base model's."""

    model: torch.nn.Module
    tokenizer: object
    base_ref: str                       # the base model: the run's `model`, or the evaluated model itself
    cfg: RunConfig | None = None        # the run's resolved config; None for a base model
    labels: list[str] | None = None
    max_length: int = 1024

    def base(self, runtime: Runtime) -> contextlib.AbstractContextManager:
        """A context giving the untrained base as `train` measured it: the run's method applied to a fresh base
        in the same weight storage, switched off (for a base model: the model itself)."""
        if self.cfg is None:
            return contextlib.nullcontext(self.model)
        method = get_method(self.cfg.method.name)
        task = "classification" if self.labels else "causal-lm"
        base, _, _ = load_model(self.base_ref, task=task, labels=self.labels, device=runtime.device,
                                tokenizer=self.tokenizer, quantize_4bit=method.quantize_base,
                                attention=self.model.config._attn_implementation,
                                trust_remote_code=self.cfg.trust_remote_code, pooling=self.cfg.method.pooling)
        base = method.apply(base, self.cfg.method, task)
        store_frozen_weights(base, runtime, self.cfg.train.frozen_bf16)
        return switched_off(method, base)


def load_evaluated(run_dir: str | None, model: str | None, runtime: Runtime, max_length: int) -> Evaluated:
    """The run's trained model in the weight storage it trained with, or a base model."""
    if run_dir is not None:
        lm, tokenizer, cfg = load_trained(run_dir, runtime.device)
        store_frozen_weights(lm, runtime, cfg.train.frozen_bf16)
        labels = ([lm.config.id2label[i] for i in range(lm.config.num_labels)]
                  if task_of(lm) == "classification" else None)
        return Evaluated(lm, tokenizer, cfg.model, cfg, labels, cfg.data.max_length)
    if model is not None:
        lm, tokenizer, _ = load_model(model, device=runtime.device)
        return Evaluated(lm, tokenizer, model, max_length=max_length)
    raise ValueError("give a run directory or a model")


def evaluate_run(data: str, *, run_dir: str | None = None, model: str | None = None,
                 eval_cfg: EvalConfig | None = None, max_length: int = 1024, precision: str = "auto",
                 baseline: bool = False, shots_from: str | None = None, reference: str | None = None
                 ) -> tuple[dict, list[dict]]:
    """Evaluate a run (or a base model) on a data file: ({"metrics", "general", "forgetting"[, "baseline",
    "comparison"], "overlap", "flags"}, per-example predictions).

    A run is compared with its base model: general ability of both and forgetting, measured as `train` measures
    them. `baseline` adds the base model's zero- and k-shot prompting scores (shots from `shots_from`, default
    the run's training data) and the comparison with the evaluated model. `reference`: the general text
    forgetting is measured on (default: the run's `forgetting.reference`, else 'general')."""
    quiet_libraries()
    eval_cfg = eval_cfg or EvalConfig()
    runtime = Runtime.resolve("auto", precision)
    schema, examples = read_examples(data)
    if run_dir is None and schema == "classification":
        raise UserError(f"{data}: classification data, but --model {model} is a base model with no trained "
                        f"classification head; train one first (e.g. method probe, the cheapest), then "
                        f"`transferkit eval RUN_DIR --data {data} --baseline` scores it beside the base's prompts")
    ev = load_evaluated(run_dir, model, runtime, max_length)
    if ev.cfg is not None and eval_cfg.headline is None:  # judged by what the run was judged by
        eval_cfg = dataclasses.replace(eval_cfg, headline=ev.cfg.eval.headline)
    if (schema == "classification") != (ev.labels is not None):
        raise UserError(f"{data}: {schema} data does not fit this {'classifier' if ev.labels else 'language model'}")
    if ev.labels is not None:
        check_known_labels(examples, ev.labels)
    split = Split(Path(data).name, examples, tokenize_examples(ev.tokenizer, examples, schema, ev.max_length,
                                                               labels=ev.labels))
    metrics, predictions = evaluate_split(ev.model, ev.tokenizer, split, schema, eval_cfg, runtime, label="eval",
                                          labels=ev.labels, preference=ev.cfg.preference if ev.cfg else None)
    reference = reference or (ev.cfg.forgetting.reference if ev.cfg else PACKAGED)
    assessment = Assessment(schema, eval_cfg, reference, ev.max_length, runtime, ev.labels)
    general = {"evaluated": assessment.general(ev.model, ev.tokenizer)}
    prompts = None
    with ev.base(runtime) as base:
        if ev.cfg is not None:
            general["base"] = assessment.general(base, ev.tokenizer)
        if baseline:
            untrained = BaseModel(ev.base_ref, architecture(resolve_model(ev.base_ref)), base, ev.tokenizer,
                                  ev.cfg is not None and ev.cfg.trust_remote_code)
            shots_from = shots_from or (ev.cfg.data.train if ev.cfg else None)
            shots = read_examples(shots_from)[1] if shots_from and eval_cfg.shots else []
            prompts, _ = assessment.baseline(untrained, split, shots, ev.cfg.seed if ev.cfg else 0)
    from_labels = baselines_from_training_labels(ev, examples[: eval_cfg.max_examples])
    verdict = assessment.verdict(metrics, prompts, general.get("base"), general["evaluated"], from_labels=from_labels)
    result: dict = {"data": data, "metrics": metrics, "general": general, "forgetting": verdict["forgetting"]}
    if from_labels is not None:
        result["label_baselines"] = from_labels
    if baseline or from_labels is not None:
        result.update(comparison=verdict["comparison"])
    if baseline:
        result.update(baseline=prompts)
    result["overlap"] = overlap_with_training(ev, examples)
    result["flags"] = verdict["flags"] + overlap_warnings(result["overlap"])
    return result, predictions


def baselines_from_training_labels(ev: Evaluated, examples: list) -> dict | None:
    """A classifier run whose training file is still there: the majority and class-prior baselines."""
    if ev.labels is None or ev.cfg is None or not Path(ev.cfg.data.train).exists():
        return None
    train = read_examples(ev.cfg.data.train)[1]
    return label_baselines([ex.label for ex in train], [ex.label for ex in examples], ev.labels)


def overlap_with_training(ev: Evaluated, examples: list) -> dict[str, dict]:
    """{"train/evaluated": counts} for a run whose training file is still there: evaluated examples the run
    trained on."""
    if ev.cfg is None or not Path(ev.cfg.data.train).exists():
        return {}
    return {"train/evaluated": count_overlap(read_examples(ev.cfg.data.train)[1], examples)}


PREDICT_CHUNK = 64  # rows scored, then written, at a time: the output grows as it goes


def predict(run_dir: str, data: str, out, *, batch_size: int = 16, max_new_tokens: int = 128,
            precision: str = "auto") -> int:
    """Predictions of a finished run on unlabelled rows, one JSON line per row written to `out` (a text stream)
    as they are made: a classifier's class, its probability and every class's; an instruction run's greedy
    answer. Rows are read and checked by the training readers (file:line:field errors) before any model
    work. Returns the number of rows."""
    quiet_libraries()
    run = RunDir(run_dir)
    if run.read_summary().get("schema") == "lm":
        raise UserError(f"{run_dir}: a language-modeling run has no inputs to answer; use `transferkit generate`")
    task = "classification" if run.read_labels() is not None else "instruction"
    inputs = [to_input(row, task) for row in read_rows(data)]  # bad rows fail here, before a model is loaded
    runtime = Runtime.resolve("auto", precision)
    ev = load_evaluated(run_dir, None, runtime, 1024)
    with tqdm(total=len(inputs), desc="predict", unit="row", leave=False) as bar:
        for start in range(0, len(inputs), PREDICT_CHUNK):
            chunk = inputs[start: start + PREDICT_CHUNK]
            if task == "classification":
                # The class id in `labels` is a placeholder: only the log-probabilities are read.
                tokenized = [Tokenized(ev.tokenizer(ex.text, ex.text_pair, truncation=True,
                                                    max_length=ev.max_length)["input_ids"], [0], ex.where)
                             for ex in chunk]
                for ex, lp in zip(chunk, class_log_probs(ev.model, tokenized, ev.tokenizer.pad_token_id, batch_size,
                                                         runtime)):
                    probabilities = {name: math.exp(v) for name, v in zip(ev.labels, lp)}
                    best = max(probabilities, key=probabilities.get)
                    out.write(json.dumps({"where": ex.where, "prediction": best, "confidence": probabilities[best],
                                          "probabilities": probabilities}) + "\n")
            else:
                answers = generate_completions(ev.model, ev.tokenizer, [list(ex.messages) for ex in chunk],
                                               max_new_tokens=max_new_tokens, batch_size=batch_size, runtime=runtime)
                for ex, answer in zip(chunk, answers):
                    out.write(json.dumps({"where": ex.where, "prompt": ex.messages[-1]["content"],
                                          "prediction": answer}, ensure_ascii=False) + "\n")
            out.flush()
            bar.update(len(chunk))
    return len(inputs)


def cost(cfg: RunConfig, hardware, *, all_methods: bool = False, processes: int = 1
         ) -> list[tuple[Cost, tuple[str, Cost] | None]]:
    """[(Cost, cheapest fix or None)] of training `cfg` on `hardware` (a `cost.Hardware`), for its method or,
    with `all_methods`, every method that serves its task, per rank on `processes` ranks
    (`distributed.strategy`); nothing is trained and no weight is read."""
    quiet_libraries()
    task = TASK_OF_SCHEMA[read_train(cfg.data)[0]]
    names = [n for n in method_names() if task in get_method(n).tasks] if all_methods else [cfg.method.name]

    rows = []
    for name in names:
        one = cfg if name == cfg.method.name else with_method(cfg, name)
        estimated = activations_both_ways(one, estimate(one, hardware, processes))
        rows.append((estimated, None if estimated.fits else cheapest_fit(one, estimated)))
    return rows


def compare(cfg: RunConfig, methods: str, budget: str) -> dict:
    """`transferkit compare`: the methods named in `methods` ("baseline,probe,lora") on `cfg`'s data under one
    `budget` ("steps=N", "tokens=N" or "minutes=N"), each a run under `cfg.output_dir`; comparison.json's content
    (`transferkit/compare.py`)."""
    from . import compare as ladder
    from .cost.estimate import workload

    quiet_libraries()
    names = ladder.parse_methods(methods)
    measure = ladder.Budget.parse(budget)
    tokens_per_step = 0.0
    if measure.kind == "tokens":  # training tokens per optimizer step, from the data as the config batches it
        work, _ = workload(cfg, read_train(cfg.data), load_tokenizer(resolve_model(cfg.model), cfg.trust_remote_code),
                           cfg.train.batch_size)
        tokens_per_step = cfg.train.batch_size * work.mean_tokens
    return ladder.compare(cfg, names, measure, tokens_per_step)


def diagnose(run_dir: str | Path, options: DiagnoseConfig, layers: str = "all", precision: str = "auto") -> dict:
    """`transferkit diagnose`: a finished run's tuned model against its base, layer by layer
    (`transferkit/diagnose`), written to RUN_DIR/diagnostics/ and shown in a regenerated report.html."""
    from .diagnose import diagnose_run

    quiet_libraries()
    runtime = Runtime.resolve("auto", precision)
    tuned, tokenizer, cfg = load_trained(run_dir, runtime.device)
    store_frozen_weights(tuned, runtime, cfg.train.frozen_bf16)
    result = diagnose_run(RunDir(run_dir), tuned, tokenizer, cfg, runtime, options, layers)
    write_report(run_dir)
    return result


def probe(model: str, options: DiagnoseConfig, layers: str = "all", out: str | Path | None = None,
          precision: str = "auto", trust_remote_code: bool = False) -> dict:
    """`transferkit probe`: the layer-probe curve of a base model on `options.data`, before any training; with `out`,
    probe.json and probe.png are written there."""
    from .diagnose import parse_layers, pooling_for, probe_model, read_sample
    from .diagnose.diagnosis import require_labels
    from .diagnose.plots import plot_probe

    quiet_libraries()
    runtime = Runtime.resolve("auto", precision)
    sample = read_sample(options.data, options.label_column, options.max_examples)  # bad rows fail before the model
    require_labels(sample)
    lm, tokenizer, folder = load_model(model, device=runtime.device, trust_remote_code=trust_remote_code,
                                       task="classification" if architecture(resolve_model(model)) == "encoder"
                                       else "causal-lm", labels=sorted(set(sample.labels)))
    result = probe_model(lm, tokenizer, sample, runtime, pooling_for(folder, options.pooling),
                         parse_layers(layers, lm.config.num_hidden_layers + 1))
    result["model"] = model
    if out is not None:
        folder_out = Path(out)
        folder_out.mkdir(parents=True, exist_ok=True)
        (folder_out / "probe.json").write_text(json.dumps(result, indent=2) + "\n")
        plot_probe(result, folder_out / "probe.png")
    return result


def merge(run_dir: str | Path, out: str | Path, dtype: str = "fp32", force: bool = False) -> dict:
    """`transferkit merge`: the run's adapter folded into its base, a plain Hugging Face folder at `out`
    (`transferkit/ship/merge.py`); returns the merge report with its fidelity."""
    from .ship import merge_run

    quiet_libraries()
    return merge_run(run_dir, out, dtype, force)


def export(run_dir: str | Path, target: str, out: str | Path, max_rank: int = 16, dtype: str = "fp32",
           force: bool = False) -> dict:
    """`transferkit export`: the run for peft, vLLM or transformers (`transferkit/ship/export.py`)."""
    from .ship import export_run

    quiet_libraries()
    return export_run(run_dir, target, out, max_rank, dtype, force)


def serve(base: str | None, adapters: list[str], *, host: str = "127.0.0.1", port: int = 8000,
          api_key: str | None = None, limits=None, max_batch: int = 8, batch_wait_ms: float = 25,
          precision: str = "auto", on_start=None) -> None:
    """`transferkit serve`: the base and every `NAME=RUN_DIR` behind an OpenAI-compatible API until Ctrl-C
    (`transferkit/serve/`); `on_start(url)` is called once it listens."""
    from .serve import Engine, Limits, ModelPool, create_app, parse_adapter_args, run_server

    quiet_libraries()
    runtime = Runtime.resolve("auto", precision)
    pool = ModelPool(base, parse_adapter_args(adapters), runtime.device)
    engine = Engine(runtime, max_batch, batch_wait_ms / 1000)
    try:
        run_server(create_app(pool, engine, limits or Limits(), api_key), host, port, on_start)
    finally:
        engine.close()


def chat(target: str, *, read, write, system: str | None = None, max_tokens: int = 256,
         sampling: Sampling | None = None, precision: str = "auto") -> int:
    """`transferkit chat`: a terminal conversation with a run directory or a base model (`serve/chat.py`);
    returns the number of replies."""
    from .serve import ModelPool, chat_loop

    quiet_libraries()
    runtime = Runtime.resolve("auto", precision)
    is_run = (Path(target) / "config.yaml").is_file()
    pool = ModelPool(None if is_run else target, [(Path(target).name, Path(target))] if is_run else [],
                     runtime.device, serve_base=False)
    served = next(iter(pool.served.values()))
    return chat_loop(served, runtime, read, write, system=system, max_tokens=max_tokens, sampling=sampling)


def report(run_dir: str | Path) -> Path:
    """(Re)write `run_dir`/report.html from what the run wrote (`transferkit/report`); returns its path."""
    run = RunDir(run_dir)
    if not (run.config.is_file() and run.metrics.is_file()):
        raise UserError(f"{run.path}: not a transferkit run directory (no config.yaml and metrics.jsonl)")
    return write_report(run.path)


def recommend(data: str | Path, *, model: str | None = None, hardware=None, forgetting: str = "any",
              budget_minutes: float | None = None):
    """Measure a training file, its shift from `model` (default: minilm-l6 for classification data, else
    smollm2-135m) and what fits `hardware` (default: this machine), and rank the methods
    (`transferkit/recommend.py`). Returns (Recommendation, the config it was measured with)."""
    from .cost import get_hardware
    from .recommend import recommend as decide

    quiet_libraries()
    path = Path(data).expanduser().resolve()
    if model is None:
        schema = read_train(load_config(None, [f"data.train={path}"]).data)[0]
        model = "minilm-l6" if schema == "classification" else "smollm2-135m"
    cfg = load_config(None, [f"model={model}", f"data.train={path}"])
    return decide(cfg, hardware or get_hardware("cpu"), forgetting=forgetting, budget_minutes=budget_minutes), cfg
