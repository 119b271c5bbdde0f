"""`transferkit cost`: each term of the breakdown against what a real model holds, the verdict, bad hardware."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from transferkit.errors import ConfigError


def _roomy():
    """A CPU-like machine with room to spare (the defaults a run takes here: eager attention, fp32)."""
    from transferkit.cost import custom_hardware

    return custom_hardware(memory_gb=64, tflops=1, price_per_hour=2.0, mfu=0.5, device="cpu")


def test_nf4_bytes_by_hand():
    from transferkit.cost.estimate import nf4_bytes

    # 16,384 weights: 8,192 bytes of 4-bit codes, 256 one-byte absmaxes (blocks of 64), one fp32 scale and
    # offset for those 256 absmaxes.
    assert nf4_bytes(64 * 256) == 8192 + 256 + 8


def test_terms_match_the_model_a_run_builds(tiny_config):
    from transferkit import train
    from transferkit.cost import estimate
    from transferkit.methods import get_method
    from transferkit.models import load_model
    from transferkit.runtime import Runtime
    from transferkit.train.setup import adapt

    cfg = tiny_config("train.max_steps=2", "train.batch_size=4", "train.micro_batch_size=2", "eval.baseline=false")
    cost = estimate(cfg, _roomy())
    summary = train(cfg)
    assert (cost.params_trainable, cost.params_total) == (summary["params"]["trainable"], summary["params"]["total"])

    model, _, _ = load_model(cfg.model)  # real weights, as training holds them (fp32 here)
    model = adapt(model, get_method("lora"), cfg.method, cfg.train, "causal-lm", Runtime(torch.device("cpu")))
    tensors = [*model.parameters(), *model.buffers()]
    assert cost.memory["weights"] == sum(t.numel() * t.element_size() for t in tensors)
    trained = [p for p in model.parameters() if p.requires_grad]
    # AdamW: two fp32 moments per trained weight and a one-element fp32 step count per trained tensor.
    assert cost.memory["optimizer"] == 8 * sum(p.numel() for p in trained) + 4 * len(trained)
    assert 0 < cost.memory["gradients"] <= 4 * sum(p.numel() for p in trained)
    assert cost.memory["activations"] > 0 and cost.flops_per_step > 0
    assert cost.workload.micro_batch == 2 and cost.workload.accumulation == 2 and cost.workload.steps == 2
    # custom hardware without --bandwidth / --op-us: FLOPs alone are priced
    assert cost.seconds == pytest.approx(2 * cost.flops_per_step / (1e12 * 0.5))
    assert cost.dollars == pytest.approx(cost.seconds / 3600 * 2.0)
    assert cost.ops_per_step > 0 and cost.traffic_per_step > 0


def test_a_method_built_on_peft_carries_what_importing_peft_leaves_resident():
    """The framework term adds `LIBRARY_BYTES` for each library a method imports (peft: LoRA, IA3, prefix, ...;
    not full fine-tuning); the constant holds what importing peft into a fresh process after torch and
    transformers adds to its resident set, within 25 % (a peft upgrade that moves it fails here)."""
    import subprocess
    import sys

    from transferkit.cost.estimate import FRAMEWORK_BYTES, LIBRARY_BYTES, library_bytes, overheads
    from transferkit.methods import get_method

    heap = 100  # the heap bytes the allocator term is a share of
    peft_bytes = LIBRARY_BYTES["cpu"]["peft"]
    assert get_method("lora").libraries == ("peft",) and get_method("full").libraries == ()
    for precision in ("fp32", "bf16"):
        assert overheads(heap, "cpu", precision, ("peft",))["framework"] == FRAMEWORK_BYTES["cpu"][precision] + \
            peft_bytes
        assert overheads(heap, "cpu", precision, ())["framework"] == FRAMEWORK_BYTES["cpu"][precision]
    assert overheads(heap, "cuda", "bf16", ("peft",))["framework"] == 0  # max_memory_allocated sees no import
    assert library_bytes("cpu", ("peft", "unknown")) == {"peft": peft_bytes}
    if Path("/proc/self/status").exists():
        benchmark = Path(__file__).resolve().parents[1] / "benchmarks" / "import_memory.py"
        done = subprocess.run([sys.executable, str(benchmark), "--libraries", "peft", "--repeats", "1"],
                              capture_output=True, text=True, check=True)
        measured = int(done.stdout.split("=")[-1].strip().removesuffix("B").replace(",", ""))
        assert measured == pytest.approx(peft_bytes, rel=0.25), done.stdout


def test_the_simulated_depth_is_extrapolated_linearly(tiny_config):
    """Two layers simulated directly hold what one layer + one layer's difference predicts; the matmuls' calls
    of four layers replayed directly are what the 2- and 3-layer replays grow to (`deepen_calls`)."""
    from transferkit.config import with_method_defaults
    from transferkit.cost.estimate import Workload, deepen_calls, replay
    from transferkit.runtime import Runtime

    cfg = with_method_defaults(tiny_config(), "instruction")
    work = Workload(2, 1, 24, 8, 24.0, 1, 1, "test")
    runtime = Runtime(torch.device("cpu"))
    one, two, three = (replay(cfg, "causal-lm", None, work, runtime, "eager", n) for n in (1, 2, 3))
    for kind in ("activations", "gradients", "optimizer"):
        assert three.peak[kind] == pytest.approx(one.peak[kind] + 2 * (two.peak[kind] - one.peak[kind]), rel=0.05)
    assert three.flops == one.flops + 2 * (two.flops - one.flops)
    assert three.ops == one.ops + 2 * (two.ops - one.ops)
    assert three.traffic == one.traffic + 2 * (two.traffic - one.traffic)
    four = replay(cfg, "causal-lm", None, work, runtime, "eager", 4)
    assert len(four.compute) > 1 and sum(four.compute.values()) > sum(two.compute.values())
    assert deepen_calls(two.compute, three.compute, 4) == four.compute


def test_a_deep_model_peaks_where_its_deepest_phase_does(tmp_path):
    """Models whose embedding outweighs their blocks (vocabulary 20,000) peak at another moment of the step with
    one layer than with more. Hidden 32: grown kind by kind from 1 and 2 layers the step's peak misses an 8-layer
    replay by a quarter; `deepen` (each phase grown from 2 and 3 layers, the largest taken) holds it within 2 %.
    Hidden 64: the peak moves between phases past 3 layers, so even grown kind by kind from 2 and 3 layers it
    reads 0.895 of the direct replay; `deepen` reads 0.934 — closer, not exact: a phase's own peak can move
    within the phase (docs/cost.md)."""
    from tiny import tiny_llama, tiny_llama64, tiny_tokenizer
    from transferkit.config import load_config, with_method_defaults
    from transferkit.cost.estimate import Workload, deepen, replay
    from transferkit.cost.simulate import KINDS
    from transferkit.runtime import Runtime

    def traces(build, name):
        build(20_000).save_pretrained(str(tmp_path / name), safe_serialization=True)
        tiny_tokenizer().save_pretrained(str(tmp_path / name))
        cfg = load_config(None, [f"model={tmp_path / name}", "data.train=unread.jsonl", "method.name=full"])
        cfg = with_method_defaults(cfg, "instruction")
        work = Workload(4, 1, 128, 2, 128.0, 2, 2, "test")
        runtime = Runtime(torch.device("cpu"), "bf16")
        return {n: replay(cfg, "causal-lm", None, work, runtime, "eager", n) for n in (1, 2, 3, 8)}

    def kind_by_kind(trace, low):
        return sum(trace[low].peak[k] + (8 - low) * (trace[low + 1].peak[k] - trace[low].peak[k]) for k in KINDS)

    trace = traces(tiny_llama, "hidden32")
    direct = sum(trace[8].peak.values())
    assert kind_by_kind(trace, 1) < 0.9 * direct  # the failure of 1- and 2-layer replays
    grown = deepen(trace[2], trace[3], 8)
    assert sum(grown.values()) == pytest.approx(direct, rel=0.02)
    assert min(grown.values()) >= 0
    assert deepen(trace[2], trace[2], 2) == trace[2].peak

    trace = traces(tiny_llama64, "hidden64")
    direct = sum(trace[8].peak.values())
    assert kind_by_kind(trace, 2) < 0.91 * direct  # the peak moves between phases past 3 layers
    assert 0.92 * direct < sum(deepen(trace[2], trace[3], 8).values()) <= 1.01 * direct


def test_operators_and_bytes_moved_by_hand():
    """`OpWork` on a few operators whose bytes are known: an elementwise op reads its inputs and writes its
    output; a view moves nothing; an in-place op reads both and writes its target; a reduction writes one
    element; a gather reads only the rows it writes; a question (prim.device) is not an operator; a matmul's
    FLOPs and bytes are kept per call apart from the other operators' bytes."""
    from transferkit.cost.simulate import OpWork

    from torch.utils.flop_counter import FlopCounterMode

    x, w = torch.ones(4, 8), torch.ones(100, 8)        # 128 B, 3,200 B
    index = torch.tensor([1, 2, 3])                    # 24 B of int64
    with FlopCounterMode(display=False) as counter, OpWork(counter) as work:
        y = x * 2                      # reads 128, writes 128
        v = y.view(8, 4)               # a view: 0
        v.add_(1)                      # reads 128 (self), writes 128 (self); the scalar is no tensor
        y.sum()                        # reads 128, writes 4
        torch.nn.functional.embedding(index, w)  # writes 3 × 8 × 4 = 96, reads what it writes
        x.device                       # not dispatched as an aten operator
        x @ w.T                        # the transpose (a view: 0), then 2 × 4 × 8 × 100 FLOPs reading 128 + 3,200
        x @ w.T                        # and writing 4 × 100 × 4; the same call again
    assert work.ops == 9
    assert work.traffic == (128 + 128) + 0 + (128 + 128) + (128 + 4) + (96 + 96)
    (call, calls), = work.compute.items()
    assert (call.op, call.flops, call.bytes, calls) == ("aten.mm.default", 6_400, 128 + 3_200 + 1_600, 2)
    assert work.random == 0


def test_cpu_attention_is_a_call_with_the_flops_of_the_flash_kernel():
    """CPU's fused SDPA kernel, which torch's FLOP counter does not know (a probe's frozen forward runs it), is
    counted as the flash kernel: 4 × B × H × L² × D forward, 2.5 × that backward; each is a call with FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    from transferkit.cost.simulate import CPU_ATTENTION, OpWork

    q = torch.ones(1, 2, 8, 4, requires_grad=True)  # B 1, H 2, L 8, D 4
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter, OpWork(counter) as work:
        torch.nn.functional.scaled_dot_product_attention(q, q, q).sum().backward()
    flops = {call.op.split(".")[1]: call.flops for call in work.compute}
    assert flops == {"_scaled_dot_product_flash_attention_for_cpu": 4 * 2 * 8 * 8 * 4,
                     "_scaled_dot_product_flash_attention_for_cpu_backward": 10 * 2 * 8 * 8 * 4}
    assert counter.get_total_flops() == 14 * 2 * 8 * 8 * 4


def test_a_call_is_made_again_with_its_layout_and_timed_unless_too_large():
    """`kernels`: a call's tensors are made again with the replay's shapes, strides (a transposed weight
    stays transposed) and dtypes; it is timed on this CPU; one larger than `MAX_CALL_BYTES`, or one the operator
    refuses, is not (None: the roofline prices it)."""
    from transferkit.cost.kernels import MAX_CALL_BYTES, call_seconds, make
    from transferkit.cost.simulate import Call, spec

    weight = torch.ones(8, 16, dtype=torch.bfloat16).t()  # [16, 8], strides (1, 16)
    made = make(spec(weight))
    assert (made.shape, made.stride(), made.dtype) == (weight.shape, weight.stride(), weight.dtype)
    x = torch.ones(4, 16, dtype=torch.bfloat16)
    mm = Call("aten.mm.default", spec((x, weight)), (), 2 * 4 * 16 * 8, 128 + 256 + 64)
    assert call_seconds(mm) > 0
    assert call_seconds(Call("aten.mm.default", spec((x, x)), (), 1, 1)) is None  # 4 × 16 @ 4 × 16: refused
    huge = Call("aten.mm.default", spec((x, weight)), (), 1, MAX_CALL_BYTES + 1)
    assert call_seconds(huge) is None


def test_random_numbers_a_step_draws_are_counted_by_hand():
    """`OpWork.random`: dropout in training draws one random number per element of its input (its mask);
    in evaluation, or at p = 0, it draws none; `torch.rand` draws what it returns; the fused `native_dropout`
    (CUDA's) draws its output's elements once, though it returns a mask too; other operators draw none."""
    from transferkit.cost.simulate import OpWork

    from torch.utils.flop_counter import FlopCounterMode

    x = torch.ones(3, 5, 7)                                        # 105 elements
    with FlopCounterMode(display=False) as counter, OpWork(counter) as work:
        torch.nn.functional.dropout(x, 0.1, training=True)         # 105
        torch.nn.functional.dropout(x, 0.1, training=False)        # 0: the identity
        torch.nn.functional.dropout(x, 0.0, training=True)         # 0: nothing to drop
        torch.rand(4, 6)                                           # 24
        torch.ops.aten.native_dropout(x, 0.1, True)                # 105: its output, not its mask again
        x * 2                                                      # 0
    assert work.random == 105 + 24 + 105


def test_a_bert_step_draws_its_dropout_masks_and_a_llama_step_none(tiny_config, tiny_bert_dir):
    """The replay counts dropout's random numbers where the architecture has dropout: a BERT block with
    attention and hidden dropout draws them (more for a longer sequence: the attention probabilities grow with
    its square), a Llama block with attention_dropout 0 draws none."""
    from transferkit.config import with_method_defaults
    from transferkit.cost.estimate import Workload, replay
    from transferkit.runtime import Runtime

    cfg = with_method_defaults(tiny_config(), "instruction")
    runtime = Runtime(torch.device("cpu"))
    llama = replay(cfg, "causal-lm", None, Workload(2, 1, 24, 8, 24.0, 1, 1, "test"), runtime, "eager", 2)
    assert llama.random == 0
    bert = with_method_defaults(tiny_config(f"model={tiny_bert_dir}", "method={name: full}"), "classification")
    short, long = (replay(bert, "classification", ["a", "b"], Workload(2, 1, n, 1, float(n), 1, 1, "test"), runtime,
                          "eager", 2) for n in (8, 16))
    assert short.random > 0 and long.random > 2 * short.random


def test_step_time_adds_its_terms_on_a_cpu_and_overlaps_the_host_on_a_gpu():
    """seconds per step = FLOPs / (peak × MFU) + bytes / (bandwidth × share) + random numbers × seconds each
    + operators × seconds each on a
    CPU; max(device, host) on a GPU; × time_scale; a preference run adds its reference passes at the FLOP rate."""
    from transferkit.cost.estimate import Cost, Workload
    from transferkit.cost.hardware import Hardware

    cpu = Hardware("m", "cpu", 2**30, 1e12, 0.5, "test", 3.6, False, "test", 1e10, 0.5, 1e-5, random_seconds=5e-9)
    work = Workload(1, 1, 8, 8, 8.0, 10, 10, "test")
    cost = Cost("lora", "m", "causal-lm", cpu, "fp32", work, 100, 10, 40, {}, 1e12, ops_per_step=20_000,
                traffic_per_step=10**10, random_per_step=10**7)
    # 1e12 / 5e11 = 2 s of FLOPs; 1e10 / 5e9 = 2 s of bytes; 1e7 × 5 ns = 0.05 s of random numbers;
    # 20,000 × 10 µs = 0.2 s of dispatch
    assert cost.step_parts == pytest.approx({"flops": 2.0, "traffic": 2.0, "random": 0.05, "operators": 0.2})
    assert cost.seconds_per_step == pytest.approx(4.25)
    assert cost.seconds == pytest.approx(42.5) and cost.dollars == pytest.approx(42.5 / 3600 * 3.6)
    gpu = dataclasses.replace(cost, hardware=dataclasses.replace(cpu, device="cuda"))
    assert gpu.seconds_per_step == pytest.approx(4.05)             # the device's 4.05 s hide the host's 0.2
    host_bound = dataclasses.replace(gpu, ops_per_step=1_000_000)  # 10 s of dispatch
    assert host_bound.seconds_per_step == pytest.approx(10.0)
    scaled = dataclasses.replace(cost, hardware=dataclasses.replace(cpu, time_scale=1.5))
    assert scaled.seconds_per_step == pytest.approx(6.375)
    preference = dataclasses.replace(cost, workload=dataclasses.replace(work, reference_tokens=5 * 10**9))
    assert preference.seconds == pytest.approx(42.5 + 2 * 100 * 5e9 / 5e11)  # 2 × parameters × tokens


def test_each_matmul_call_takes_its_timed_seconds_or_the_longer_of_its_flops_and_its_bytes():
    """A call timed on this machine is charged its seconds; otherwise a roofline per call: a compute-bound call
    is charged its FLOPs, a memory-bound one (a low-rank update's skinny matmul) its bytes, never both; FLOPs
    outside the calls at the FLOP rate; the other operators' bytes apart."""
    from transferkit.cost.estimate import Cost, Workload
    from transferkit.cost.hardware import Hardware

    cpu = Hardware("m", "cpu", 2**30, 1e12, 0.5, "test", 0.0, False, "test", 1e10, 0.5, 0.0)
    calls = ((10**9, 10**6, 100, None),   # 1e9 / 5e11 = 2 ms of FLOPs vs 1e6 / 5e9 = 0.2 ms of bytes: 100 × 2 ms
             (10**6, 10**8, 5, None),     # 2 µs of FLOPs vs 1e8 / 5e9 = 20 ms of bytes: 5 × 20 ms
             (10**9, 10**6, 20, 0.001))   # timed on the machine at 1 ms: 20 × 1 ms, whatever its FLOPs
    flops = 120 * 10**9 + 5 * 10**6 + 5 * 10**10  # + 5e10 FLOPs outside the calls: 0.1 s
    cost = Cost("lora", "m", "causal-lm", cpu, "fp32", Workload(1, 1, 8, 8, 8.0, 1, 1, "test"), 100, 10, 40, {},
                flops, traffic_per_step=10**9, compute_per_step=calls)
    assert cost.step_parts["flops"] == pytest.approx(0.2 + 0.1 + 0.02 + 0.1)
    assert cost.step_parts["traffic"] == pytest.approx(0.2)       # 1e9 / 5e9, the matmuls' bytes not in it
    assert cost.seconds_per_step == pytest.approx(0.62)


def test_heap_high_water_is_the_largest_phase_grown_to_depth_and_prices_the_allocator():
    from transferkit.cost.estimate import ACTIVATION_SLACK, heap_high_water, overheads
    from transferkit.cost.simulate import StepTrace

    # Per phase, heap-sized activations and logits at its peak: 2 layers, 3 layers. Grown to 30 layers the
    # forward holds 100 + 28 × 50 = 1,500, the backward 80 + 28 × 10 = 360, the optimizer 10: the step's high
    # water is the forward's, whichever phase is the step's peak.
    two = StepTrace({}, 0, heap={"forward 0": 100, "backward 0": 80, "optimizer": 10})
    three = StepTrace({}, 0, heap={"forward 0": 150, "backward 0": 90, "optimizer": 10})
    assert heap_high_water(two, three, 30) == 1500
    assert heap_high_water(two, two, 2) == 100
    assert heap_high_water(StepTrace({}, 0), StepTrace({}, 0), 30) == 0
    assert overheads(1500, "cpu", "bf16", ())["allocator"] == int(ACTIVATION_SLACK["cpu"]["bf16"] * 1500)
    assert overheads(1500, "cuda", "bf16", ())["allocator"] == 0


def test_the_heap_counts_transient_storages_up_to_glibcs_largest_mmap_threshold(tiny_config, monkeypatch):
    """The allocator term is a share of the step's high water of heap-sized activations and logits: at least
    the peak's own (every storage of the tiny model is heap-sized). Storages above MMAP_MAX are mapped apart and
    returned when freed: with the bound at 0 nothing is the heap's, and the peak loses exactly that term."""
    from transferkit.cost import estimate, simulate
    from transferkit.cost.estimate import ACTIVATION_SLACK

    cfg = tiny_config("method={name: full}", "train.batch_size=8", "train.micro_batch_size=8")
    full = estimate(cfg, _roomy())
    assert full.heap_bytes >= full.memory["activations"] + full.memory["logits"] > 0
    assert full.memory["allocator"] == int(ACTIVATION_SLACK["cpu"]["fp32"] * full.heap_bytes)
    monkeypatch.setattr(simulate, "MMAP_MAX", 0)
    mapped = estimate(cfg, _roomy())
    assert mapped.heap_bytes == 0 and mapped.memory["allocator"] == 0
    assert mapped.peak_bytes == full.peak_bytes - full.memory["allocator"]


def test_a_run_that_does_not_fit_gets_the_cheapest_change_that_does(tiny_config):
    from transferkit.api import cost
    from transferkit.cost import custom_hardware, estimate

    cfg = tiny_config("train.batch_size=8", "train.micro_batch_size=8")
    roomy = estimate(cfg, _roomy())
    # Short of the peak by a third of what grows with the micro-batch (the constant framework term does not).
    short = (roomy.memory["activations"] + roomy.memory["logits"] + roomy.memory["allocator"]) / 3
    tight = custom_hardware(memory_gb=(roomy.peak_bytes - short) / 2**30, tflops=1, price_per_hour=0, mfu=0.5,
                            device="cpu")
    [(over, fix)] = cost(cfg, tight)
    assert not over.fits and fix is not None
    change, fixed = fix
    assert change.startswith("train.micro_batch_size=") and fixed.fits and fixed.peak_bytes < over.peak_bytes
    nothing = custom_hardware(memory_gb=1e-6, tflops=1, price_per_hour=0, mfu=0.5, device="cpu")
    assert cost(cfg, nothing)[0][1] is None


def test_bad_hardware_is_one_clear_error():
    from transferkit.cost import custom_hardware, get_hardware

    with pytest.raises(ConfigError, match=r"unknown hardware 'h1000'; known: cpu, a100-40gb, .*h100"):
        get_hardware("h1000")
    with pytest.raises(ConfigError, match=r"--tflops > 0"):
        custom_hardware(memory_gb=16, tflops=0, price_per_hour=1, mfu=0.4)
    assert get_hardware("h100").memory_bytes > 70 * 2**30


def test_cost_cli_prints_json_for_every_method(tiny_config, tmp_path, capsys):
    import yaml

    from transferkit.cli import main
    from transferkit.config import config_to_dict

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(tiny_config())))
    assert main(["cost", str(path), "--method", "all", "--memory", "64", "--tflops", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"lora", "full", "prefix", "ia3", "adapter"} <= {row["method"] for row in rows}
    full = next(row for row in rows if row["method"] == "full")
    lora = next(row for row in rows if row["method"] == "lora")
    assert full["params"]["trainable"] == full["params"]["total"] > lora["params"]["trainable"]
    assert full["memory_bytes"]["optimizer"] > lora["memory_bytes"]["optimizer"]
    assert all(row["fits"] for row in rows)
    assert main(["cost", str(path), "--hardware", "nope"]) == 2


def test_the_training_peak_is_measured_apart_from_what_came_before():
    from transferkit.runtime import MemoryWatch

    watch = MemoryWatch(torch.device("cpu"))
    before = torch.ones(64 * 2**20)  # 256 MiB of float32, touched, freed before training
    del before
    watch.start_training()
    during = torch.ones(32 * 2**20)  # 128 MiB
    del during
    watch.end_training()
    facts = watch.facts()
    assert facts["train_peak_measured_apart"]
    assert 120 * 2**20 <= facts["train_peak_increase_bytes"] < 200 * 2**20
    assert facts["peak_bytes"] >= facts["before_model_bytes"] + 250 * 2**20


def test_memory_freed_before_training_is_given_back_to_the_system():
    """Small blocks freed below a live one stay in the C heap (resident) until `malloc_trim` returns them;
    training starts by doing so, so its peak does not carry what loading left behind."""
    from transferkit.runtime import memory_now_bytes, release_freed_memory

    cpu = torch.device("cpu")
    blocks = [torch.ones(16_384) for _ in range(4_000)]  # 4,000 × 64 KiB, below glibc's mmap threshold
    top = torch.ones(16_384)  # allocated above them: the heap's top stays in use, so free() cannot trim it
    del blocks
    held = memory_now_bytes(cpu)
    assert release_freed_memory(cpu)
    assert memory_now_bytes(cpu) < held - 150 * 2**20
    del top


@pytest.mark.parametrize("method,checkpointing", [("lora", False), ("full", False), ("prefix", False),
                                                  ("lora", True)])
def test_the_fake_replay_holds_what_real_tensors_hold(tiny_config, method, checkpointing):
    """The estimate (fake tensors, 1 and 2 layers, extrapolated) against the same step on the real, full-depth
    tiny model, counted tensor by tensor: within 20 % in all and for activations (CI's drift alarm; the
    benchmark holds the packaged models to 10 % of the measured process). With gradient checkpointing and two
    micro-batches per step, where counting FLOPs during the measured step once kept every recomputed layer
    alive (2.7× the real activations)."""
    from transferkit.config import with_method_defaults
    from transferkit.cost import estimate
    from transferkit.cost.estimate import replay
    from transferkit.methods import get_method, method_config_from_dict
    from transferkit.models import load_model
    from transferkit.runtime import Runtime
    from transferkit.train.setup import adapt

    cfg = tiny_config("train.batch_size=4", "train.micro_batch_size=2",
                      f"train.gradient_checkpointing={str(checkpointing).lower()}")
    if method != "lora":  # the tiny config's method keys are LoRA's
        cfg = dataclasses.replace(cfg, method=method_config_from_dict({"name": method}))
    cfg = with_method_defaults(cfg, "instruction")
    predicted = estimate(cfg, _roomy())
    runtime = Runtime(torch.device("cpu"))
    model, _, _ = load_model(cfg.model, attention="eager")
    model = adapt(model, get_method(method), cfg.method, cfg.train, "causal-lm", runtime)
    real = replay(cfg, "causal-lm", None, predicted.workload, runtime, "eager", 0, real=model)
    tensors = sum(v for k, v in predicted.memory.items() if k not in ("allocator", "framework"))
    assert tensors == pytest.approx(real.peak_bytes, rel=0.2)
    assert predicted.memory["activations"] == pytest.approx(real.peak["activations"], rel=0.2)
    assert predicted.flops_per_step == pytest.approx(real.flops, rel=0.05)


def test_the_calculator_shows_activations_with_and_without_checkpointing(tiny_config, tmp_path, capsys):
    """Each row carries both: the configured one is the breakdown's, checkpointing keeps less, and a
    replay of the other setting agrees with the row."""
    import yaml

    from transferkit.api import cost
    from transferkit.cli import main
    from transferkit.config import config_to_dict, with_overrides
    from transferkit.cost import estimate

    cfg = tiny_config("train.batch_size=4", "train.micro_batch_size=4")
    [(row, _)] = cost(cfg, _roomy())
    both = row.activations_by_checkpointing
    assert not row.gradient_checkpointing and both["off"] == row.memory["activations"]
    checkpointed = estimate(with_overrides(cfg, ["train.gradient_checkpointing=true"]), _roomy())
    assert checkpointed.gradient_checkpointing and both["on"] == checkpointed.memory["activations"]
    assert 0 < both["on"] < both["off"]

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(cfg)))
    assert main(["cost", str(path), "--memory", "64", "--tflops", "2", "--device", "cpu"]) == 0
    assert "without gradient checkpointing" in capsys.readouterr().out
    assert main(["cost", str(path), "--memory", "64", "--tflops", "2", "--device", "cpu", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)  # one object for one method (an array only for --method all)
    assert printed["activations_by_checkpointing"] == both


def test_a_peak_has_settled_at_the_first_step_after_which_it_grows_by_at_most_one_percent():
    from transferkit.cost.calibrate import Measured

    assert Measured(1000, [1.0] * 3, [100, 200, 991, 1000]).settled_step == 3    # 9 bytes more: within 1 % of 1000
    assert Measured(1000, [1.0] * 3, [100, 200, 989, 1000]).settled_step == 4    # 11 bytes more: still growing
    assert Measured(1000, [1.0] * 3, [1000, 1000, 1000, 1000]).settled_step == 1


def test_calibrate_says_when_the_peak_was_still_growing_at_its_last_step(tiny_config):
    """A peak that grew more than 1 % at the last measured step under-reads a longer run's: the printout says so,
    and says nothing when it had settled."""
    from transferkit.cost import estimate
    from transferkit.cost.calibrate import Calibration, Measured
    from transferkit.cost.format import format_calibration

    predicted = estimate(tiny_config(), _roomy())
    growing = Calibration(predicted, 3, Measured(2000, [1.0] * 3, [1000, 1500, 1800, 2000]))
    settled = Calibration(predicted, 3, Measured(2000, [1.0] * 3, [1000, 2000, 2000, 2000]))
    assert "the peak still grew at step 4 of 4" in format_calibration(growing)
    assert "still grew" not in format_calibration(settled) and settled.as_dict()["settled_step"] == 2


def test_calibrate_measures_real_steps_and_scales_the_run_by_them(tiny_config):
    """`--calibrate`: real steps in a child process; the calibrated run time is the measured step time × the
    run's steps, whatever MFU the hardware table assumed; the measured peak is the child's own."""
    from transferkit.cost import get_hardware
    from transferkit.cost.calibrate import calibrate

    cfg = tiny_config("train.max_steps=40", "train.batch_size=4")
    measured = calibrate(cfg, get_hardware("cpu"), steps=2)
    assert measured.steps == 2 and measured.peak_bytes > 0 and measured.seconds_per_step > 0
    steps = measured.measured.step_seconds
    assert len(steps) == 2 and min(steps) > 0  # one interval per step after the first
    assert min(steps) <= measured.seconds_per_step <= max(steps)
    peaks = measured.measured.step_peak_bytes  # after each of the 3 steps, the warm-up's first: a running maximum
    assert len(peaks) == 3 and peaks == sorted(peaks) and peaks[-1] == measured.peak_bytes
    assert 1 <= measured.as_dict()["settled_step"] <= 3
    assert measured.calibrated().seconds == pytest.approx(40 * measured.seconds_per_step)
    assert measured.time_scale == pytest.approx(measured.seconds_per_step / measured.predicted.seconds_per_step)
    assert measured.mfu == pytest.approx(measured.predicted.flops_per_step / (
        measured.seconds_per_step * measured.predicted.hardware.peak_flops))
    assert not (Path(cfg.output_dir)).exists()  # nothing written where the real run would go
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="measures this machine"):
            calibrate(cfg, get_hardware("h100"), steps=2)


def test_an_fp32_run_on_a_bf16_machine_is_priced_at_the_fp32_peak(tiny_config):
    """A CPU measured in bf16 (what `auto` trains in there) carries its fp32 peak too; a run that asks for fp32
    is priced at that one with the fp32 time constants, a bf16 run as measured; a machine without bf16 keeps its
    one peak."""
    from transferkit.cost import estimate
    from transferkit.cost.hardware import CPU_TIME, Hardware

    machine = Hardware("cpu", "cpu", 2**40, 8e11, 0.5, "test", 0.0, True, "test", 0.0, 0.5, 1e-5,
                       fp32_peak_flops=2e11)  # bandwidth unknown: the matmuls are charged their FLOPs alone
    fp32 = estimate(tiny_config("train.precision=fp32"), machine)
    bf16 = estimate(tiny_config("train.precision=bf16"), machine)
    assert fp32.hardware.peak_flops == 2e11 and bf16.hardware.peak_flops == 8e11
    slow = CPU_TIME["fp32"]
    assert fp32.step_parts["flops"] == pytest.approx(fp32.flops_per_step / (2e11 * slow.mfu))
    assert fp32.step_parts["operators"] == pytest.approx(fp32.ops_per_step * slow.op_seconds)
    assert bf16.step_parts["flops"] == pytest.approx(bf16.flops_per_step / (8e11 * 0.5))
    assert bf16.step_parts["operators"] == pytest.approx(bf16.ops_per_step * 1e-5)
    no_bf16 = estimate(tiny_config("train.precision=fp32"),
                       dataclasses.replace(machine, bf16=False, fp32_peak_flops=0.0))
    assert no_bf16.hardware.peak_flops == 8e11
