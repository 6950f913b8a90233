"""All gates of one adapter in one leaf tensor (modules x r_max): the L1 term, both proxes and the optimizer's gate
group then cost a constant number of kernels, whatever the number of modules (issue 26).

Each module's gate (``module.lora_gate[adapter]``, a :class:`~sora.tuners.sora.layer.SoraGate`) is a row of the bank,
and its state-dict key is unchanged (``...lora_gate.<adapter>.weight``): saved adapters, checkpoints and peft's
save/load see per-module gates as before. The bank itself adds no key.

Once per forward of the LoRA model (a pre-hook), the bank makes every module's gate in the compute dtype in one
node (:class:`_BankRows`: the cast under autocast, ``unbind``, and the code variant's L1 value), so a module's forward
reads its row without an op of its own and the backward gathers every row's gradient in one ``stack``. The rows are
reused when a checkpointed block recomputes in backward. A module called outside that forward (a direct call into
a submodule, ``generate`` under the hood) finds no fresh row and makes its own (correct, a few ops more).

Under ``torch.compile`` (``train.compile``) the cached rows are skipped: each module reads ``weight[index]`` in the
compute dtype and the L1 term is the plain one, so the model traces as one graph with no state carried between
hooks (the compiler fuses those few ops anyway).
"""

from __future__ import annotations

import torch
from torch import nn


class _BankRows(torch.autograd.Function):
    """weight -> (its rows in the compute dtype, ... [, l1_scale * ||weight||_1]): one node, so the backward is one
    ``stack`` of the rows' gradients (+ the cast back) and, with the L1 term, one ``addcmul`` of its gradient
    ``l1_scale * sgn(weight)`` — the same floats as autograd's ``abs().sum()`` path, in three ops instead of nine.
    Nothing is saved through ``save_for_backward``, so a reentrant checkpoint may run the backward once per segment."""

    @staticmethod
    def forward(ctx, weight, dtype, l1_scale: float):
        ctx.set_materialize_grads(False)
        ctx.weight, ctx.l1_scale = weight, l1_scale
        rows = weight.to(dtype).unbind(0)
        if not l1_scale:
            return rows
        return (*rows, torch.linalg.vector_norm(weight, ord=1) * l1_scale)

    @staticmethod
    def backward(ctx, *grads):
        weight = ctx.weight
        rows, grad_l1 = (grads[:-1], grads[-1]) if ctx.l1_scale else (grads, None)
        if any(g is None for g in rows):  # a module not run in this forward
            rows = [torch.zeros(weight.shape[1:], dtype=next((g.dtype for g in rows if g is not None),
                                                               weight.dtype), device=weight.device)
                    if g is None else g for g in rows]
        grad = torch.stack(rows).to(weight.dtype)
        if grad_l1 is not None:
            grad.addcmul_(torch.sgn(weight), grad_l1, value=ctx.l1_scale)
        return grad, None, None


class GateBank(nn.Module):
    def __init__(self, rows: list[torch.Tensor], l1_coef: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([r.detach() for r in rows]))
        self.l1_coef = l1_coef  # the code variant's L1 term, made in the same node as the rows (``l1``)
        self._views: tuple[torch.Tensor, ...] | None = None
        self._l1: torch.Tensor | None = None
        self._key = None

    def extra_repr(self) -> str:
        return f"modules={self.weight.shape[0]}, r_max={self.weight.shape[1]}"

    def compute_dtype(self) -> torch.dtype:
        """The autocast dtype under autocast, else the bank's own."""
        device = self.weight.device.type
        if torch.is_autocast_enabled(device):
            return torch.get_autocast_dtype(device)
        return self.weight.dtype

    def refresh(self, *_args) -> None:
        """The pre-hook: every module's gate in the compute dtype, as views of one tensor (and, when training
        with an L1 term, its value ``l1_coef * sum |g| / numel``)."""
        if torch.compiler.is_compiling():
            return
        dtype = self.compute_dtype()
        grad = torch.is_grad_enabled()
        l1_scale = self.l1_coef / self.weight.numel() if grad and self.l1_coef else 0.0
        out = _BankRows.apply(self.weight, dtype, l1_scale)
        self._views, self._l1 = (out[:-1], out[-1]) if l1_scale else (out, None)
        self._key = (self.weight._version, dtype, grad)

    def _fresh(self, dtype: torch.dtype) -> bool:
        key = self._key
        return key is not None and key[0] == self.weight._version and key[1] == dtype and (
            key[2] or not torch.is_grad_enabled())

    def effective(self, index: int) -> torch.Tensor:
        """Row ``index`` as the forward needs it: in the compute dtype."""
        dtype = self.compute_dtype()
        if not torch.compiler.is_compiling() and self._fresh(dtype):
            return self._views[index]
        return self.weight[index].to(dtype)

    def l1(self, coef: float) -> torch.Tensor | None:
        """This forward's ``coef * sum |g| / numel`` if the pre-hook made it with that coefficient, else None."""
        if self._l1 is None or coef != self.l1_coef or not self._fresh(self._key[1]):
            return None
        return self._l1

    # the per-module SoraGate rows carry the state; the bank adds no key of its own
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        pass

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        pass
