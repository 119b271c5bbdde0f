"""Command line: parse → config → call a library function. Nothing else lives here."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from tqdm.auto import tqdm

from .api import (chat, compare, cost, diagnose, evaluate_run, export, generate, merge, predict, probe, recommend,
                  report, serve, train)
from .config import describe_keys, load_config
from .cost import custom_hardware, get_hardware
from .cost.calibrate import calibrate
from .cost.format import format_calibration, format_cost
from .errors import EXIT_USER_ERROR, ConfigError, UserError
from .evaluate.generation import Sampling
from .evaluate.plots import reliability_diagram
from .files import jsonl_text, write_file_atomic
from .methods.accounting import format_table, parameter_table
from .options import DiagnoseConfig, EvalConfig
from .recommend import as_dict as recommendation_dict
from .recommend import format_recommendation, recipe_text
from .runs import find_runs, format_runs
from .runtime import quiet_libraries
from .train.distributed import launched_rank
from .train.signals import Stopped


class _Stdout(logging.Handler):
    """The package's INFO messages on whatever `sys.stdout` is at the time (tests swap it), written above any
    progress bar on the terminal (tqdm.write clears the bar, prints the line, redraws the bar)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stdout)
        except Exception:  # noqa: BLE001  (logging's contract: a handler never raises)
            self.handleError(record)


@contextlib.contextmanager
def progress_messages_on_stdout() -> Iterator[None]:
    """While a command runs, what the library logs (`transferkit.*` at INFO and above) is printed as plain lines
    on stdout; afterwards the logger is as it was (a Python caller of the library gets nothing on stdout)."""
    logger = logging.getLogger("transferkit")
    handler, level = _Stdout(), logger.level
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if launched_rank() == 0 else logging.WARNING)  # several processes: one voice
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def cmd_train(args) -> int:
    config_path, overrides = args.config, list(args.overrides)
    if config_path is not None and "=" in config_path and not Path(config_path).exists():
        config_path, overrides = None, [config_path, *overrides]
    if args.resume:
        run_config = Path(args.resume) / "config.yaml"
        if config_path is None:
            if not run_config.is_file():
                raise UserError(f"{args.resume}: not a run directory (no config.yaml) to resume")
            config_path = run_config
        overrides.append(f"output_dir={args.resume}")
    if config_path is None:
        raise UserError("give a config file, e.g. `transferkit train recipes/quickstart.yaml`")
    cfg = load_config(config_path, overrides)
    check_processes(args.processes)
    if args.processes > 1 and "WORLD_SIZE" not in os.environ:  # checked here, then every rank runs this command
        return launch_processes(args.processes, train_argv(args))
    train(cfg, resume=bool(args.resume), overwrite=args.overwrite)
    return 0


def check_processes(processes: int) -> None:
    if processes < 1:
        raise UserError(f"--processes {processes}: give 1 or more processes")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now: where the launched processes meet."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def train_argv(args) -> list[str]:
    """The `train` command line each launched process runs: this one without --processes."""
    argv = ["train", *([args.config] if args.config else []), *args.overrides]
    return argv + (["--resume", args.resume] if args.resume else []) + (["--overwrite"] if args.overwrite else [])


def launch_processes(processes: int, argv: list[str]) -> int:
    """`accelerate launch --multi_gpu --num_processes N -m transferkit ARGV` (its torchrun launcher; on a machine
    without GPUs the processes use gloo on the CPU), on a free port; returns the exit code of the first process
    that failed (2 for bad input, 128 + N for a signal), 0 when all finished."""
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    launch = launch_command_parser().parse_args([
        "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", str(free_port()), "-m", "transferkit", *argv])
    try:
        launch_command(launch)
    except ChildFailedError as exc:
        code = exc.get_first_failure()[1].exitcode
        return code if code > 0 else 128 - code  # a process killed by signal N reports -N
    return 0


def cmd_generate(args) -> int:
    if (args.model is None) == (args.adapter is None):
        raise UserError("give exactly one of --model and --adapter")
    if not args.prompt and sys.stdin.isatty():
        print("reading prompts from standard input, one per line; end with Ctrl-D", file=sys.stderr)
    prompts = args.prompt or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not prompts:
        raise UserError("no prompt: give --prompt TEXT or prompts on standard input, one per line")
    sampling = None if args.temperature == 0 else Sampling(args.temperature, args.top_p, args.seed)
    replies = generate(prompts, model=args.model, adapter=args.adapter, max_new_tokens=args.max_new_tokens,
                       precision=args.precision, system=args.system, sampling=sampling)
    for number, (prompt, reply) in enumerate(zip(prompts, replies)):
        if args.json:
            print(json.dumps({"prompt": prompt, "reply": reply}, ensure_ascii=False))
        else:  # the replies as text, a blank line between two
            print(("\n" if number else "") + reply)
    return 0


def cmd_eval(args) -> int:
    if (args.run_dir is None) == (args.model is None):
        raise UserError("give exactly one of RUN_DIR and --model")
    eval_cfg = EvalConfig(exact_match=not args.no_generate, max_new_tokens=args.max_new_tokens,
                          max_examples=args.max_examples, shots=args.shots, task_metric=args.task_metric)
    result, predictions = evaluate_run(args.data, run_dir=args.run_dir, model=args.model, eval_cfg=eval_cfg,
                                       precision=args.precision, baseline=args.baseline, shots_from=args.shots_from,
                                       reference=args.reference)
    if args.predictions:
        Path(args.predictions).write_text(jsonl_text(predictions), encoding="utf-8")
    if args.reliability_plot and "calibration" in result["metrics"]:
        reliability_diagram(result["metrics"]["calibration"], result["metrics"]["ece"],
                            f"{Path(args.data).name}: reliability", Path(args.reliability_plot))
    print(json.dumps(result, indent=2))
    return 0


def cmd_predict(args) -> int:
    def run(out) -> int:
        return predict(args.run_dir, args.data, out, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                       precision=args.precision)

    if args.out is None:
        count = run(sys.stdout)
    else:  # written beside, renamed when complete: an interrupted run never leaves half a file as the answer
        counted = []

        def write(tmp: Path) -> None:
            with tmp.open("w", encoding="utf-8") as out:
                counted.append(run(out))

        write_file_atomic(Path(args.out), write)
        count = counted[0]
    print(f"{count} predictions" + (f" in {args.out}" if args.out else ""), file=sys.stderr)
    return 0


def cmd_runs(args) -> int:
    rows = find_runs(args.folder)
    if not rows:
        raise UserError(f"{args.folder}: no run directories (folders with config.yaml and metrics.jsonl) here")
    print(format_runs(rows))
    return 0


def cmd_compare(args) -> int:
    from .compare import format_table

    result = compare(load_config(args.config, list(args.overrides)), args.methods, args.budget)
    print(format_table(result))
    return 0


def diagnose_options(args) -> DiagnoseConfig:
    if args.max_examples < 4:
        raise ConfigError(f"--max-examples {args.max_examples}: at least 4 (the debiased CKA needs n > 3)")
    return DiagnoseConfig(enabled=True, data=args.data, max_examples=args.max_examples, label_column=args.label_column,
                          pooling=args.pooling, debiased=getattr(args, "debiased", False))


def cmd_diagnose(args) -> int:
    result = diagnose(args.run_dir, diagnose_options(args), args.layers, args.precision)
    print(format_layers(result["layers"], {"CKA base/tuned": result["cka"]["by_layer"],
                                           **{f"probe {k}": v for k, v in result.get("probes", {}).items()}},
                        {row["layer"]: row for row in result["weights"]["by_layer"]}))
    print(result["reading"])
    print(f"written: {Path(args.run_dir) / 'diagnostics'} (diagnostics.json, diagnostics.png); report.html updated")
    return 0


def cmd_probe(args) -> int:
    result = probe(args.model, diagnose_options(args), args.layers, args.out, args.precision, args.trust_remote_code)
    print(format_layers(result["layers"], {"probe accuracy": result["probe"]}, {}))
    print(f"majority class: {result['chance']:.3f}. {result['reading']}")
    return 0


def format_layers(layers: list[int], columns: dict[str, list[float]], weights: dict[int, dict]) -> str:
    """One row per layer: the given columns, and the block's weight change where there is one."""
    head = ["layer", *columns] + (["block ‖ΔW‖/‖W‖", "eff. rank"] if weights else [])
    lines = ["  ".join(f"{h:>14}" for h in head)]
    for i, layer in enumerate(layers):
        cells = [f"{layer:>14}"] + [f"{'undefined' if values[i] is None else format(values[i], '.3f'):>14}"
                                    for values in columns.values()]
        if weights:
            row = weights.get(layer - 1)  # hidden state i is the output of block i - 1 (numbered from 0)
            cells += [f"{row['relative']:>14.2e}", f"{row['effective_rank']:>14.1f}"] if row else [f"{'':>14}"] * 2
        lines.append("  ".join(cells))
    return "\n".join(lines)


def cmd_merge(args) -> int:
    report_ = merge(args.run_dir, args.out, args.dtype, args.force)
    print(fidelity_line(report_) + f"\nwritten: {args.out} (loads with transformers alone)")
    return 0


def fidelity_line(report_: dict) -> str:
    f = report_["fidelity"]
    return (f"fidelity against the unmerged run on {f['positions']} positions: max |Δlogit| {f['max_abs_logit']:.3g}, "
            f"equal greedy tokens {f['equal_greedy']:.1%} (tolerance {f['tolerance'][0]:g} / {f['tolerance'][1]:.0%})"
            + (" — outside it, written because of --force" if report_["forced"] else ""))


def cmd_export(args) -> int:
    result = export(args.run_dir, args.target, args.out, args.max_lora_rank, args.dtype, args.force)
    if "merge" in result:
        print(fidelity_line(result["merge"]))
    print(f"written: {result['out']} ({args.target})")
    return 0


def cmd_serve(args) -> int:
    from .serve import Limits

    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(f"warning: serving on {args.host} without an API key: anyone who can reach this port can use it "
              f"(set --api-key or TRANSFERKIT_API_KEY)", file=sys.stderr)
    limits = Limits(args.max_tokens, args.max_prompt_tokens, args.max_body_kb * 1024)

    def started(url: str) -> None:
        print(f"serving on {url}  (GET {url}/v1/models lists the models; Ctrl-C stops)", flush=True)

    serve(args.model, args.adapter, host=args.host, port=args.port, api_key=args.api_key, limits=limits,
          max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms, precision=args.precision, on_start=started)
    return 0


def cmd_chat(args) -> int:
    sampling = None if args.temperature == 0 else Sampling(args.temperature, args.top_p, args.seed)

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    chat(args.target, read=input, write=write, system=args.system, max_tokens=args.max_tokens, sampling=sampling,
         precision=args.precision)
    return 0


def cmd_report(args) -> int:
    print(report(args.run_dir))
    return 0


def cmd_cost(args) -> int:
    config_path, overrides = args.config, list(args.overrides)
    cfg = load_config(config_path, overrides)
    if args.tflops is not None or args.memory is not None:
        hardware = custom_hardware(args.memory or 0, args.tflops or 0, args.price_per_hour, args.mfu, args.device,
                                   args.bandwidth, args.op_us)
    else:
        hardware = get_hardware(args.hardware, args.hardware_file)
    if args.calibrate:
        if args.method == "all":
            raise UserError("--calibrate measures one method at a time: drop --method all")
        measured = calibrate(cfg, hardware, args.calibrate)
        print(json.dumps({**measured.calibrated().as_dict(), "calibration": measured.as_dict()}, indent=2)
              if args.json else format_calibration(measured))
        return 0
    check_processes(args.processes)
    rows = cost(cfg, hardware, all_methods=args.method == "all", processes=args.processes)
    if args.json:  # one object for the config's method, an array of them for --method all
        objects = [{**c.as_dict(), "fix": None if f is None else {"change": f[0], **f[1].as_dict()}} for c, f in rows]
        print(json.dumps(objects if args.method == "all" else objects[0], indent=2))
    else:
        print("\n\n".join(format_cost(c, f) for c, f in rows))
    return 0


def cmd_recommend(args) -> int:
    hardware = get_hardware(args.hardware, args.hardware_file)
    rec, cfg = recommend(args.data, model=args.model, hardware=hardware, forgetting=args.forgetting,
                         budget_minutes=args.budget_minutes)
    print(json.dumps(recommendation_dict(rec), indent=2) if args.json else format_recommendation(rec))
    if args.write:
        text = recipe_text(rec, cfg, datetime.date.today().isoformat())
        write_file_atomic(Path(args.write), lambda tmp: tmp.write_text(text, encoding="utf-8"))
        print(f"wrote {args.write}: transferkit train {args.write}", file=sys.stderr)
    return 0


def cmd_keys(args) -> int:
    rows = describe_keys()
    widths = [max(len(row[i]) for row in rows) for i in range(3)]  # columns as wide as their longest entry
    for key, tp, default, help_text in rows:
        print(f"{key:{widths[0]}}  {tp:{widths[1]}}  {default:{widths[2]}}  {help_text}")
    return 0


def cmd_methods(args) -> int:
    rows = parameter_table(args.model)
    print(f"Methods on {args.model} (total = parameters of the float base model; classification rows "
          f"add a new 2-class head)\n")
    print(format_table(rows))
    return 0 if all(r.agrees is not False for r in rows) else 1


DESCRIPTION = ("Adapt a pretrained model to your task with the right transfer-learning method, and measure what it "
               "cost and what it changed. `transferkit train recipes/quickstart.yaml` is the quickstart; "
               "`transferkit keys` lists every config key.")


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transferkit")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def add_cost_parser(sub) -> None:
    p = sub.add_parser("cost", help="memory, compute, time and money of a training config before running it "
                                    "(no weight is read)")
    p.add_argument("config", help="a config file, as for train")
    p.add_argument("overrides", nargs="*", help="key=value overrides, as for train")
    p.add_argument("--method", choices=["config", "all"], default="config",
                   help="the config's method, or one row per method that serves the task")
    p.add_argument("--hardware", default="cpu", help="a name from the hardware table, or cpu (this machine, "
                                                     "measured now; the default)")
    p.add_argument("--hardware-file", help="a YAML file of extra hardware entries (see cost/hardware.yaml)")
    p.add_argument("--memory", type=float, help="custom hardware: GiB of memory")
    p.add_argument("--tflops", type=float, help="custom hardware: peak TFLOP/s")
    p.add_argument("--price-per-hour", type=float, default=0.0, help="custom hardware: US dollars per hour")
    p.add_argument("--mfu", type=float, default=0.35,
                   help="custom hardware: share of the peak FLOP/s a step's matmuls reach")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="custom hardware: a GPU or a CPU")
    p.add_argument("--bandwidth", type=float, default=0.0, metavar="GB/S",
                   help="custom hardware: memory bandwidth a step's elementwise operators reach (0: not priced)")
    p.add_argument("--op-us", type=float, default=0.0, metavar="US",
                   help="custom hardware: microseconds to dispatch one operator (0: not priced)")
    p.add_argument("--calibrate", type=int, nargs="?", const=5, default=0, metavar="STEPS",
                   help="also train STEPS (default 5) real steps here, evaluation off, and hold the prediction "
                        "against them (memory, time, this machine's MFU)")
    p.add_argument("--processes", type=int, default=1, metavar="N",
                   help="price one of N processes training together (distributed.strategy: ddp or fsdp): memory "
                        "per process, the step's compute spread over N")
    p.add_argument("--json", action="store_true", help="one JSON array instead of text")
    p.set_defaults(func=cmd_cost)


def add_recommend_parser(sub) -> None:
    p = sub.add_parser("recommend", help="which method: measures the data, its shift from the model and what "
                                         "fits, and ranks the methods with reasons")
    p.add_argument("--data", required=True, help="the training file")
    p.add_argument("--model", help="short name or HF folder (default: minilm-l6 for classification data, else "
                                   "smollm2-135m)")
    p.add_argument("--hardware", default="cpu", help="a name from the hardware table, or cpu (this machine)")
    p.add_argument("--hardware-file", help="a YAML file of extra hardware entries")
    p.add_argument("--budget-minutes", type=float,
                   help="leave out what takes longer (as transferkit cost prices it on the hardware)")
    p.add_argument("--forgetting", choices=["low", "any"], default="any",
                   help="low: the base must keep what it knew (no full fine-tuning)")
    p.add_argument("--write", metavar="RECIPE.yaml", help="write the top choice as a ready-to-run config")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    p.set_defaults(func=cmd_recommend)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="transferkit", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"transferkit {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="fine-tune with one method; writes a run directory")
    p.add_argument("config", nargs="?", help="YAML config (see recipes/); optional with --resume")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.max_steps=5")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its last complete checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output_dir")
    p.add_argument("--processes", type=int, default=1, metavar="N",
                   help="train on N processes on this machine (accelerate's launcher; distributed.strategy: ddp, "
                        "fsdp); train.batch_size stays the global batch. Same as `accelerate launch --multi_gpu "
                        "--num_processes N -m transferkit train ...`")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("generate", help="replies from a base model or a run's adapter (greedy, or sampled)")
    p.add_argument("--model", help="short name, HF folder or GGUF file")
    p.add_argument("--adapter", metavar="RUN_DIR", help="a finished run directory")
    p.add_argument("--prompt", action="append", help="user message (repeatable; default: one per stdin line)")
    p.add_argument("--system", help="a system message before every prompt")
    p.add_argument("--json", action="store_true",
                   help='one JSON line {"prompt", "reply"} per prompt (default: the replies as text, a blank line '
                        'between two)')
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default); > 0: sample at this temperature")
    p.add_argument("--top-p", type=float, default=1.0, help="sampling: keep the smallest token set with this mass")
    p.add_argument("--seed", type=int, default=0, help="sampling: the random seed (same seed, same replies)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("eval", help="task metrics of a run (or --model) on a data file, general-text ability and "
                                    "forgetting, and optionally the prompting baseline")
    p.add_argument("run_dir", nargs="?", help="a finished run directory")
    p.add_argument("--model", help="evaluate a base model instead of a run")
    p.add_argument("--data", required=True, help="data file to evaluate on")
    p.add_argument("--baseline", action="store_true",
                   help="also score the base model by prompting (zero-shot and k-shot) and compare")
    p.add_argument("--shots", type=int, default=4, help="examples in the k-shot prompt (0: zero-shot only)")
    p.add_argument("--shots-from", help="data file the k-shot examples come from (default: the run's training data)")
    p.add_argument("--task-metric", help="`json` or package.module:function (see `transferkit keys`)")
    p.add_argument("--reference",
                   help="general text for forgetting: `general` (packaged), `general-validation`, a text file, or "
                        "`none` (default: the run's forgetting.reference)")
    p.add_argument("--reliability-plot", metavar="PNG", help="classification: write the reliability diagram here")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--max-examples", type=int)
    p.add_argument("--no-generate", action="store_true", help="skip exact match (loss and perplexity only)")
    p.add_argument("--predictions", help="write per-example predictions to this .jsonl file")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="a run's predictions on new, unlabelled data (JSON lines)")
    p.add_argument("run_dir", help="a finished run directory")
    p.add_argument("--data", required=True, help="rows to predict: text[, text_pair] for a classifier; prompt, "
                                                 "instruction[, input] or messages for an instruction run")
    p.add_argument("--out", help="write the JSON lines here (default: standard output)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=128, help="instruction runs: the answer's budget")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("runs", help="every run under a folder: method, task, headline, gain, forgetting, time, status")
    p.add_argument("folder", nargs="?", default="runs", help="where to look (default: runs)")
    p.set_defaults(func=cmd_runs)

    add_compare_parsers(sub)
    add_diagnose_parsers(sub)
    add_ship_parsers(sub)
    add_serve_parsers(sub)
    add_cost_parser(sub)
    add_recommend_parser(sub)

    p = sub.add_parser("methods", help="trainable parameters of every method on a model")
    p.add_argument("--model", default="smollm2-135m", help="short name, HF folder or GGUF file")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("keys", help="every config key with its type, default and help")
    p.set_defaults(func=cmd_keys)
    return parser


def add_diagnose_parsers(sub) -> None:
    """`diagnose` (a run against its base, layer by layer) and `probe` (a base model's layer-probe curve)."""
    for name, help_text in (("diagnose", "where a run's network changed: layer probes, CKA against the base, weight "
                                         "change (RUN_DIR/diagnostics/)"),
                            ("probe", "which layers of a base model already carry the task: a probe per layer")):
        p = sub.add_parser(name, help=help_text)
        if name == "diagnose":
            p.add_argument("run_dir", help="a finished run directory")
            p.add_argument("--data", help="examples (default: the run's test, validation or training file)")
            p.add_argument("--debiased", action="store_true", help="debiased CKA (unbiased HSIC)")
            p.set_defaults(func=cmd_diagnose)
        else:
            p.add_argument("--model", required=True, help="short name, HF folder or GGUF file")
            p.add_argument("--data", required=True, help="labelled examples (text, label), or --label-column")
            p.add_argument("--out", help="write probe.json and probe.png into this folder")
            p.add_argument("--trust-remote-code", action="store_true")
            p.set_defaults(func=cmd_probe)
        p.add_argument("--layers", default="all", help="all, or hidden-state numbers such as 0,3,6 (0: embeddings)")
        p.add_argument("--max-examples", type=int, default=512, help="examples used at most (a seeded subset)")
        p.add_argument("--label-column", help="column the probes predict (default: the classification label)")
        p.add_argument("--pooling", choices=["auto", "mean", "last", "cls"], default="auto",
                       help="auto: mean over tokens for encoders, the last token for decoders")
        p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")


def add_ship_parsers(sub) -> None:
    """`merge` (a plain Hugging Face folder) and `export` (for peft, vLLM or transformers)."""
    p = sub.add_parser("merge", help="fold a run's adapter into its base: a plain Hugging Face folder, fidelity "
                                     "checked")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, help="a new or empty folder")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--force", action="store_true", help="write even when the fidelity is outside its tolerance")
    p.set_defaults(func=cmd_merge)
    p = sub.add_parser("export", help="a run for another tool: peft (adapter + manifest), vllm (checked), hf (merged)")
    p.add_argument("run_dir")
    p.add_argument("--target", required=True, choices=["peft", "vllm", "hf"])
    p.add_argument("--out", required=True, help="a new or empty folder")
    p.add_argument("--max-lora-rank", type=int, default=16, help="vllm: the server's --max-lora-rank")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="hf: the merged weights' dtype")
    p.add_argument("--force", action="store_true", help="hf: write even outside the fidelity tolerance")
    p.set_defaults(func=cmd_export)


def add_serve_parsers(sub) -> None:
    """`serve` (an OpenAI-compatible API over a base and its runs) and `chat` (a conversation in the terminal)."""
    import os

    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP API: one base in memory, runs' adapters switched "
                                     "per request")
    p.add_argument("--model", help="the base model (default: the first adapter run's)")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=RUN_DIR",
                   help="a finished run served as model NAME (repeat for more)")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="0: any free port")
    p.add_argument("--api-key", default=os.environ.get("TRANSFERKIT_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1/ (default: $TRANSFERKIT_API_KEY)")
    p.add_argument("--max-tokens", type=int, default=256, help="generated tokens per request, at most")
    p.add_argument("--max-prompt-tokens", type=int, default=2048, help="prompt tokens per request, at most")
    p.add_argument("--max-body-kb", type=int, default=1024, help="request body size, at most")
    p.add_argument("--max-batch", type=int, default=8, help="requests run together in one batch, at most")
    p.add_argument("--batch-wait-ms", type=float, default=25,
                   help="how long a batch waits for more requests after its first")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("chat", help="talk to a run (or a base model) in the terminal")
    p.add_argument("target", help="a finished run directory, or a model (short name, HF folder, GGUF file)")
    p.add_argument("--system", help="a system message at the start of the conversation")
    p.add_argument("--max-tokens", type=int, default=256, help="tokens per reply, at most")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    p.set_defaults(func=cmd_chat)


def add_compare_parsers(sub) -> None:
    """`compare` (several methods, one budget) and `report` (a run on one page)."""
    p = sub.add_parser("compare", help="several methods on the same data, seed and budget: a table, comparison.json, "
                                       "a plot, and which to use")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key=value, applied to every method's run")
    p.add_argument("--methods", default="baseline,probe,freeze,lora,full",
                   help="comma-separated: baseline (the prompting baseline, measured once) and method names")
    p.add_argument("--budget", default="steps=100", help="steps=N, tokens=N or minutes=N (of training; each method's "
                   "steps planned from its measured speed), the same for every method")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("report", help="(re)write RUN_DIR/report.html: one self-contained page of what the run did")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_report)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        quiet_libraries()
        with progress_messages_on_stdout():
            return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Stopped as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
