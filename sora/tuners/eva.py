"""EVA (Explained Variance Adaptation, arXiv 2410.07170) as a registered method: peft's own
``init_lora_weights="eva"`` with ``EvaConfig``, configured, never rewritten.

Before training, peft runs the first training batches through the frozen model, takes an incremental SVD of every
adapted layer's inputs, initialises A with the top right-singular vectors and redistributes the rank budget
(r per module in total) by explained variance, each module between 0 and round(r * rho). Then it is plain LoRA.
Its rank pattern is data-driven but fixed before the first step, which makes it the natural comparison for SoRA's
pruning: an allocation from the data at init, against one learned (or, per the diagnostics, scheduled) in training.

This file, ``conf/method/eva.yaml`` and ``tests/test_eva.py`` are all that adding it took (issue #27).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from peft import EvaConfig, LoraConfig, get_peft_model
from peft.tuners.lora import initialize_lora_eva_weights

from sora.errors import UserError
from sora.schema import positive, spec, unit_interval
from sora.tuners.heads import apply_head_policy, head_modules_to_save, method_head
from sora.tuners.methods import AdapterKeys, Method, register
from sora.tuners.sora.model import infer_task_type, lora_linears, peft_targets


def _at_least_one(v) -> bool:
    return v >= 1


@dataclass
class EvaMethodSchema(AdapterKeys):
    name: Literal["eva"] = "eva"
    r: int = spec(8, what="a positive integer (the mean rank: the budget is r x the adapted modules)", ok=positive,
                  example=8)
    rho: float = spec(2.0, what=">= 1 (a module's rank is at most round(r x rho); 1 = no redistribution)",
                      ok=_at_least_one, example=2.0)
    tau: float = spec(0.99, what="in [0, 1) (the SVD's convergence threshold, cosine of successive components)",
                      ok=unit_interval, example=0.99)
    lora_alpha: float | None = spec(None, what="null (= 2 r: scale 2, as LoRA's and SoRA's) or > 0", ok=positive,
                                    example="null")
    whiten: bool = False
    adjust_scaling_factors: bool = True  # peft's default: each module keeps the scale alpha / r at its own rank
    batches: int = spec(16, what="a positive integer (training batches the SVD may use, cycled until it converges)",
                        ok=positive, example=16)


@register
class EvaMethod(Method):
    name = "eva"
    schema = EvaMethodSchema
    color = "tab:orange"
    frontier_budget = "method.r=2,4,8 method.rho=1,2"

    @classmethod
    def label(cls, m):
        return f"EVA (r={m['r']}, rho={m['rho']:g})"

    @classmethod
    def paper_key(cls, m):
        return "EVA"  # not in the SoRA paper: its Table 1 column stays empty

    def __init__(self, base_model, cfg, total_steps: int):
        alpha = cfg.lora_alpha if cfg.get("lora_alpha") is not None else 2 * cfg.r
        eva = EvaConfig(rho=cfg.rho, tau=cfg.tau, whiten=cfg.whiten, adjust_scaling_factors=cfg.adjust_scaling_factors)
        config = LoraConfig(task_type=infer_task_type(base_model), r=cfg.r, lora_alpha=alpha,
                            lora_dropout=cfg.lora_dropout, init_lora_weights="eva", eva_config=eva,
                            modules_to_save=head_modules_to_save(method_head(cfg)),
                            **peft_targets(base_model, cfg.targets))
        super().__init__(get_peft_model(base_model, config))
        apply_head_policy(self.model, method_head(cfg))
        self.r, self.cap = cfg.r, round(cfg.r * cfg.rho)
        self.targets = [name for name, _ in lora_linears(self.model)]  # EVA may remove some (rank 0)
        self.data_batches = cfg.batches

    def init_from_data(self, batches) -> None:
        """peft's EVA on these batches (padding masked by the attention mask, prompts by labels = -100)."""
        if len(batches) == 0:
            raise UserError("EVA needs training batches for its SVD and got none; check the training split")
        initialize_lora_eva_weights(self.model, batches, show_progress_bar=False)

    def ranks(self):
        kept = {name: module.r["default"] for name, module in lora_linears(self.model)}
        return {name: kept.get(name, 0) for name in self.targets}

    def rank_cap(self):
        return self.cap

    def retained_params(self, ranks, shapes):
        return super().retained_params({n: r for n, r in ranks.items() if r}, shapes)  # rank 0: removed by EVA
