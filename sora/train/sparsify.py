"""The sparsifying scheduler (the paper's Algorithm 1): a dense phase, then stages of rising threshold ξ.

Two modes, recorded as ``scheduler.mode``:

* ``shrink_only`` - what the released code does: each stage reuses the dense phase's already-finished linear
  LR schedule, so every stage runs at learning rate 0 and only the soft-threshold (τ = ξ, code variant) moves
  the gates. Weights other than the gates never change after the dense phase.
* ``retrain`` - what the paper's text suggests: each stage trains again with a fresh AdamW and a fresh
  warmup + linear decay over the stage's steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sora.errors import UserError

SCHEDULES = ("linear", "log_linear", "exp_linear")
MODES = ("shrink_only", "retrain")


def xi_list(xi0: float, xi_max: float, n: int, schedule: str) -> list[float]:
    """ξ_0..ξ_{n-1} exactly as the released code builds them."""
    if n < 2:
        raise UserError(f"scheduler.n_stages must be >= 2 (the dense phase + at least one stage), got {n}")
    if xi0 < 0 or xi_max < xi0:
        raise UserError(f"need 0 <= scheduler.xi0 <= scheduler.xi_max, got {xi0} and {xi_max}")
    if schedule == "linear":
        values = np.linspace(xi0, xi_max, n)
    elif schedule == "log_linear":
        values = np.log(np.linspace(math.exp(xi0), math.exp(xi_max), n))
    elif schedule == "exp_linear":
        if xi0 <= 0:
            raise UserError("scheduler.schedule=exp_linear takes log(xi0): set scheduler.xi0 > 0 (e.g. 1e-5) "
                            "or use schedule=linear")
        values = np.exp(np.linspace(math.log(xi0), math.log(xi_max), n))
    else:
        raise UserError(f"scheduler.schedule must be one of {SCHEDULES}, got {schedule!r}")
    return [float(v) for v in values]


@dataclass(frozen=True)
class Stage:
    index: int  # 0 = dense
    xi: float | None  # None: the method's own ξ (no scheduler)
    start: int  # global optimizer step at which the stage begins
    end: int


def stage_plan(sched, dense_steps: int, steps_per_epoch: int) -> list[Stage]:
    """[dense] without a scheduler; [dense, stage 1, ..., stage n-1] with ``scheduler=sparsify``."""
    if sched is None or sched.name == "none":
        return [Stage(0, None, 0, dense_steps)]
    if sched.mode not in MODES:
        raise UserError(f"scheduler.mode must be one of {MODES}, got {sched.mode!r}")
    xis = xi_list(sched.xi0, sched.xi_max, sched.n_stages, sched.schedule)
    per_stage = sched.stage_max_steps if sched.stage_max_steps > 0 else int(sched.stage_epochs * steps_per_epoch)
    plan, start = [Stage(0, xis[0], 0, dense_steps)], dense_steps
    for k, xi in enumerate(xis[1:], start=1):
        plan.append(Stage(k, xi, start, start + per_stage))
        start += per_stage
    return plan


def normalise_curve(raw: list[dict], ref_dev: float, ref_train: float) -> list[dict]:
    """memorization / generalization = metric / the dense best's metric x 100 (NaN when the reference <= 0)."""

    def pct(v, ref):
        return v / ref * 100 if v is not None and ref and ref > 0 and v == v else math.nan

    return [{**p, "generalization": pct(p["dev"], ref_dev), "memorization": pct(p["train"], ref_train)} for p in raw]
