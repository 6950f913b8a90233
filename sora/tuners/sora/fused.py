"""SoRA's gated LoRA product as one autograd node: ``result + s B diag(g) A x``.

Why one node: on a GPU the step is launch-bound, and autograd's own graph for ``lora_B(lora_A(x) * g) * s`` costs a
gate multiply, its two backward products, a scale multiply each way and an add per module. Here the forward is the
two LoRA matmuls, one gate multiply and an ``addmm`` that folds in the residual add and the scale (its ``alpha``);
the backward computes dA, dB and dg together (the four LoRA matmuls, the scale again as ``alpha`` of two of them,
one multiply for dA's input, a multiply and a sum for dg). ``scripts/bench_ops.py``
counts the result; ``tests/test_fused_gate.py`` checks values and gradients against the plain autograd formula.

Everything runs in ``g``'s dtype (the compute dtype the gate bank chose: the autocast dtype under autocast), with
autocast off inside, so the casts are the ones autocast would make for LoRA's two linears and no more; gradients
return in each input's own dtype.
"""

from __future__ import annotations

import torch


class GatedLoraProduct(torch.autograd.Function):
    """out = result + s ((x A^T) * g) B^T."""

    @staticmethod
    def forward(ctx, x, result, a_weight, b_weight, g, scale: float):
        dtype = g.dtype
        with torch.autocast(x.device.type, enabled=False):
            x2 = x.reshape(-1, x.shape[-1]).to(dtype)
            a_c, b_c = a_weight.to(dtype), b_weight.to(dtype)
            low = torch.mm(x2, a_c.t())
            gated = low * g
            res2 = result.reshape(-1, result.shape[-1])
            if res2.dtype == dtype:
                out = torch.addmm(res2, gated, b_c.t(), alpha=scale)
            else:
                out = res2 + (torch.mm(gated, b_c.t()) * scale).to(res2.dtype)
        ctx.save_for_backward(x2, a_c, b_c, low, gated, g)
        ctx.dtypes = (x.dtype, result.dtype, a_weight.dtype, b_weight.dtype)
        ctx.x_shape, ctx.scale = x.shape, scale
        return out.view(result.shape)

    @staticmethod
    def backward(ctx, grad_out):
        x2, a_c, b_c, low, gated, g = ctx.saved_tensors
        x_dtype, _, a_dtype, b_dtype = ctx.dtypes
        need_x, need_result, need_a, need_b, need_g, _ = ctx.needs_input_grad
        go = grad_out.reshape(-1, grad_out.shape[-1]).to(g.dtype)
        grad_x = grad_a = grad_b = grad_g = None
        # s * go B and s * go^T gated as addmm with beta 0 (the first argument only gives the shape; never read)
        grad_gated = torch.addmm(low, go, b_c, beta=0, alpha=ctx.scale)
        if need_b:
            grad_b = torch.addmm(b_c, go.t(), gated, beta=0, alpha=ctx.scale).to(b_dtype)
        if need_g:
            grad_g = (grad_gated * low).sum(0)
        if need_x or need_a:
            grad_low = grad_gated * g
            if need_a:
                grad_a = torch.mm(grad_low.t(), x2).to(a_dtype)
            if need_x:
                grad_x = torch.mm(grad_low, a_c).view(ctx.x_shape).to(x_dtype)
        return grad_x, (grad_out if need_result else None), grad_a, grad_b, grad_g, None


def gated_lora(x: torch.Tensor, result: torch.Tensor, a_weight: torch.Tensor, b_weight: torch.Tensor,
               g: torch.Tensor, scale: float) -> torch.Tensor:
    return GatedLoraProduct.apply(x, result, a_weight, b_weight, g, scale)
