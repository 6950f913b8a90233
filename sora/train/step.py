"""The training step, in the one order every method and every caller shares (nanoGPT style):

    forward (+ the method's extra loss) -> backward -> clip the global grad norm -> optimizer.step()
    -> method.after_optimizer_step (SoRA prox / AdaLoRA budget) -> lrs read -> scheduler.step() -> zero_grad()

``scripts/train.py`` runs exactly this function, and so do the fidelity tests that put it beside a
transcription of the released SoRA step: there is no second copy of the step to drift.
"""

from __future__ import annotations

import math

import torch

from sora.optim import SchedulePlan, build_optimizer, group_lrs, linear_schedule, optimizer_kind, schedule_plan


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


def run_length(train_cfg, n_train: int) -> tuple[int, int]:
    """(steps per epoch, optimizer steps of the dense phase): epochs x ceil(n / bsz), as the Trainer loops."""
    steps_per_epoch = math.ceil(n_train / train_cfg.batch_size)
    total = train_cfg.max_steps if train_cfg.max_steps > 0 else math.ceil(steps_per_epoch * train_cfg.epochs)
    return steps_per_epoch, total


def run_schedule(train_cfg, run_steps: int, n_train: int) -> SchedulePlan:
    return schedule_plan(train_cfg.get("schedule", "standard"), train_cfg.warmup, run_steps, n_train,
                         train_cfg.batch_size, train_cfg.epochs)


def make_optimizer_and_schedule(method, train_cfg, device, plan: SchedulePlan, method_cfg=None):
    optimizer = make_optimizer(method, train_cfg, device, method_cfg)
    return optimizer, linear_schedule(optimizer, plan)
