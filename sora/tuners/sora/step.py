"""SoRA's part of a training step, once, for our loop and for any transformers.Trainer / TRL script:

* ``param_groups``: decay / no-decay groups like the HF Trainer's (no decay for biases and LayerNorms), gates in a
  group of their own (no decay; the ``code`` variant: the release's gate-AdamW defaults, eps 1e-6, betas
  (0.9, 0.999)), named so a schedule can give the gates their own warmup.
* ``l1_loss``: the ``code`` variant's ``l1_coef · Σ|g| / numel`` (inside the clipped gradient, as released).
* ``prox_``: the proximal step on the gates after ``optimizer.step()``, before the scheduler steps, with that
  step's gate lr (``paper``: τ = lr · ξ, textbook threshold; ``code``: τ = ξ, the release's three masks).
"""

from __future__ import annotations

import torch

from sora.optim import decay_groups
from sora.tuners.sora.config import SoraConfig
from sora.tuners.sora.layer import release_prox_, soft_threshold_
from sora.tuners.sora.model import gate_l1

GATE_GROUP = "gate"


def param_groups(model, config: SoraConfig, lr: float, weight_decay: float, eps: float = 1e-8,
                 gates: list[torch.Tensor] | None = None) -> list[dict]:
    from sora.tuners.sora.model import gate_parameters

    gates = gate_parameters(model) if gates is None else gates
    gate_ids = {id(g) for g in gates}
    others = decay_groups((p for p in model.parameters() if id(p) not in gate_ids), lr, weight_decay, eps)
    return [*others, gate_group(gates, config, lr, eps)]


def gate_group(gates: list[torch.Tensor], config: SoraConfig, lr: float, eps: float = 1e-8) -> dict:
    """The gates' own param group (also what the gate null model, ``sora.diagnostics.null``, optimizes)."""
    gate = {"params": gates, "weight_decay": 0.0, "lr": config.gate_lr or lr, "eps": eps, "name": GATE_GROUP}
    if config.variant == "code":
        # the released gates have their own SparseAdamW(params, lr) (run_glue.py:618): transformers 4.x AdamW
        # defaults eps 1e-6, betas (0.9, 0.999), no decay. AdamW is elementwise, so a param group with those
        # settings (and its own warmup, optim.schedule_plan) is the same update inside one optimizer
        gate.update(eps=1e-6, betas=(0.9, 0.999))
    return gate


def l1_loss(gates: list[torch.Tensor], config: SoraConfig, bank=None) -> torch.Tensor | None:
    """``l1_coef * sum |g| / numel``: the value the bank's pre-hook made in this forward if there is one (its
    gradient comes in the bank's own node), else computed here."""
    if not config.l1_coef:
        return None
    made = bank.l1(config.l1_coef) if bank is not None else None
    return made if made is not None else gate_l1(gates, config.l1_coef)


def gate_lr(optimizer) -> float:
    return next(g["lr"] for g in optimizer.param_groups if g.get("name") == GATE_GROUP)  # a few groups: cheap


def prox_(gates: list[torch.Tensor], config: SoraConfig, lr_now: float) -> None:
    prox = release_prox_ if config.prox == "release" else soft_threshold_
    prox(gates, config.threshold(lr_now))
