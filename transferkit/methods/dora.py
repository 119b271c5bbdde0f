"""DoRA's column norm without weight-sized temporaries (Liu et al. 2024, arXiv:2402.09353).

DoRA's output is W'x with W' = m · (W + s·BA) / ||W + s·BA||_c: for a d×k weight W, the rank-r update
B: [d, r], A: [r, k] scaled by s, and a learned magnitude m: [d]. The norm is of each output row of the
adapted weight, treated as a constant (detached, the paper's §4.3). peft's `DoraLinearLayer` forms it
from the whole d×k matrix: B·A (through an identity matrix [k, k] and autograd), W + s·BA, the norm — four
weight-sized temporaries per adapted layer per forward pass. On a CPU their heap blocks stay resident
between the much smaller activations of a short sequence (docs/cost.md: SmolLM2 at 1 × 64 tokens held
687–945 MiB where its live tensors peak at 650). The same norm needs only [d, r] and [r, r] products:

    ||W_i + s·B_i A||²  =  ||W_i||²  +  2s · B_i · (W_i Aᵀ)  +  s² · B_i (A Aᵀ) B_iᵀ     (rows i: W, B)

    W Aᵀ: [d, r]  (2dkr FLOPs, as B·A)    A Aᵀ: [r, r]    ||W_i||²: a reduction of W in place

`LeanDoraLinearLayer` is peft's layer with that forward, summed in fp32. With a bf16 weight (frozen weights
under bf16 training) ||W_i|| and W Aᵀ are reduced in fp32 and rounded to bf16, as autocast rounds a matmul and as
peft rounds its norm (a cast to fp32 would be a weight-sized copy): within 2⁻⁸ of the norm formed in fp32
(tests/test_methods_matrix.py). Everything else — the magnitude parameter and its name, merging, saving — is
peft's.
`lean_dora` swaps it in for every linear DoRA layer of a model, after `apply` and after `load`, so training,
evaluation and serving run the same arithmetic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from peft.tuners.lora.dora import DoraLinearLayer  # imported where DoRA is applied or loaded (`lora.lean_dora`)
from peft.utils.integrations import dequantize_module_weight
from peft.utils.other import transpose


def column_norm(weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float) -> torch.Tensor:
    """||W + s·BA|| per output row, in fp32, without forming a d×k matrix: W [d, k] (any float dtype),
    A [r, k], B [d, r] → [d]."""
    with torch.no_grad(), torch.autocast(weight.device.type, enabled=False):
        a, b = lora_A.float(), lora_B.float()
        wa = torch.mm(weight, a.t().to(weight.dtype)).float()                        # [d, r]
        squares = torch.linalg.vector_norm(weight, dim=1).float() ** 2               # [d], W's dtype: no copy
        cross = (b * wa).sum(dim=1)                                                   # [d]
        low_rank = (torch.mm(b, torch.mm(a, a.t())) * b).sum(dim=1)                  # [d]
        return (squares + 2 * scaling * cross + scaling ** 2 * low_rank).clamp_min(0).sqrt()


class LeanDoraLinearLayer(DoraLinearLayer):
    """peft's DoRA magnitude layer, its forward computing the norm with `column_norm`."""

    def forward(self, x, *, lora_A, lora_B, scaling, base_layer, base_result=None, adapter_name="default"):
        weight = transpose(dequantize_module_weight(base_layer), self.fan_in_fan_out)   # [d, k]
        norm = column_norm(weight, lora_A.weight, lora_B.weight, scaling)               # [d], detached
        mag_norm_scale = (self.weight / norm).view(1, -1)                               # [1, d]
        lora_result = lora_B(lora_A(x))                                                 # [..., d]
        if base_result is None:  # peft passes it unless dropout changed x: W x on the dropped-out input
            base_result = F.linear(x, weight.to(x.dtype))
        elif base_layer.bias is not None:
            base_result = base_result - base_layer.bias
        return (mag_norm_scale - 1) * base_result + mag_norm_scale * lora_result * scaling


def lean_dora(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with every peft linear DoRA layer computing its norm as `LeanDoraLinearLayer` does (the same
    module, its class changed: parameters, names and state stay); returns the model."""
    for module in model.modules():
        if type(module) is DoraLinearLayer:
            module.__class__ = LeanDoraLinearLayer
    return model
