"""QLoRA (Dettmers et al. 2023, arXiv:2305.14314): LoRA over a frozen base
quantized to 4-bit NormalFloat (NF4) with double quantization of the block
scales; the LoRA matrices and the compute stay in bf16/fp32.

The base is quantized at load time by `bitsandbytes` (its NF4 kernels run on
CPU and CUDA), then `peft.prepare_model_for_kbit_training` upcasts the
remaining float parameters (norms, embeddings) and enables input gradients.
The adapter is plain LoRA in PEFT format, so it also applies on the float base.
"""

from __future__ import annotations

from .lora import DEFAULTS, LoraMethodConfig, lora_closed_form, peft_lora_config, resolved
from .peft_common import PEFT_FUNCTIONS, wrap
from .registry import Method, register


def apply(model, cfg: LoraMethodConfig, task: str):
    from peft import prepare_model_for_kbit_training

    if not getattr(model, "is_loaded_in_4bit", False):
        raise ValueError("qlora needs a base loaded in 4-bit (the loader does this when method.name is qlora)")
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return wrap(model, peft_lora_config(model, cfg, task))


register(Method("qlora", LoraMethodConfig, apply=apply, summary="LoRA over a 4-bit NF4 base (bitsandbytes + peft)",
                defaults=DEFAULTS,
                quantize_base=True, closed_form=lora_closed_form, resolve=resolved, **PEFT_FUNCTIONS))
