"""Our methods (:mod:`sora.tuners.methods`, the same objects the GLUE loop trains) inside a stock
``transformers.Trainer``: the optimizer from the method's own param groups, and a callback that runs the method's
after-step hook where the Trainer steps. SoRA's wiring is the public :class:`sora.hf_trainer.SoraCallback`."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import TrainerCallback

from sora.errors import UserError
from sora.hf_trainer import SoraCallback
from sora.optim import build_optimizer, optimizer_kind
from sora.tuners.adalora import ADALORA_STATE
from sora.tuners.methods import Method
from sora.tuners.sora.method import SoraMethod


def method_optimizer(method: Method, args, train_cfg, method_cfg) -> torch.optim.Optimizer:
    """Every method's groups (SoRA: its gate group) and formula, at the Trainer's lr / decay / betas / eps."""
    groups = method.param_groups(args.learning_rate, args.weight_decay, args.adam_epsilon)
    device = next(p.device for p in method.model.parameters() if p.requires_grad)
    return build_optimizer(groups, (args.adam_beta1, args.adam_beta2), device, optimizer_kind(train_cfg, method_cfg))


BRIDGES: dict[type, object] = {}  # method class -> fn(trainer, method, resume_dir); the generic one otherwise


def bridge(method_class: type):
    """Register a method's own Trainer wiring (keyed by class, found through subclasses: no name compares)."""
    def register(fn):
        BRIDGES[method_class] = fn
        return fn
    return register


@bridge(SoraMethod)
def _sora_bridge(trainer, method: Method, resume_dir: str | None) -> None:
    SoraCallback.attach(trainer, export_dir=None)  # prox, L1, ranks in the logs; the run exports itself


def attach_method(trainer, method: Method, resume_dir: str | None) -> None:
    fn = next((BRIDGES[k] for k in type(method).__mro__ if k in BRIDGES), None)
    if fn is not None:
        fn(trainer, method, resume_dir)
        return
    if type(method).extra_loss is not Method.extra_loss:  # the generic callback cannot add a term to the loss
        raise UserError(f"method {method.name} adds a loss term, which a stock Trainer does not compute; register "
                        f"its Trainer wiring with sora.sft.adapters.bridge({type(method).__name__})")
    trainer.add_callback(MethodCallback(method, resume_dir))


class MethodCallback(TrainerCallback):
    """``method.after_optimizer_step`` after ``optimizer.step()``, while the gradients are still there (AdaLoRA's
    ``update_and_allocate``, which the Trainer never calls: peft #1801), with the 0-based step our loop passes.
    Checkpoints: a method with resume state (AdaLoRA) rewrites each one whole and restores it once the Trainer has
    loaded the weights."""

    def __init__(self, method: Method, resume_dir: str | None):
        self.method, self.resume_dir = method, resume_dir

    def on_train_begin(self, args, state, control, **kwargs):
        if self.resume_dir and (Path(self.resume_dir) / ADALORA_STATE).exists():
            self.method.load_extra_state(torch.load(Path(self.resume_dir) / ADALORA_STATE, weights_only=False))

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.method.after_optimizer_step(state.global_step, optimizer)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.method.save_for_resume(Path(args.output_dir) / f"checkpoint-{state.global_step}")
