"""SoRA's whole public surface: one dataclass, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sora.schema import check_node, nonneg, positive, spec


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

    r_max: int = spec(8, what="a positive integer", ok=positive, example=8)
    lora_alpha: float = spec(16.0, what="> 0", ok=positive, example=16)
    xi: float = spec(1e-4, what="a finite number >= 0", ok=nonneg, example=1e-4)
    variant: Literal["paper", "code"] = "paper"
    gate_init: Literal["ones", "randn"] | None = None  # None = the variant's default
    l1_coef: float = spec(0.0, what="a finite number >= 0", ok=nonneg, example=10)
    gate_lr: float | None = spec(None, what="> 0 (or null for the main lr)", ok=positive, example="null")
    prox: Literal["textbook", "release"] | None = None  # None = the variant's formula

    def __post_init__(self):
        check_node(self, SoraConfig, "method.")  # the schema above: types, ranges, choices
        if self.gate_init is None:
            self.gate_init = "ones" if self.variant == "paper" else "randn"
        if self.prox is None:
            self.prox = "textbook" if self.variant == "paper" else "release"
        if self.variant == "paper":
            self.l1_coef = 0.0  # the paper has no extra loss term; the released code's l1_coef is ignored

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.r_max

    def threshold(self, gate_lr_now: float) -> float:
        """The proximal threshold tau for this step (a Python float: no device sync)."""
        return gate_lr_now * self.xi if self.variant == "paper" else self.xi
