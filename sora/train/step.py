"""The training step, in the one order every method and every caller shares (nanoGPT style):

    forward (+ the method's extra loss) -> backward -> clip the global grad norm -> optimizer.step()
    -> method.after_optimizer_step (SoRA prox / AdaLoRA budget) -> lrs read -> scheduler.step() -> zero_grad()

``scripts/train.py`` runs exactly this function, and so do the fidelity tests that put it beside a
transcription of the released SoRA step: there is no second copy of the step to drift.
"""

from __future__ import annotations

import torch

from sora.optim import SchedulePlan, build_optimizer, group_lrs, linear_schedule, optimizer_kind


def train_step(model, batch: dict, method, optimizer, scheduler, step: int, clip_params: list, max_grad_norm: float,
               autocast, tail=None) -> tuple[torch.Tensor, dict[str, float]]:
    """One optimizer step; returns the detached loss (no host sync) and the lrs this step used. ``tail``: the
    compiled ``optimizer_tail`` where the run captures it."""
    tail = tail or optimizer_tail
    model.train()
    with autocast():
        loss = model(**batch).loss
        extra = method.extra_loss()
        if extra is not None:
            loss = loss + extra
    loss.backward()
    tail(method, optimizer, clip_params, max_grad_norm, step)
    lrs = group_lrs(optimizer, scheduler)
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach(), lrs


def optimizer_tail(method, optimizer, clip_params: list, max_grad_norm: float, step: int) -> None:
    """clip the global grad norm -> optimizer.step() -> the method's after-step (SoRA's prox, before the scheduler:
    it uses this step's lr). ``train.compile=reduce-overhead`` compiles this function as one CUDA graph
    (``sora.train.compiled.capturable_tail``); every other run calls it as is."""
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(clip_params, max_grad_norm)
    _optimizer_step(optimizer)
    method.after_optimizer_step(step, optimizer)


def _optimizer_step(optimizer) -> None:
    """``optimizer.step()``; while compiling, past the LR scheduler's bookkeeping wrapper, which lives in a file
    dynamo never traces (the graph would break at it) and only sets a host flag (``capturable_tail`` sets it)."""
    step = optimizer.step
    if torch.compiler.is_compiling() and getattr(step, "_wrapped_by_lr_sched", False):
        step.__wrapped__(optimizer)  # the unbound step the wrapper calls; ``__get__`` breaks torch 2.11's trace
        return
    step()


def make_optimizer(method, train_cfg, device: torch.device, method_cfg=None, capturable: bool = False
                   ) -> torch.optim.Optimizer:
    groups = method.param_groups(train_cfg.lr, train_cfg.weight_decay, train_cfg.adam_eps)
    kind = optimizer_kind(train_cfg, method_cfg or {})
    return build_optimizer(groups, train_cfg.adam_betas, device, kind, capturable=capturable)


def make_optimizer_and_schedule(method, train_cfg, device, plan: SchedulePlan, method_cfg=None,
                                capturable: bool = False):
    optimizer = make_optimizer(method, train_cfg, device, method_cfg, capturable)
    return optimizer, linear_schedule(optimizer, plan)
