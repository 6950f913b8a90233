"""An independent transcription of the released SoRA training step (TsinghuaC3I/SoRA @ c275ac2).

Written from the released source, line by line, never from ``sora``: tests put it beside the project's real
step and demand the same trajectory. Each piece cites where it comes from.

* ``HFAdamW``: transformers 4.14.1 ``optimization.py:272-372`` (``from transformers import AdamW`` in
  ``src/util.py:5`` and ``src/sparse_optimizer.py:1``), the update of ``AdamW.step`` copied as it is.
* ``SparseAdamW``: ``src/sparse_optimizer.py:53-121``: the same update, then three in-place masks.
* ``sparse_loss``: ``src/trainer.py:400-407``.
* ``main_param_groups``: ``src/util.py:43-61`` (``get_parameter_names(model, [nn.LayerNorm])``, no bias).
* ``linear_warmup_lambda``: transformers 4.14.1 ``optimization.py:75-99`` ``get_linear_schedule_with_warmup``;
  warmups from ``run_glue.py:606`` + ``training_args.py:1239-1246`` (``ceil``) and ``run_glue.py:619-621`` (``int``).
* ``ReleasedLoRA``: ``src/lora.py:38-47`` (``LowRankLinear``), inserted in parallel (``src/lora.py:149``).
* ``released_step``: ``src/trainer.py:742-795`` (clip over ``model.parameters()``, ``optimizer.step()``,
  ``sparse_optimizer.step()``, both schedulers, ``model.zero_grad()``).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim import Optimizer


class HFAdamW(Optimizer):
    """transformers 4.14.1 AdamW (optimization.py:272-372); defaults eps 1e-6, wd 0, correct_bias True."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, correct_bias=True):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      correct_bias=correct_bias))

    def adam_update(self, group, p):
        grad = p.grad.data
        state = self.state[p]
        if len(state) == 0:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p.data)
            state["exp_avg_sq"] = torch.zeros_like(p.data)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        beta1, beta2 = group["betas"]
        state["step"] += 1
        exp_avg.mul_(beta1).add_(grad, alpha=(1.0 - beta1))
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        denom = exp_avg_sq.sqrt().add_(group["eps"])
        step_size = group["lr"]
        if group["correct_bias"]:
            bias_correction1 = 1.0 - beta1 ** state["step"]
            bias_correction2 = 1.0 - beta2 ** state["step"]
            step_size = step_size * math.sqrt(bias_correction2) / bias_correction1
        return exp_avg, denom, step_size

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                exp_avg, denom, step_size = self.adam_update(group, p)
                p.data.addcdiv_(exp_avg, denom, value=-step_size)
                if group["weight_decay"] > 0.0:
                    p.data.add_(p.data, alpha=(-group["lr"] * group["weight_decay"]))


class SparseAdamW(HFAdamW):
    """src/sparse_optimizer.py:7-121 without the lambda schedule (not used by a single run)."""

    def __init__(self, sparse_lambda=0.1, **kwargs):
        super().__init__(**kwargs)
        self.sparse_lambda = sparse_lambda

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                exp_avg, denom, step_size = self.adam_update(group, p)
                to_add = torch.div(exp_avg, denom) * (-step_size)
                if group["weight_decay"] > 0.0:
                    to_add = to_add + (-group["lr"] * group["weight_decay"]) * p.data
                p.data.add_(to_add)
                if self.sparse_lambda > 0:
                    p.data[p.data > self.sparse_lambda] -= self.sparse_lambda
                    p.data[p.data < -self.sparse_lambda] += self.sparse_lambda
                    p.data[abs(p.data) < self.sparse_lambda] = 0.0


class ReleasedLoRA(nn.Module):
    """src/lora.py:16-47: A (r x in), B (out x r), gate (1 x r); forward ((x A^T) * gate) B^T * scaling."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, gate: torch.Tensor, scaling: float):
        super().__init__()
        self.lora_A = nn.Parameter(a.clone())
        self.lora_B = nn.Parameter(b.clone())
        self.gate = nn.Parameter(gate.clone().reshape(1, -1))
        self.scaling = scaling

    def forward(self, x):
        return ((x @ self.lora_A.T).mul(self.gate) @ self.lora_B.T) * self.scaling


def attach_parallel(linear: nn.Linear, delta: ReleasedLoRA) -> None:
    """opendelta's insert_parallel_module: the module's output plus the delta's output on the same input."""
    linear.add_module("lora", delta)
    linear.register_forward_hook(lambda mod, args, out: out + mod.lora(args[0]))


def sparse_loss(model, loss, sparse_lambda: float):
    """src/trainer.py:400-407."""
    s, p_total = 0.0, 0
    for n, p in model.named_parameters():
        if "lora.gate" in n:
            s += torch.sum(torch.abs(p))
            p_total += torch.numel(p.data)
    return loss + sparse_lambda * s / p_total


def main_param_groups(model, weight_decay: float):
    """src/util.py:43-55."""
    decay = [n for n, m in _param_owners(model) if not isinstance(m, nn.LayerNorm) and "bias" not in n]
    named = dict(model.named_parameters())
    return [
        {"params": [p for n, p in named.items() if n in decay and "lora.gate" not in n and p.requires_grad],
         "weight_decay": weight_decay},
        {"params": [p for n, p in named.items() if n not in decay and "lora.gate" not in n and p.requires_grad],
         "weight_decay": 0.0},
    ]


def _param_owners(model):
    for mod_name, module in model.named_modules():
        for p_name, _ in module.named_parameters(recurse=False):
            yield (f"{mod_name}.{p_name}" if mod_name else p_name), module


def linear_warmup_lambda(num_warmup_steps: int, num_training_steps: int):
    """transformers 4.14.1 get_linear_schedule_with_warmup's lr_lambda."""

    def lr_lambda(current_step: int):
        if current_step < num_warmup_steps:
            return float(current_step) / float(max(1, num_warmup_steps))
        return max(0.0, float(num_training_steps - current_step) / float(max(1, num_training_steps - num_warmup_steps)))

    return lr_lambda


def released_schedules(optimizer, sparse_optimizer, epochs: float, n_train: int, bsz: int, warmup_ratio: float):
    """run_glue.py:606 (main, via util.create_scheduler and TrainingArguments.get_warmup_steps) and 619-621."""
    n_steps = int(epochs * (n_train / bsz))
    main = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_lambda(math.ceil(n_steps * warmup_ratio),
                                                                             n_steps))
    gate_warmup = int(epochs * (n_train / bsz) * warmup_ratio)
    sparse = torch.optim.lr_scheduler.LambdaLR(sparse_optimizer, linear_warmup_lambda(gate_warmup, n_steps))
    return main, sparse


def released_step(model, batch, optimizer, sparse_optimizer, scheduler, sparse_scheduler, sparse_lambda: float,
                  max_grad_norm: float):
    """src/trainer.py:400-407 (loss) and 742-795 (the rest), fp32, no grad scaler, one process."""
    loss = sparse_loss(model, model(**batch).loss, sparse_lambda)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    sparse_optimizer.step()
    scheduler.step()
    sparse_scheduler.step()
    model.zero_grad()
    return loss.detach()
