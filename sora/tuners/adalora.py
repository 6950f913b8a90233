"""AdaLoRA as a registered method: peft's ``AdaLoraConfig``, configured, never rewritten; the allocator's step
(which a stock Trainer never calls, peft #1801), its budget mask at evaluation and its resume state."""

from __future__ import annotations

import contextlib
import copy
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from peft import AdaLoraConfig, get_peft_model
from peft.tuners.lora.layer import LoraLayer

from sora.errors import UserError
from sora.schema import nonneg, positive, spec, unit_interval
from sora.tuners.heads import apply_head_policy, head_modules_to_save, method_head
from sora.tuners.methods import AdapterKeys, Method, register
from sora.tuners.sora.model import infer_task_type, peft_targets


@dataclass
class AdaLoraMethodSchema(AdapterKeys):
    name: Literal["adalora"] = "adalora"
    init_r: int = spec(12, what="a positive integer", ok=positive, example=12)
    target_r: int = spec(8, what="a positive integer", ok=positive, example=8)
    lora_alpha: float = spec(32, what="> 0", ok=positive, example=32)
    tinit: int = spec(200, what="an integer >= 0", ok=nonneg, example=200)
    tfinal: int = spec(1000, what="an integer >= 0", ok=nonneg, example=1000)
    deltaT: int = spec(10, what="a positive integer", ok=positive, example=10)  # noqa: N815 (peft's name)
    beta1: float = spec(0.85, what="in [0, 1)", ok=unit_interval, example=0.85)
    beta2: float = spec(0.85, what="in [0, 1)", ok=unit_interval, example=0.85)
    orth_reg_weight: float = spec(0.1, what=">= 0", ok=nonneg, example=0.1)
    ref_steps: int | None = spec(None, what="null or a positive integer", ok=positive, example="null")


@register
class AdaLoraMethod(Method):
    name = "adalora"
    capturable_after_step = False  # update_and_allocate: host-side budget schedule and masking
    schema = AdaLoraMethodSchema
    color = "tab:green"
    frontier_budget = "method.target_r=2,4,8"

    @classmethod
    def check(cls, cfg) -> None:
        if cfg.target_r > cfg.init_r:
            raise UserError(f"method.target_r ({cfg.target_r}) must be <= method.init_r ({cfg.init_r}): AdaLoRA "
                            f"only prunes; e.g. method.target_r={cfg.init_r}")

    @classmethod
    def label(cls, m):
        return f"AdaLoRA ({m['init_r']}->{m['target_r']})"

    @classmethod
    def paper_key(cls, m):
        return "AdaLoRA"

    def __init__(self, base_model, cfg, total_steps: int):
        tinit, tfinal, delta_t = adalora_schedule(cfg, total_steps)
        config = AdaLoraConfig(task_type=infer_task_type(base_model), init_r=cfg.init_r, target_r=cfg.target_r,
                               lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                               modules_to_save=head_modules_to_save(method_head(cfg)), tinit=tinit, tfinal=tfinal,
                               deltaT=delta_t, beta1=cfg.beta1, beta2=cfg.beta2, orth_reg_weight=cfg.orth_reg_weight,
                               total_step=total_steps, **peft_targets(base_model, cfg.targets))
        super().__init__(get_peft_model(base_model, config))
        apply_head_policy(self.model, method_head(cfg))
        self.init_r = cfg.init_r
        self.schedule = {"tinit": tinit, "tfinal": tfinal, "deltaT": delta_t, "total_step": total_steps}

    def after_optimizer_step(self, step, optimizer):
        # peft #1801: the HF Trainer never calls this, and then ranks stay at init_r
        self.model.base_model.update_and_allocate(step)

    def ranks(self):
        return adalora_ranks(self.model, self.init_r)

    def _e_modules(self):
        return adalora_modules(self.model)

    def snapshot(self):
        return copy.deepcopy(self.model.peft_config["default"].rank_pattern)

    def restore_snapshot(self, snap) -> None:
        """The best checkpoint's own allocation: counted and exported with its weights."""
        self.model.peft_config["default"].rank_pattern = copy.deepcopy(snap)
        if snap:
            self.model.base_model.rankallocator.mask_using_rank_pattern(self.model.base_model.model, snap)

    @contextlib.contextmanager
    def eval_context(self):
        pattern = self.model.peft_config["default"].rank_pattern
        if not pattern:
            yield
            return
        e = [m.lora_E["default"] for _, m in self._e_modules()]
        saved = [p.detach().clone() for p in e]
        self.model.base_model.rankallocator.mask_using_rank_pattern(self.model.base_model.model, pattern)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(e, saved)

    def export(self, out_dir, base_model_name_or_path):
        """peft saves a module the budget cut to rank 0 as zero-size tensors and warns that they look like unsharded
        ZeRO-3/FSDP weights; here they are legitimately empty and reload exactly (tests/test_export.py), so that
        one warning would only mislead a reader of the run's log."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LoRA tensor\(s\) have invalid shape")
            super().export(out_dir, base_model_name_or_path)

    def rank_cap(self):
        return self.init_r

    def retained_params(self, ranks, shapes):
        return super().retained_params(ranks, shapes) + sum(ranks.values())  # the singular values E that stay

    def extra_state(self):
        return adalora_state(self.model)

    def save_for_resume(self, out_dir) -> None:
        """peft saves AdaLoRA weights trimmed to the budget mask, which a fresh full-rank model cannot load: a
        resume needs them whole, with the allocator state beside them (``load_extra_state`` restores it)."""
        config = self.model.peft_config["default"]
        pattern, config.rank_pattern = config.rank_pattern, None
        try:
            self.model.save_pretrained(str(out_dir))
        finally:
            config.rank_pattern = pattern
        torch.save(adalora_state(self.model), f"{out_dir}/{ADALORA_STATE}")

    def load_extra_state(self, state):
        load_adalora_state(self.model, state)


ADALORA_STATE = "adalora_state.pt"


def adalora_state(model) -> dict:
    """What a resume needs beyond the weights: the allocator's sensitivity averages and the budget mask."""
    ra = model.base_model.rankallocator
    return {"ipt": ra.ipt, "exp_avg_ipt": ra.exp_avg_ipt, "exp_avg_unc": ra.exp_avg_unc,
            "rank_pattern": model.peft_config["default"].rank_pattern}


def load_adalora_state(model, state: dict) -> None:
    ra = model.base_model.rankallocator
    ra.ipt, ra.exp_avg_ipt, ra.exp_avg_unc = state["ipt"], state["exp_avg_ipt"], state["exp_avg_unc"]
    model.peft_config["default"].rank_pattern = state["rank_pattern"]


def adalora_ranks(model, init_r: int) -> dict[str, int]:
    """Kept ranks from the budget mask (``rank_pattern``), not from non-zero E entries: between two mask steps
    Adam revives masked entries, which the next mask step (and the export) drops again."""
    pattern = model.peft_config["default"].rank_pattern
    if not pattern:  # before the first mask step every rank is kept
        return {name: init_r for name, _ in adalora_modules(model)}
    return {key.removeprefix("base_model.model.").split(".lora_E")[0]: int(sum(mask)) for key, mask in pattern.items()}


def adalora_modules(model):
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and hasattr(module, "lora_E") and "default" in module.lora_E:
            yield name.removeprefix("base_model.model."), module


def adalora_schedule(cfg, total_steps: int) -> tuple[int, int, int]:
    """tinit/tfinal/deltaT from the AdaLoRA scripts, rescaled by total_steps / the scripts' step count.

    The scripts' values assume their batch size and epochs (``ref_steps``); when a run is shorter or longer
    (another batch size, max_steps for smoke runs) each phase keeps its fraction of training.
    """
    scale = total_steps / cfg.ref_steps if cfg.get("ref_steps") else 1.0
    tinit = int(round(cfg.tinit * scale))
    tfinal = int(round(cfg.tfinal * scale))
    delta_t = max(1, int(round(cfg.deltaT * scale)))
    if tinit + tfinal >= total_steps:
        raise UserError(f"AdaLoRA needs tinit + tfinal < total steps, got {tinit} + {tfinal} >= {total_steps}; "
                        f"lower method.tinit/method.tfinal or train longer")
    return tinit, tfinal, delta_t
