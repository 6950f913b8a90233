"""The math of SoRA on top of peft's LoRA layer: a gate between ``lora_A`` and ``lora_B``.

The gate is a peft ``LoraVariant`` so peft's own forward, merge and unmerge paths call it; A and B stay
peft's ``lora_A``/``lora_B`` modules, so target matching, state-dict names and save/load are peft's.
"""

from __future__ import annotations

import torch
from peft.tuners.lora.layer import LoraVariant
from torch import nn

GATE_ATTR = "lora_gate"  # contains "lora_" so peft's get_peft_model_state_dict keeps it


class SoraGate(nn.Module):
    """g in R^{r}: one scalar per rank; the prox step drives whole entries to exactly 0."""

    def __init__(self, r: int, init: str = "ones"):
        super().__init__()
        data = torch.ones(r) if init == "ones" else torch.randn(r)
        self.weight = nn.Parameter(data)

    def extra_repr(self) -> str:
        return f"r={self.weight.numel()}"


def _gated_delta(module, adapter: str) -> torch.Tensor:
    """s * B diag(g) A, computed in fp32 then cast back, in the base weight's layout."""
    a = module.lora_A[adapter].weight
    b = module.lora_B[adapter].weight
    g = getattr(module, GATE_ATTR)[adapter].weight
    delta = (b.float() * g.float()) @ a.float() * module.scaling[adapter]
    if module.fan_in_fan_out:
        delta = delta.T
    return delta.to(b.dtype)


class SoraLinearVariant(LoraVariant):
    """ΔW x = s · B diag(g) A x, plugged into peft's ``Linear`` forward/merge/unmerge."""

    @staticmethod
    def init(module, adapter_name: str, gate_init: str = "ones", **kwargs) -> None:
        if not hasattr(module, GATE_ATTR):
            module.lora_gate = nn.ModuleDict()
            # peft toggles requires_grad / moves devices for every name listed here
            module.adapter_layer_names = tuple(module.adapter_layer_names) + (GATE_ATTR,)
        a = module.lora_A[adapter_name].weight
        gate = SoraGate(module.r[adapter_name], gate_init).to(device=a.device, dtype=a.dtype)
        module.lora_gate[adapter_name] = gate

    @staticmethod
    def forward(module, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs) -> torch.Tensor:
        lora_a = module.lora_A[active_adapter]
        lora_b = module.lora_B[active_adapter]
        gate = module.lora_gate[active_adapter].weight
        dropout = module.lora_dropout[active_adapter]
        return result + lora_b(lora_a(dropout(x)) * gate) * module.scaling[active_adapter]

    @staticmethod
    def merge_safe(module, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        return orig_weight + _gated_delta(module, active_adapter).to(orig_weight.dtype)

    @staticmethod
    def merge_unsafe(module, active_adapter: str, orig_weight: torch.Tensor) -> None:
        orig_weight.data += _gated_delta(module, active_adapter).to(orig_weight.dtype)

    @staticmethod
    def unmerge(module, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        return orig_weight.data - _gated_delta(module, active_adapter).to(orig_weight.dtype)


@torch.no_grad()
def soft_threshold_(gates: list[torch.Tensor], tau: float) -> None:
    """Proximal step of tau*||g||_1, in place: g <- sign(g) * max(|g| - tau, 0).

    ``tau`` is a Python float and every op is a device op, so nothing waits for the device (no ``.item()``).
    Entries with |g| <= tau become exactly 0.0 (a later optimizer step may revive them; the next prox
    step zeroes them again unless that step exceeded tau).
    """
    if tau <= 0 or not gates:
        return
    signs = torch._foreach_sign(gates)
    mags = torch._foreach_abs(gates)
    torch._foreach_sub_(mags, tau)
    torch._foreach_clamp_min_(mags, 0.0)
    torch._foreach_mul_(mags, signs)
    torch._foreach_copy_(gates, mags)


@torch.no_grad()
def release_prox_(gates: list[torch.Tensor], lam: float) -> None:
    """The released prox (TsinghuaC3I/SoRA @ c275ac2, ``src/sparse_optimizer.py:116-119``), with device ops.

    The release runs three in-place masks in sequence: ``p[p > lam] -= lam; p[p < -lam] += lam;
    p[abs(p) < lam] = 0``. The first two touch disjoint entries, so both read the original value; the third
    sees the shifted one. Hence every |g| < 2*lam ends at 0, |g| > 2*lam moves lam toward 0, and |g| == lam is
    kept as is. Boolean-mask indexing syncs the host on CUDA; ``torch.where`` on one flat copy of all gates
    (one cat, a few elementwise ops, one multi-tensor copy back) gives the same floats without a sync.
    """
    if lam <= 0 or not gates:
        return
    flat = torch.cat([g.reshape(-1) for g in gates])
    shifted = torch.where(flat > lam, flat - lam, torch.where(flat < -lam, flat + lam, flat))
    out = torch.where(shifted.abs() < lam, torch.zeros_like(shifted), shifted)
    torch._foreach_copy_(gates, [o.view_as(g) for o, g in zip(out.split([g.numel() for g in gates]), gates)])
