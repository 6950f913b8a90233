"""SoRA in any ``transformers.Trainer`` (or TRL ``SFTTrainer``) script, in three lines::

    model = get_sora_model(model, SoraConfig(r_max=8, xi=3e-4, variant="code", l1_coef=10))
    trainer = Trainer(model=model, args=args, ..., optimizers=(sora_optimizer(model, args), None))
    SoraCallback.attach(trainer)

What each line holds that a naive callback gets wrong:

* ``sora_optimizer`` builds the optimizer with the gates in their own no-decay group *before* the Trainer
  builds its schedule, so the scheduler covers every group and ``resume_from_checkpoint`` loads the saved state
  into the same groups. ``variant="code"`` gets the release's transformers-4.x AdamW (``adamw_hf_legacy``).
* ``SoraCallback.attach`` puts the callback first, so the ranks it adds in ``on_log`` reach the reporting
  integrations (wandb, TensorBoard) and ``state.log_history`` - a callback passed in ``callbacks=`` runs after
  them. It runs the prox step in ``on_optimizer_step`` (after ``optimizer.step()``, before
  ``lr_scheduler.step()``, with that step's gate lr; skipped when a grad scaler skipped the step), and adds the
  ``code`` variant's L1 term to the Trainer's training loss (its ``compute_loss``, so TRL's too), once per
  optimizer step: divided over gradient accumulation when the Trainer does not divide the loss itself, not
  multiplied by the number of processes, absent from the eval loss, inside the clipped gradient as released.
  The math is ``sora.tuners.sora.step``, the same code our GLUE loop runs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from transformers import TrainerCallback

from sora.diagnostics.null import GateRecipe
from sora.diagnostics.verdict import diagnose, growth_warning
from sora.optim import LegacyAdamW, SchedulePlan, build_optimizer, optimizer_kind
from sora.tuners.sora import step as sora_step
from sora.tuners.sora.config import SoraConfig
from sora.tuners.sora.export import export_pruned_adapter
from sora.tuners.sora.model import gate_bank, gate_parameters, sora_ranks
from sora.tuners.targets import matrix_type

logger = logging.getLogger("sora")
DIAGNOSTICS_FILE = "sora_diagnostics.json"  # under the Trainer's output_dir: the gates beside their null model


def sora_optimizer(model, args, config: SoraConfig | None = None, kind: str = "auto") -> torch.optim.Optimizer:
    """The optimizer for ``Trainer(optimizers=(this, None))``: decay / no-decay / gate groups from ``args``."""
    config = config or model.sora_config
    groups = sora_step.param_groups(model, config, args.learning_rate, args.weight_decay, args.adam_epsilon)
    device = next(p.device for p in model.parameters() if p.requires_grad)
    kind = optimizer_kind({"optimizer": kind}, {"variant": config.variant})  # auto: the code variant's formula
    return build_optimizer(groups, (args.adam_beta1, args.adam_beta2), device, kind)


class SoraCallback(TrainerCallback):
    def __init__(self, model, config: SoraConfig | None = None, export_dir: str | None = "sora_pruned",
                 diagnostics_file: str | None = DIAGNOSTICS_FILE):
        self.model, self.config = model, config or model.sora_config
        self.gates, self.bank = gate_parameters(model), gate_bank(model)
        self.export_dir = export_dir
        self.diagnostics_file = diagnostics_file
        self.gate_trace = GateTrace(self.gates)

    @classmethod
    def attach(cls, trainer, **kwargs) -> SoraCallback:
        """Wire SoRA into ``trainer``: first in its callbacks, the L1 term on its training loss."""
        cb = cls(trainer.model, **kwargs)
        trainer.callback_handler.callbacks.insert(0, cb)
        if cb.config.l1_coef:
            cb._add_l1_to(trainer)
        return cb

    def _add_l1_to(self, trainer) -> None:
        """Wrap ``trainer.compute_loss``, not the model's output: TRL's SFTTrainer computes its loss from the
        model's log-probs and never reads ``output.loss``. The term is added after the Trainer's own
        ``num_processes`` factor (DDP averages identical gate gradients: counted once) and divided over gradient
        accumulation exactly when the Trainer will not divide the loss itself (its ``loss_is_scaled_for_ga``)."""
        inner = trainer.compute_loss

        def compute_loss(model, inputs, return_outputs=False, num_items_in_batch=None, **kw):
            out = inner(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch, **kw)
            if not model.training:  # evaluation: the eval loss stays the task's loss
                return out
            scaled = trainer.loss_is_scaled_for_ga
            if scaled is None:
                scaled = (trainer.model_accepts_loss_kwargs and num_items_in_batch is not None) \
                    or trainer.compute_loss_func is not None
            l1 = sora_step.l1_loss(self.gates, self.config, self.bank)
            l1 = l1 / trainer.current_gradient_accumulation_steps if scaled else l1
            return (out[0] + l1, *out[1:]) if return_outputs else out + l1

        trainer.compute_loss = compute_loss

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        self.gate_trace.begin(state.global_step)
        warning = growth_warning(self.config.variant, self.config.xi, self.config.gate_lr or args.learning_rate)
        if warning:
            logger.warning("SoRA: %s", warning)

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if optimizer is None or getattr(optimizer, "step_was_skipped", False):
            return
        lr = sora_step.gate_lr(optimizer)
        sora_step.prox_(self.gates, self.config, lr)
        self.gate_trace.step(lr, optimizer)

    def on_evaluate(self, args, state, control, **kwargs):
        self.gate_trace.snapshot(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or not any(k in logs for k in ("loss", "learning_rate")):
            return
        ranks = rank_logs(sora_ranks(self.model))
        self.gate_trace.count(state.global_step, ranks["sora/total_rank"])
        logs.update(ranks)
        if state.log_history:
            state.log_history[-1].update(ranks)  # the Trainer appended its copy before calling on_log

    def on_train_end(self, args, state, control, **kwargs):
        if self.export_dir and state.is_world_process_zero:
            export_pruned_adapter(self.model, Path(args.output_dir) / self.export_dir,
                                  getattr(self.model.peft_config["default"], "base_model_name_or_path", None))
        if self.diagnostics_file and state.is_world_process_zero:
            self.gate_trace.snapshot(state.global_step)
            diag = self.gate_trace.diagnose(self.config)
            if diag is not None:
                path = Path(args.output_dir) / self.diagnostics_file
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(diag, indent=1) + "\n")
                logger.info("SoRA gates: %s (%s)", diag["verdict"], path)


class GateTrace:
    """What the gate diagnostics need from a Trainer run: the gates at step 0 and at every evaluation, the kept
    count at every log, and the gate lr of every optimizer step (the null model replays exactly that schedule).
    A run resumed from a Trainer checkpoint lacks its start, so it gets no diagnostics (said in the log)."""

    def __init__(self, gates):
        self.gates, self.lrs, self.counts, self.values = gates, [], {}, {}
        self.start, self.optimizer = None, None

    def _flat(self) -> torch.Tensor:
        return torch.cat([g.detach().reshape(-1) for g in self.gates]).float().cpu()

    def begin(self, step: int) -> None:
        self.start = step
        if step == 0:
            self.values[0] = self._flat()

    def step(self, lr: float, optimizer) -> None:
        self.lrs.append(lr)
        self.optimizer = optimizer

    def count(self, step: int, kept: int) -> None:
        self.counts[step] = kept

    def snapshot(self, step: int) -> None:
        if step > 0:
            self.values[step] = self._flat()
            self.counts[step] = int((self.values[step] != 0).sum())

    def diagnose(self, config: SoraConfig) -> dict | None:
        if self.start != 0 or not self.lrs or self.optimizer is None:
            logger.info("SoRA gates: no diagnostics (the run was resumed, or took no step)")
            return None
        group = next(g for g in self.optimizer.param_groups if g.get("name") == sora_step.GATE_GROUP)
        kind = "adamw_hf_legacy" if isinstance(self.optimizer, LegacyAdamW) else "adamw"
        n = len(self.lrs)
        recipe = GateRecipe(config=config, optimizer=kind, lr=max(self.lrs), adam_betas=tuple(group["betas"]),
                            adam_eps=group["eps"], plan=SchedulePlan(n, 0, 0), steps=n,
                            n_gates=sum(g.numel() for g in self.gates))
        observed = sorted((s, k) for s, k in self.counts.items() if 0 < s <= n)
        return diagnose(recipe, observed, self.values[0], self.values, max(self.values), lrs=self.lrs)


def rank_logs(ranks: dict[str, int]) -> dict[str, int]:
    """``sora/total_rank`` and ``sora/rank_<matrix>`` (Q K V AO I O for encoders; the module's own name else)."""
    out = {"sora/total_rank": sum(ranks.values())}
    for name, r in ranks.items():
        kind = matrix_type(name)
        key = f"sora/rank_{kind[1] if kind else name.rsplit('.', 1)[-1]}"
        out[key] = out.get(key, 0) + r
    return out
