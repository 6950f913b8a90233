"""SoRA's gates with no task gradient: what the init, the schedule, the optimizer, the L1 term and the prox do
to them on their own. A run whose pruning this null model predicts was pruned on a timetable, not by its data.

Why it needs no model: peft's LoRA starts with B = 0, so the task gradient on a gate starts at exactly 0; with
it removed, a gate's gradient is the L1 term's ``l1_coef · sign(g) / n`` (n = every gate entry of the model; 0 at
exactly 0), and AdamW and both proxes are elementwise, so each gate evolves on its own: one tensor of gates,
the run's optimizer formula and param-group settings (``gate_group``), its gate lr at every step and its prox.
Gradient clipping is left out: the real run clips the gates together with the task gradients, a factor the null
cannot know, and Adam's step does not depend on the gradient's scale (while it is far above eps).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from sora.optim import SchedulePlan, build_optimizer, linear_schedule
from sora.tuners.sora.config import SoraConfig
from sora.tuners.sora.step import GATE_GROUP, gate_group, prox_

GRID = 1200  # quadrature points for |g0| ~ |N(0, 1)| on (0, GRID_MAX)
GRID_MAX = 6.0


@dataclass(frozen=True)
class GateRecipe:
    """Everything a gate sees in a run except the task gradient."""

    config: SoraConfig
    optimizer: str  # adamw | adamw_hf_legacy (sora.optim.OPTIMIZERS)
    lr: float  # the run's main lr (the gate group's is config.gate_lr or this)
    adam_betas: tuple[float, float]
    adam_eps: float
    plan: SchedulePlan  # the schedule's length and warmups
    steps: int  # optimizer steps the run takes (the dense phase)
    n_gates: int  # gate entries in the model: the L1 term's normaliser

    @property
    def peak_gate_lr(self) -> float:
        return self.config.gate_lr or self.lr

    def key(self) -> tuple:
        c = self.config
        return (c.xi, c.variant, c.gate_init, c.l1_coef, c.gate_lr, c.prox, self.optimizer, self.lr,
                tuple(self.adam_betas), self.adam_eps, self.plan, self.steps, self.n_gates)


def gate_lrs(recipe: GateRecipe) -> list[float]:
    """The gate group's lr at each step 0..steps-1 (the one its optimizer step and prox use), from the real
    schedule (``sora.optim.linear_schedule``) on a stand-in optimizer."""
    group = {"params": [torch.zeros(1, requires_grad=True)], "lr": recipe.peak_gate_lr, "name": GATE_GROUP}
    opt = torch.optim.SGD([group], lr=recipe.peak_gate_lr)
    sched = linear_schedule(opt, recipe.plan)
    out = []
    for _ in range(recipe.steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()  # no gradient: moves nothing, keeps the scheduler's order check quiet
        sched.step()
    return out


def simulate(init: torch.Tensor, recipe: GateRecipe, record_at: Iterable[int],
             lrs: Sequence[float] | None = None) -> dict[int, torch.Tensor]:
    """Gate values after each step count in ``record_at`` (1-based, as a record's eval steps), starting from
    ``init``, with no task gradient. ``lrs``: the gate lr per step (default: the recipe's schedule)."""
    lrs = gate_lrs(recipe) if lrs is None else list(lrs)
    marks = set(record_at)
    g = torch.nn.Parameter(init.detach().to(torch.float32).reshape(-1).clone())
    group = gate_group([g], recipe.config, recipe.lr, recipe.adam_eps)
    opt = build_optimizer([group], recipe.adam_betas, torch.device("cpu"), recipe.optimizer)
    c = recipe.config
    out = {0: g.detach().clone()} if 0 in marks else {}
    for t, lr in enumerate(lrs[:recipe.steps]):
        opt.param_groups[0]["lr"] = lr
        if c.l1_coef:  # sora.tuners.sora.step.l1_loss over all n gates of the model
            (c.l1_coef * g.abs().sum() / recipe.n_gates).backward()
        opt.step()
        prox_([g], c, lr)
        opt.zero_grad(set_to_none=True)
        if t + 1 in marks:
            out[t + 1] = g.detach().clone()
    return out


def expected_kept(recipe: GateRecipe, record_at: Iterable[int]) -> dict[int, tuple[float, float]]:
    """Expected kept count and its sd at each step in ``record_at`` over the gate init's distribution
    (``ones``: every gate the same; ``randn``: n iid N(0, 1), so the count is Binomial(n, p_t))."""
    steps = tuple(sorted(set(record_at)))
    key = (recipe.key(), steps)
    if key not in _SURVIVAL:  # a grid of runs shares a few recipes: simulate each once per process
        _SURVIVAL[key] = _survival(recipe, steps)
    p = _SURVIVAL[key]
    n = recipe.n_gates
    return {s: (n * p[s], math.sqrt(n * p[s] * (1 - p[s]))) for s in steps}


_SURVIVAL: dict[tuple, dict[int, float]] = {}


def _survival(recipe: GateRecipe, steps: tuple[int, ...]) -> dict[int, float]:
    """P(a gate is non-zero after step s), by quadrature over |g0| (the null is symmetric in the sign)."""
    if recipe.config.gate_init == "ones":
        values = simulate(torch.ones(1), recipe, steps)
        return {s: float(values[s][0] != 0) for s in steps}
    h = GRID_MAX / GRID
    a = (torch.arange(GRID, dtype=torch.float64) + 0.5) * h
    w = 2 * torch.exp(-a * a / 2) / math.sqrt(2 * math.pi) * h
    w = w / w.sum()
    values = simulate(a.float(), recipe, steps)
    return {s: float((w * (values[s] != 0).double()).sum()) for s in steps}
