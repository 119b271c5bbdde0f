"""`transferkit export RUN_DIR --target peft|vllm|hf --out DIR`: a run in the form another tool loads.

    peft   the adapter folder as trained (adapter_config.json, adapter_model.safetensors) + manifest.json;
           stock `peft.PeftModel.from_pretrained(base, DIR)` loads it. PEFT-format methods only.
    vllm   the same, after the checks below; refused with every reason at once where vLLM would refuse it
    hf     the merged model (`merge.py`): a plain Hugging Face folder

manifest.json: the base (its portable reference and fingerprint), the method and its config, the library versions
it was written with, and the run's test metrics.

What vLLM's LoRA loader accepts (vLLM 0.6–0.11, `vllm/lora/`, and the refusals its users report): plain LoRA or
rsLoRA (no DoRA, no prompt learning, no IA3), no `modules_to_save` (a classification run's new head is one), no
bias (`bias: none`), rank at most the server's `--max-lora-rank` (`--max-lora-rank` here, vLLM's default 16), and
target modules among the projections its model implementations pack (`VLLM_TARGETS`). Nothing is converted
silently: a rank above the maximum is a refusal (truncating it would change the model), not a truncation.
"""

from __future__ import annotations

import json
import platform
import shutil
from pathlib import Path

from ..config import load_config
from ..errors import UserError
from ..files import write_dir_atomic
from ..methods import get_method
from ..rundir import RunDir
from ..runs import finished_config
from .merge import check_free, merge_run

TARGETS = ("peft", "vllm", "hf")
VLLM_TARGETS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "qkv_proj",
                "gate_up_proj", "dense", "query_key_value", "dense_h_to_4h", "dense_4h_to_h", "c_attn", "c_proj",
                "c_fc", "w1", "w2", "w3", "wqkv", "wo", "lm_head", "embed_tokens"}
VLLM_MAX_RANK = 16


def manifest(run: RunDir) -> dict:
    from importlib.metadata import version

    cfg = load_config(run.config)
    fingerprint = run.adapter / "transferkit_base.json"
    summary = run.read_summary()
    return {"base": json.loads((run.adapter / "adapter_config.json").read_text()).get("base_model_name_or_path",
                                                                                     cfg.model),
            "base_fingerprint": json.loads(fingerprint.read_text()) if fingerprint.is_file() else None,
            "method": cfg.method.name, "method_config": {k: v for k, v in vars(cfg.method).items()},
            "task": summary.get("schema"), "test_metrics": {k: v for k, v in (summary.get("test") or {}).items()
                                                          if isinstance(v, (int, float))},
            "versions": {**{name: version(name) for name in ("transferkit", "torch", "transformers", "peft")},
                         "python": platform.python_version()}}


def vllm_problems(adapter_config: dict, max_rank: int) -> list[str]:
    """Every reason vLLM's LoRA loader would refuse this adapter (module docstring); [] when it accepts it."""
    problems = []
    if adapter_config.get("peft_type") != "LORA":
        problems.append(f"peft type {adapter_config.get('peft_type')}: vLLM serves LoRA adapters only")
    if adapter_config.get("use_dora"):
        problems.append("DoRA: vLLM has no DoRA kernels")
    if adapter_config.get("modules_to_save"):
        problems.append(f"modules_to_save {sorted(set(adapter_config['modules_to_save']))}: vLLM loads no fully trained modules "
                        f"(a classification head is one)")
    if adapter_config.get("bias", "none") != "none":
        problems.append(f"bias '{adapter_config['bias']}': vLLM loads LoRA weights without biases")
    rank = max([adapter_config.get("r", 0), *(adapter_config.get("rank_pattern") or {}).values()])
    if rank > max_rank:
        problems.append(f"rank {rank} above --max-lora-rank {max_rank} (raise it on the server and here, or "
                        f"retrain with method.r ≤ {max_rank})")
    targets = adapter_config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    unknown = sorted(set(targets) - VLLM_TARGETS)
    if unknown:
        problems.append(f"target modules {unknown} are not among the projections vLLM's models pack")
    return problems


def export_run(run_dir: str | Path, target: str, out: str | Path, max_rank: int = VLLM_MAX_RANK,
               dtype: str = "fp32", force: bool = False) -> dict:
    """Write the run to `out` for `target`; returns what was written ({"target", "out", ...})."""
    if target not in TARGETS:
        raise UserError(f"--target '{target}': choose one of {', '.join(TARGETS)}")
    run, out = RunDir(run_dir), Path(out)
    cfg = finished_config(run)
    check_free(out)
    if target == "hf":
        return {"target": target, "out": str(out), "merge": merge_run(run.path, out, dtype, force)}
    method = get_method(cfg.method.name)
    if not method.peft_format:
        raise UserError(f"method '{method.name}' does not save in PEFT format; export it with --target hf (the "
                        f"merged model)" + ("" if method.trains_base_weights else " where it merges, or use the run as it is"))
    adapter_config = json.loads((run.adapter / "adapter_config.json").read_text())
    if target == "vllm" and (problems := vllm_problems(adapter_config, max_rank)):
        raise UserError("vLLM would refuse this adapter: " + "; ".join(problems))
    facts = manifest(run)

    def write(tmp: Path) -> None:
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copy2(run.adapter / name, tmp / name)
        (tmp / "manifest.json").write_text(json.dumps(facts, indent=2, default=str) + "\n")

    write_dir_atomic(out, write)
    return {"target": target, "out": str(out), "manifest": facts}
