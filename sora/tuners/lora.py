"""LoRA as a registered method: peft's own ``LoraConfig``, configured, never rewritten; optionally on a given rank
pattern (the allocation controls: a SoRA run's kept ranks or a random pattern with its totals)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from peft import LoraConfig, get_peft_model

from sora.schema import nonneg, positive, spec
from sora.tuners.heads import apply_head_policy, head_modules_to_save, method_head
from sora.tuners.methods import AdapterKeys, Method, register
from sora.tuners.sora.model import infer_task_type, lora_linears, peft_targets


@dataclass
class LoraMethodSchema(AdapterKeys):
    name: Literal["lora"] = "lora"
    r: int = spec(8, what="a positive integer", ok=positive, example=8)
    lora_alpha: float = spec(16, what="> 0", ok=positive, example=16)
    rank_pattern_from: Literal["sora", "random"] | None = None
    pattern_xi: float | None = spec(None, what="null or the xi > 0 of a finished SoRA run", ok=positive)
    pattern_seed: int | None = spec(None, what="null or an integer >= 0", ok=nonneg, example=0)


@register
class LoraMethod(Method):
    name = "lora"
    schema = LoraMethodSchema
    color = "tab:blue"
    frontier_budget = "method.r=1,2,4,8"

    @classmethod
    def label(cls, m):
        if m.get("rank_pattern_from"):  # a control: its ranks come from a SoRA run
            xi = f" xi={m['pattern_xi']}" if m.get("pattern_xi") is not None else ""
            return f"LoRA ({m['rank_pattern_from']} pattern{xi})"
        return f"LoRA (r={m['r']}{', qv' if m.get('targets') == 'qv' else ''})"

    @classmethod
    def paper_key(cls, m):
        return f"LoRA r={m['r']}"

    def __init__(self, base_model, cfg, total_steps: int, rank_pattern: dict[str, int] | None = None):
        """``rank_pattern`` (module -> rank, e.g. what a SoRA run kept): a plain LoRA with those ranks, modules
        at rank 0 left out, every module at LoRA's configured scale alpha / r (SoRA's alpha / r_max)."""
        targets = peft_targets(base_model, cfg.targets)
        if rank_pattern is not None:
            kept = {n: r for n, r in rank_pattern.items() if r > 0}
            scale = cfg.lora_alpha / cfg.r
            targets = {"target_modules": sorted(kept),
                       "rank_pattern": {re.escape(n): r for n, r in kept.items()},
                       "alpha_pattern": {re.escape(n): r * scale for n, r in kept.items()}}
        config = LoraConfig(task_type=infer_task_type(base_model), r=cfg.r, lora_alpha=cfg.lora_alpha,
                            lora_dropout=cfg.lora_dropout, modules_to_save=head_modules_to_save(method_head(cfg)),
                            **targets)
        super().__init__(get_peft_model(base_model, config))
        apply_head_policy(self.model, method_head(cfg))
        self.r = cfg.r
        self.rank_pattern = rank_pattern

    def ranks(self):
        if self.rank_pattern is not None:
            return {name: self.rank_pattern[name] for name, _ in lora_linears(self.model)}
        return {name: self.r for name, _ in lora_linears(self.model)}
