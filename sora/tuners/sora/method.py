"""SoRA as a registered method: the gated LoRA of :mod:`sora.tuners.sora.model`, its L1 term, its prox after each
optimizer step, the sparsifying scheduler's stage hook and the gate diagnostics in its record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from sora.diagnostics.verdict import growth_warning, record_diagnostics
from sora.errors import UserError
from sora.tuners.methods import AdapterKeys, Method, register
from sora.tuners.sora import step as sora_step
from sora.tuners.sora.config import SoraConfig
from sora.tuners.sora.export import export_pruned_adapter
from sora.tuners.sora.model import gate_bank, gate_parameters, gated_modules, get_sora_model, sora_ranks


@dataclass
class SoraMethodSchema(SoraConfig, AdapterKeys):
    name: Literal["sora"] = "sora"


@register
class SoraMethod(Method):
    name = "sora"
    schema = SoraMethodSchema
    color = "tab:red"
    sparsifiable = True
    frontier_budget = "method.xi=1e-5,1e-4,3e-4,1e-3"  # make frontier passes a task's own grid (XIS)

    @classmethod
    def check(cls, cfg) -> None:
        sora_config(cfg)  # SoraConfig's own rules (the variant's defaults)

    @classmethod
    def check_scheduler(cls, m, scheduler) -> None:
        if scheduler.mode == "shrink_only" and m.variant == "paper":
            raise UserError("scheduler.mode=shrink_only runs at lr 0, so the paper variant's threshold lr*xi is 0 "
                            "and nothing prunes; use method.variant=code or scheduler.mode=retrain")

    @classmethod
    def label(cls, m):
        return f"SoRA (r_max={m['r_max']}, {m['variant']})"

    @classmethod
    def paper_key(cls, m):
        return f"SoRA r_max={m['r_max']}"

    @classmethod
    def rate_key(cls, m):
        return f"sora:{m.get('variant')}"  # the bench times the variants apart

    def __init__(self, base_model, cfg, total_steps: int):
        self.config = sora_config(cfg)
        super().__init__(get_sora_model(base_model, self.config, targets=cfg.targets, head=cfg.get("head"),
                                        lora_dropout=cfg.lora_dropout))
        self.gates, self.bank = gate_parameters(self.model), gate_bank(self.model)

    def param_groups(self, lr, weight_decay, eps):
        return sora_step.param_groups(self.model, self.config, lr, weight_decay, eps, self.gates)

    def extra_loss(self):
        return sora_step.l1_loss(self.gates, self.config, self.bank)

    def after_optimizer_step(self, step, optimizer):
        sora_step.prox_(self.gates, self.config, sora_step.gate_lr(optimizer))  # this step's lr: before the scheduler

    def ranks(self):
        return sora_ranks(self.model)

    def export(self, out_dir, base_model_name_or_path):
        export_pruned_adapter(self.model, out_dir, base_model_name_or_path)

    def config_warnings(self, cfg):
        warning = growth_warning(self.config.variant, self.config.xi, self.config.gate_lr or cfg.train.lr)
        return [warning] if warning else []

    def trace_point(self):
        """Every gate entry, module after module, to 4 significant digits (exact zeros stay 0)."""
        flat = torch.cat([g.detach().reshape(-1) for g in self.gates]).float().tolist()
        return [float(f"{v:.4g}") for v in flat]

    def annotate_record(self, record, trace):
        """``gates``: init + values at each evaluation; ``gate_diagnostics``: the run beside its null model."""
        init = next((t["values"] for t in trace if t["step"] == 0), None)
        record["gates"] = {"modules": [n for n, _ in gated_modules(self.model)], "r_max": self.config.r_max,
                           "init": init, "trace": [t for t in trace if t["step"] > 0]}
        record["gate_diagnostics"] = record_diagnostics(record)


def sora_config(cfg) -> SoraConfig:
    """The ``method`` config node (GLUE or SFT) as a SoraConfig."""
    return SoraConfig(r_max=cfg.r_max, lora_alpha=cfg.lora_alpha, xi=cfg.xi, variant=cfg.variant,
                      gate_init=cfg.get("gate_init"), l1_coef=cfg.get("l1_coef") or 0.0,
                      gate_lr=cfg.get("gate_lr"), prox=cfg.get("prox"))
