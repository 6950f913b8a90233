"""SoRA, LoRA and AdaLoRA on a causal LM for a stock ``transformers.Trainer``: one small interface, so the SFT
run has no method branches. LoRA and AdaLoRA are peft's, configured; SoRA is :mod:`sora.hf_trainer`."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import AdaLoraConfig, LoraConfig, get_peft_model
from peft.tuners.lora.layer import LoraLayer
from transformers import TrainerCallback

from sora.errors import UserError
from sora.hf_trainer import SoraCallback, sora_optimizer
from sora.train.optim import build_optimizer, decay_groups
from sora.tuners.methods import (
    adalora_ranks,
    adalora_schedule,
    adalora_state,
    load_adalora_state,
    sora_config,
    validate_method_config,
)
from sora.tuners.sora.export import export_pruned_adapter
from sora.tuners.sora.model import _is_conv1d, block_linears, get_sora_model, infer_task_type, lora_linears, sora_ranks


def lm_targets(model: torch.nn.Module, targets) -> tuple[list[str], bool]:
    """``auto``: every linear map of the blocks (q/k/v/o/gate/up/down; GPT-2's fused Conv1D maps), or a list of
    module-name suffixes. Returns the module names and whether they are Conv1D (``fan_in_fan_out``)."""
    names = block_linears(model)
    if targets != "auto":
        wanted = [targets] if isinstance(targets, str) else list(targets)
        names = [n for n in names if n.rsplit(".", 1)[-1] in wanted]
        if not names:
            raise UserError(f"method.targets={wanted} matches no linear map of the blocks; e.g. method.targets=auto")
    return names, any(_is_conv1d(model.get_submodule(n)) for n in names)


class SftAdapter:
    """What the SFT run asks of a method: the wrapped model, its optimizer, its Trainer wiring, its ranks."""

    def __init__(self, model):
        self.model = model

    def optimizer(self, args, kind: str) -> torch.optim.Optimizer:
        """Every method gets the same optimizer builder and decay rule (the Trainer's) unless its own differs."""
        groups = decay_groups(self.model.parameters(), args.learning_rate, args.weight_decay, args.adam_epsilon)
        device = next(p.device for p in self.model.parameters() if p.requires_grad)
        return build_optimizer(groups, (args.adam_beta1, args.adam_beta2), device,
                               "adamw" if kind == "auto" else kind)

    def attach(self, trainer) -> None:
        pass

    def resume_from(self, checkpoint: str | None) -> None:
        """Method state a Trainer checkpoint does not restore by itself (called before ``trainer.train``)."""

    def ranks(self) -> dict[str, int]:
        raise NotImplementedError

    def retained_params(self) -> int:
        """What the exported adapter holds: rank x (in + out) per module (AdaLoRA also keeps its E entries)."""
        shapes = {name.removeprefix("base_model.model."): m.in_features + m.out_features
                  for name, m in self.model.named_modules() if isinstance(m, LoraLayer)}
        extra = 1 if isinstance(self, AdaLoraSft) else 0
        return sum(r * (shapes[name] + extra) for name, r in self.ranks().items())

    def export(self, out_dir: Path) -> None:
        self.model.save_pretrained(str(out_dir))


class SoraSft(SftAdapter):
    def __init__(self, model, cfg, total_steps: int):
        self.config = sora_config(cfg)
        super().__init__(get_sora_model(model, self.config, targets=_sora_targets(model, cfg.targets),
                                        lora_dropout=cfg.lora_dropout))

    def optimizer(self, args, kind):
        return sora_optimizer(self.model, args, self.config, kind)

    def attach(self, trainer):
        SoraCallback.attach(trainer, export_dir=None)  # the run exports the pruned adapter itself

    def ranks(self):
        return sora_ranks(self.model)

    def export(self, out_dir):
        export_pruned_adapter(self.model, out_dir, getattr(self.model.peft_config["default"],
                                                            "base_model_name_or_path", None))


def _sora_targets(model, targets):
    return "auto" if targets == "auto" else lm_targets(model, targets)[0]


class LoraSft(SftAdapter):
    def __init__(self, model, cfg, total_steps: int):
        names, conv1d = lm_targets(model, cfg.targets)
        self.r = cfg.r
        super().__init__(get_peft_model(model, LoraConfig(
            task_type=infer_task_type(model), r=cfg.r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
            target_modules=sorted(names), fan_in_fan_out=conv1d)))

    def ranks(self):
        return {name: self.r for name, _ in lora_linears(self.model)}


class AdaLoraSft(SftAdapter):
    def __init__(self, model, cfg, total_steps: int):
        names, conv1d = lm_targets(model, cfg.targets)
        tinit, tfinal, delta_t = adalora_schedule(cfg, total_steps)
        self.init_r = cfg.init_r
        super().__init__(get_peft_model(model, AdaLoraConfig(
            task_type=infer_task_type(model), init_r=cfg.init_r, target_r=cfg.target_r, lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout, target_modules=sorted(names), fan_in_fan_out=conv1d, tinit=tinit,
            tfinal=tfinal, deltaT=delta_t, beta1=cfg.beta1, beta2=cfg.beta2, orth_reg_weight=cfg.orth_reg_weight,
            total_step=total_steps)))

    def attach(self, trainer):
        self.callback = _AdaLoraAllocate(self.model)
        trainer.add_callback(self.callback)

    def resume_from(self, checkpoint):
        self.callback.resume_dir = checkpoint

    def ranks(self):
        return adalora_ranks(self.model, self.init_r)


ADALORA_STATE = "adalora_state.pt"


class _AdaLoraAllocate(TrainerCallback):
    """AdaLoRA in a stock Trainer. peft #1801: the Trainer never calls ``update_and_allocate`` (ranks would stay
    at init_r); here it runs after ``optimizer.step()``, while the gradients (its sensitivity) are still there,
    with the 0-based step our loop passes too. And resume: peft saves a checkpoint trimmed to the budget mask,
    which a fresh full-rank model cannot load; each checkpoint is rewritten at full rank with the allocator's
    state beside it, restored once the Trainer has loaded the weights."""

    def __init__(self, model):
        self.model, self.resume_dir = model, None

    def on_train_begin(self, args, state, control, **kwargs):
        if self.resume_dir:
            load_adalora_state(self.model, torch.load(Path(self.resume_dir) / ADALORA_STATE, weights_only=False))

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.model.base_model.update_and_allocate(state.global_step)

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        config = self.model.peft_config["default"]
        pattern, config.rank_pattern = config.rank_pattern, None
        try:
            self.model.save_pretrained(str(checkpoint))
        finally:
            config.rank_pattern = pattern
        torch.save(adalora_state(self.model), checkpoint / ADALORA_STATE)


ADAPTERS = {"sora": SoraSft, "lora": LoraSft, "adalora": AdaLoraSft}


def build_adapter(model, cfg, total_steps: int) -> SftAdapter:
    if cfg.name not in ADAPTERS:
        raise UserError(f"unknown method {cfg.name!r}; valid: {', '.join(ADAPTERS)}")
    validate_method_config(cfg)
    return ADAPTERS[cfg.name](model, cfg, total_steps)
