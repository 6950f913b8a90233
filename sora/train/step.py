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
               autocast) -> tuple[torch.Tensor, dict[str, float]]:
    """One optimizer step; returns the detached loss (no host sync) and the lrs this step used."""
    model.train()
    with autocast():
        loss = model(**batch).loss
        extra = method.extra_loss()
        if extra is not None:
            loss = loss + extra
    loss.backward()
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(clip_params, max_grad_norm)
    optimizer.step()
    method.after_optimizer_step(step, optimizer)  # before the scheduler: the prox uses this step's lr
    lrs = group_lrs(optimizer)
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach(), lrs


def make_optimizer(method, train_cfg, device: torch.device, method_cfg=None) -> torch.optim.Optimizer:
    groups = method.param_groups(train_cfg.lr, train_cfg.weight_decay, train_cfg.adam_eps)
    kind = optimizer_kind(train_cfg, method_cfg or {})
    return build_optimizer(groups, train_cfg.adam_betas, device, kind)


def make_optimizer_and_schedule(method, train_cfg, device, plan: SchedulePlan, method_cfg=None):
    optimizer = make_optimizer(method, train_cfg, device, method_cfg)
    return optimizer, linear_schedule(optimizer, plan)
