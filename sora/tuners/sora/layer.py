"""The math of SoRA on top of peft's LoRA layer: a gate between ``lora_A`` and ``lora_B``.

The gate is a peft ``LoraVariant`` so peft's own forward, merge and unmerge paths call it; A and B stay
peft's ``lora_A``/``lora_B`` modules, so target matching, state-dict names and save/load are peft's.
"""

from __future__ import annotations

import numpy as np
import torch
from peft.tuners.lora.layer import LoraVariant
from torch import nn

from sora.tuners.sora.fused import gated_lora

GATE_ATTR = "lora_gate"  # contains "lora_" so peft's get_peft_model_state_dict keeps it


class SoraGate(nn.Module):
    """g in R^{r}: one scalar per rank; the prox step drives whole entries to exactly 0.

    Built with a parameter of its own; :func:`sora.tuners.sora.model.get_sora_model` then moves every gate into one
    :class:`~sora.tuners.sora.gate_bank.GateBank` and ``weight`` becomes that bank's row (a view: in-place edits,
    ``.data`` and state-dict loads write through). The state-dict key stays ``weight``.
    """

    def __init__(self, r: int, init: str = "ones"):
        super().__init__()
        data = torch.ones(r) if init == "ones" else torch.randn(r)
        self.weight = nn.Parameter(data)
        self.bank, self.index = None, None

    def attach(self, bank, index: int) -> None:
        del self.weight  # the parameter now lives in the bank
        object.__setattr__(self, "bank", bank)  # not a submodule: the bank is registered once, on the LoRA model
        self.index = index

    def __getattr__(self, name):
        if name == "weight" and self.__dict__.get("bank") is not None:
            return self.bank.weight[self.index]
        return super().__getattr__(name)

    def effective(self) -> torch.Tensor:
        return self.bank.effective(self.index)

    def extra_repr(self) -> str:
        return f"r={self.weight.numel()}"

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        if self.bank is None:
            return super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "weight"] = self.weight if keep_vars else self.weight.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        if self.bank is None:
            return super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                                 unexpected_keys, error_msgs)
        key = prefix + "weight"
        if key not in state_dict:
            if strict:
                missing_keys.append(key)
            return
        value = state_dict[key]
        row = self.weight
        if value.shape != row.shape:
            error_msgs.append(f"size mismatch for {key}: copying a param with shape {tuple(value.shape)}, "
                              f"the shape in current model is {tuple(row.shape)}.")
            return
        with torch.no_grad():
            row.copy_(value)


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
        gate = module.lora_gate[active_adapter]
        dropout = module.lora_dropout[active_adapter]
        if gate.bank is None or lora_b.bias is not None:  # a gate outside a bank, or peft's lora_bias: autograd
            return result + lora_b(lora_a(dropout(x)) * gate.weight) * module.scaling[active_adapter]
        return gated_lora(dropout(x), result, lora_a.weight, lora_b.weight, gate.effective(),
                          module.scaling[active_adapter])

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
    if isinstance(tau, torch.Tensor):  # a device-tensor lr (capturable step): the same floats, no host read
        for g in gates:
            g.copy_(g.sign() * (g.abs() - tau).clamp_min(0.0))
        return
    if tau <= 0 or not gates:
        return
    if len(gates) == 1:  # one bank: softshrink is the same threshold, in one op
        gates[0].copy_(torch.nn.functional.softshrink(gates[0], tau))
        return
    signs = torch._foreach_sign(gates)
    mags = torch._foreach_abs(gates)
    torch._foreach_sub_(mags, tau)
    torch._foreach_clamp_min_(mags, 0.0)
    torch._foreach_mul_(mags, signs)
    torch._foreach_copy_(gates, mags)


# the largest float below x in the gates' dtype (host arithmetic: no device op, no sync)
_NEXT_BELOW = {torch.float32: lambda x: float(np.nextafter(np.float32(x), np.float32(0))),
               torch.float64: lambda x: float(np.nextafter(np.float64(x), np.float64(0)))}


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
    if len(gates) == 1 and gates[0].dtype in _NEXT_BELOW:  # one bank: the same floats in six ops
        g = gates[0]
        # softshrink is the first two masks (|g| > lam moves lam toward 0, else 0); hardshrink at the next float
        # below lam keeps |x| >= lam, the third mask's survivors; |g| == lam exactly is kept as is (all masks skip it)
        shifted = torch.nn.functional.softshrink(g, lam)
        out = torch.nn.functional.hardshrink(shifted, _NEXT_BELOW[g.dtype](lam))
        g.copy_(torch.where(g.abs() == lam, g, out))
        return
    flat = torch.cat([g.reshape(-1) for g in gates])
    out = torch.where(flat.abs() > lam, flat - flat.clamp(-lam, lam), flat)  # the first two masks: g -/+ lam
    out.masked_fill_(out.abs() < lam, 0.0)  # the third, on the shifted values
    torch._foreach_copy_(gates, [o.view_as(g) for o, g in zip(out.split([g.numel() for g in gates]), gates)])
