"""Optimizers and learning-rate schedules, each formula selectable and recorded.

* ``adamw``: ``torch.optim.AdamW`` (fused on CUDA): decay first, eps added to the bias-corrected sqrt(v).
* ``adamw_hf_legacy``: transformers 4.x ``AdamW`` (4.14.1 ``optimization.py:272-372``), which the released
  SoRA code (``src/util.py:5,61``; ``src/sparse_optimizer.py:1,7``) and the AdaLoRA scripts ran: eps added to
  sqrt(v) *before* bias correction, both corrections folded into the step size, decoupled decay applied to the
  *updated* weights. At step 1 its effective eps is ~1/sqrt(1 - beta2) = 32x larger than torch's.

Schedules (linear warmup + linear decay, ``get_linear_schedule_with_warmup``):
* ``standard``: over the steps the run takes; warmup ``ceil(ratio * steps)`` as the HF Trainer computes it.
* ``sora_release``: as ``run_glue.py:606,619-621`` of the release: N = int(epochs * n_train / bsz) steps of
  schedule while the loop runs epochs * ceil(n_train / bsz) (lr 0 for the tail); main warmup ceil(N * ratio)
  (``TrainingArguments.get_warmup_steps``), gate warmup int(epochs * (n_train / bsz) * ratio) from the unrounded
  product. A run cut short by ``train.max_steps`` gets the same shape over its own steps.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import torch

from sora.errors import UserError

OPTIMIZERS = ("adamw", "adamw_hf_legacy")
SCHEDULES = ("standard", "sora_release")


class LegacyAdamW(torch.optim.Optimizer):
    """transformers 4.x ``AdamW``, multi-tensor: the same per-element formula, no host sync.

    The step count stays a Python int per parameter (as in 4.x), so the bias correction is a host float. Every
    group is updated by the same few multi-tensor calls (per-tensor eps and step sizes as scalar lists), so a
    param group of its own (SoRA's gates) adds no kernel launch.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0,
                 correct_bias: bool = True, capturable: bool = False):
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, correct_bias=correct_bias)
        super().__init__(params, defaults)
        self.capturable = capturable  # step counts and step sizes on the device: a CUDA graph can hold the step
        if capturable:
            self._static_state()

    def load_state_dict(self, state_dict) -> None:
        """Step counts back in this optimizer's form (a device tensor when capturable, else an int), whatever
        device the checkpoint was mapped to."""
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if state and "step" in state:
                    step = int(state["step"])
                    state["step"] = torch.tensor(float(step), device=p.device) if self.capturable else step
        if self.capturable:
            self._static_state()

    def _static_state(self) -> None:
        """Capturable: every parameter's state made now (the zeros the first step would make) and marked a static
        input, as dynamo marks torch's own optimizers' state. A CUDA graph tree may mutate a static input in place,
        not an ordinary one: state created inside the first captured step, or left unmarked, would make inductor
        skip CUDA graphs for the whole tail ("skipping cudagraphs due to mutated inputs")."""
        from torch._dynamo import mark_static_address

        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    state.update(step=torch.zeros((), device=p.device), exp_avg=torch.zeros_like(p),
                                 exp_avg_sq=torch.zeros_like(p))
                for tensor in state.values():
                    mark_static_address(tensor)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        by_betas = defaultdict(list)  # (beta1, beta2) -> [(param, group, step)]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    step = torch.zeros((), device=p.device) if self.capturable else 0
                    state.update(step=step, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                if not self.capturable:
                    state["step"] += 1  # params that skipped a step (no grad) keep their own count
                by_betas[tuple(group["betas"])].append((p, group, state["step"]))
        for betas, items in by_betas.items():
            (self._update_on_device if self.capturable else self._update)(betas, items)
        return loss

    def _moments(self, betas: tuple[float, float], items: list) -> tuple[list, list, list]:
        """Both paths' first half: the moments updated in place; returns (params, exp_avg, sqrt(exp_avg_sq) + eps)."""
        beta1, beta2 = betas
        params = [p for p, _, _ in items]
        grads = [p.grad for p in params]
        exp_avg = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sq = [self.state[p]["exp_avg_sq"] for p in params]
        torch._foreach_mul_(exp_avg, beta1)
        torch._foreach_add_(exp_avg, grads, alpha=1.0 - beta1)
        torch._foreach_mul_(exp_avg_sq, beta2)
        torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1.0 - beta2)
        denom = torch._foreach_sqrt(exp_avg_sq)
        torch._foreach_add_(denom, [group["eps"] for _, group, _ in items])
        return params, exp_avg, denom

    def _update(self, betas: tuple[float, float], items: list) -> None:
        params, exp_avg, denom = self._moments(betas, items)
        torch._foreach_addcdiv_(params, exp_avg, denom, [-self._step_size(group, betas, t) for _, group, t in items])
        decay = defaultdict(list)  # decoupled decay on the updated weights, one call per distinct lr * wd
        for p, group, _ in items:
            if group["weight_decay"] > 0.0:
                decay[-group["lr"] * group["weight_decay"]].append(p)
        for alpha, decayed in decay.items():
            torch._foreach_add_(decayed, decayed, alpha=alpha)

    def _update_on_device(self, betas: tuple[float, float], items: list) -> None:
        """The same formula with the step count, bias corrections and step sizes as device tensors (float32, so
        round-off apart from the host path's float64 step size); ``lr`` may be a 0-dim device tensor."""
        beta1, beta2 = betas
        steps = [t for _, _, t in items]
        torch._foreach_add_(steps, 1.0)
        params, exp_avg, denom = self._moments(betas, items)
        lrs = [_as_tensor(group["lr"], p) for p, group, _ in items]
        size = [lr.clone() for lr in lrs]  # -lr * sqrt(1 - beta2^t) / (1 - beta1^t)
        if all(group["correct_bias"] for _, group, _ in items):
            # 1 - beta^t as -expm1(t log beta): float32 1 - beta2^t loses ~1e-5 of itself to cancellation early on
            bc2 = torch._foreach_mul(steps, math.log(beta2))
            torch._foreach_expm1_(bc2)
            torch._foreach_neg_(bc2)
            torch._foreach_sqrt_(bc2)
            bc1 = torch._foreach_mul(steps, math.log(beta1))
            torch._foreach_expm1_(bc1)
            torch._foreach_neg_(bc1)
            torch._foreach_mul_(size, bc2)
            torch._foreach_div_(size, bc1)
        elif any(group["correct_bias"] for _, group, _ in items):
            raise ValueError("capturable LegacyAdamW: correct_bias must be the same in every group")
        torch._foreach_neg_(size)
        update = torch._foreach_div(exp_avg, denom)
        torch._foreach_mul_(update, size)
        torch._foreach_add_(params, update)
        decayed = [(p, lr * group["weight_decay"]) for (p, group, _), lr in zip(items, lrs)
                   if group["weight_decay"] > 0.0]
        if decayed:  # decoupled decay on the updated weights: p -= lr * wd * p
            ps = [p for p, _ in decayed]
            torch._foreach_sub_(ps, torch._foreach_mul(ps, [f for _, f in decayed]))

    @staticmethod
    def _step_size(group: dict, betas: tuple[float, float], t: int) -> float:
        beta1, beta2 = betas
        step_size = group["lr"]
        if group["correct_bias"]:
            step_size = step_size * math.sqrt(1.0 - beta2 ** t) / (1.0 - beta1 ** t)
        return step_size


def _as_tensor(lr, like: torch.Tensor) -> torch.Tensor:
    return lr if isinstance(lr, torch.Tensor) else torch.tensor(lr, dtype=torch.float32, device=like.device)


def decay_groups(params, lr: float, weight_decay: float, eps: float) -> list[dict]:
    """The HF Trainer's rule: matrices decay, biases and LayerNorm weights (1-d) do not."""
    params = [p for p in params if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay, "lr": lr, "eps": eps,
             "name": "adapter"},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, "lr": lr, "eps": eps,
             "name": "adapter_no_decay"}]


def optimizer_kind(train_cfg, method_cfg) -> str:
    """``auto``: the release's transformers-4.x AdamW for SoRA's ``code`` variant, torch AdamW otherwise."""
    kind = train_cfg.get("optimizer", "auto")
    if kind == "auto":
        return "adamw_hf_legacy" if method_cfg.get("variant") == "code" else "adamw"
    return kind


def build_optimizer(groups: list[dict], betas, device: torch.device, kind: str = "adamw",
                    capturable: bool = False) -> torch.optim.Optimizer:
    """The one optimizer builder (the GLUE loop, the Trainer bridge, SFT, the gates' null model). Groups may carry
    their own ``betas``/``eps`` (the released gate optimizer has its own defaults). ``capturable``: each group's
    lr a 0-dim device tensor and the step counts on the device, so a CUDA graph can hold the whole step
    (``sora.train.tail``); the numbers are the same to float32 round-off."""
    if capturable:
        groups = [device_lr(g, device) for g in groups]
    if kind == "adamw":
        if capturable and device.type != "cuda":  # no CUDA graph here; the multi-tensor capturable path takes a
            # tensor lr and runs compiled (the captured tail always is; eager it asserts a CUDA device)
            return torch.optim.AdamW(groups, betas=tuple(betas), foreach=True, capturable=True)
        return torch.optim.AdamW(groups, betas=tuple(betas), fused=device.type == "cuda")  # fused: a tensor lr too
    if kind == "adamw_hf_legacy":
        return LegacyAdamW(groups, betas=tuple(betas), capturable=capturable)
    raise UserError(f"train.optimizer must be one of {OPTIMIZERS}, got {kind!r}")


def device_lr(group: dict, device: torch.device) -> dict:
    """The group's lr in a 0-dim device tensor the LR scheduler fills in place; ``initial_lr`` stays a Python
    float, so the scheduler computes each new lr on the host and fills it without reading the device."""
    from torch._dynamo import mark_static_address

    lr = float(group["lr"])
    tensor = torch.tensor(lr, dtype=torch.float32, device=device)
    mark_static_address(tensor)  # filled in place, so a CUDA graph may read it where it is instead of copying it
    return {**group, "lr": tensor, "initial_lr": lr}


def warmup_steps(warmup: float, total_steps: int) -> int:
    """``warmup`` < 1 is a ratio of the total steps (rounded up, as the HF Trainer does), >= 1 a step count."""
    return math.ceil(warmup * total_steps) if warmup < 1 else int(warmup)


@dataclass(frozen=True)
class SchedulePlan:
    """How long the schedule is and where each param group's warmup ends (``gate`` may differ)."""

    length: int
    warmup: int
    gate_warmup: int

    def as_dict(self) -> dict:
        return {"length": self.length, "warmup": self.warmup, "gate_warmup": self.gate_warmup}


def schedule_plan(kind: str, warmup: float, run_steps: int, n_train: int, batch_size: int, epochs: float
                  ) -> SchedulePlan:
    if kind == "standard":
        n = warmup_steps(warmup, run_steps)
        return SchedulePlan(run_steps, n, n)
    if kind == "sora_release":
        length = int(epochs * (n_train / batch_size))  # run_glue.py:606
        gate = int(epochs * (n_train / batch_size) * warmup) if warmup < 1 else int(warmup)  # run_glue.py:620
        if run_steps < length:  # train.max_steps cut the run: the schedule ends with it (lr 0 at its end, as the
            # release's own schedule ends with its run), never a 3,438-step schedule over a 20-step smoke run
            length = run_steps
            gate = int(run_steps * warmup) if warmup < 1 else int(warmup)
        return SchedulePlan(length, warmup_steps(warmup, length), gate)
    raise UserError(f"train.schedule must be one of {SCHEDULES}, got {kind!r}")


def linear_schedule(optimizer, plan: SchedulePlan) -> torch.optim.lr_scheduler.LambdaLR:
    """One lambda per group: gates follow the main schedule from their own base lr and warmup."""

    def factor(n_warmup: int):
        def f(step: int) -> float:
            if step < n_warmup:
                return step / max(1, n_warmup)
            return max(0.0, (plan.length - step) / max(1, plan.length - n_warmup))

        return f

    lambdas = [factor(plan.gate_warmup if g.get("name") == "gate" else plan.warmup) for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)


def group_lrs(optimizer, scheduler=None) -> dict[str, float]:
    """The lr each named group uses this step, as Python floats without reading the device: a device-tensor lr
    (capturable) is recomputed on the host from the scheduler's own rule, exactly what it filled in."""
    lrs = {}
    for i, g in enumerate(optimizer.param_groups):
        lr = g["lr"]
        if isinstance(lr, torch.Tensor):
            lr = scheduler.base_lrs[i] * scheduler.lr_lambdas[i](scheduler.last_epoch)
        lrs[g.get("name", str(i))] = lr
    return lrs
