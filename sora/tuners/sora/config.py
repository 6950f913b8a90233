"""SoRA's whole public surface: one dataclass, validated on construction."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sora.errors import UserError

VARIANTS = ("paper", "code")
GATE_INITS = ("ones", "randn")
PROXES = ("textbook", "release")


@dataclass
class SoraConfig:
    """Gate hyperparameters on top of a peft LoRA of rank ``r_max``.

    ``variant`` picks between the paper's text and the released code (TsinghuaC3I/SoRA @ c275ac2):

    * ``paper`` - threshold tau = lr_t * xi, no extra loss term, gate init ``gate_init`` (ones), the textbook
      soft threshold g <- sign(g) max(|g| - tau, 0).
    * ``code``  - threshold tau = xi every step, loss += l1_coef * sum|g| / numel(g), gate init N(0, 1), the
      release's three-mask prox (every |g| < 2 xi -> 0; ``release_prox_``), the gates' own AdamW defaults
      (eps 1e-6, betas (0.9, 0.999), no decay).

    ``prox`` (``textbook`` | ``release``) defaults to the variant's formula; it is recorded either way.
    """

    r_max: int = 8
    lora_alpha: float = 16.0
    xi: float = 1e-4
    variant: str = "paper"
    gate_init: str | None = None  # None = the variant's default
    l1_coef: float = 0.0
    gate_lr: float | None = None  # None = the main learning rate
    prox: str | None = None  # None = the variant's formula

    def __post_init__(self):
        if not isinstance(self.r_max, int) or isinstance(self.r_max, bool) or self.r_max <= 0:
            raise UserError(f"method.r_max must be a positive integer, got {self.r_max!r}; try method.r_max=8")
        if not (isinstance(self.xi, (int, float)) and math.isfinite(self.xi) and self.xi >= 0):
            raise UserError(f"method.xi must be a finite number >= 0, got {self.xi!r}; try method.xi=1e-4")
        if self.variant not in VARIANTS:
            raise UserError(f"method.variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.gate_init is None:
            self.gate_init = "ones" if self.variant == "paper" else "randn"
        if self.gate_init not in GATE_INITS:
            raise UserError(f"method.gate_init must be one of {GATE_INITS}, got {self.gate_init!r}")
        if self.prox is None:
            self.prox = "textbook" if self.variant == "paper" else "release"
        if self.prox not in PROXES:
            raise UserError(f"method.prox must be one of {PROXES}, got {self.prox!r}; or leave it null")
        if not (isinstance(self.l1_coef, (int, float)) and math.isfinite(self.l1_coef) and self.l1_coef >= 0):
            raise UserError(f"method.l1_coef must be a finite number >= 0, got {self.l1_coef!r}; e.g. 10")
        if self.variant == "paper":
            self.l1_coef = 0.0  # the paper has no extra loss term; the released code's l1_coef is ignored
        if self.gate_lr is not None and not (isinstance(self.gate_lr, (int, float)) and math.isfinite(self.gate_lr)
                                             and self.gate_lr > 0):
            raise UserError(f"method.gate_lr must be > 0, got {self.gate_lr}; or leave it null for the main lr")

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.r_max

    def threshold(self, gate_lr_now: float) -> float:
        """The proximal threshold tau for this step (a Python float: no device sync)."""
        return gate_lr_now * self.xi if self.variant == "paper" else self.xi
