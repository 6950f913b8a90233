"""SoRA, LoRA and AdaLoRA behind one small interface, so the training loop has no method branches.

LoRA and AdaLoRA are peft's own implementations, configured, never rewritten.
"""

from __future__ import annotations

import contextlib
import copy
import re
import warnings

import torch
from peft import AdaLoraConfig, LoraConfig, get_peft_model
from peft.tuners.lora.layer import LoraLayer

from sora.diagnostics.verdict import growth_warning, record_diagnostics
from sora.errors import UserError
from sora.optim import decay_groups
from sora.schema import check_node
from sora.tuners.heads import apply_head_policy, head_modules_to_save
from sora.tuners.method_schemas import AdaLoraMethodSchema, LoraMethodSchema, SoraMethodSchema
from sora.tuners.sora import step as sora_step
from sora.tuners.sora.config import SoraConfig
from sora.tuners.sora.export import export_pruned_adapter
from sora.tuners.sora.layer import GATE_ATTR
from sora.tuners.sora.model import (
    gate_parameters,
    gated_modules,
    get_sora_model,
    infer_task_type,
    lora_linears,
    peft_targets,
    sora_ranks,
)
from sora.tuners.targets import target_regex

METHODS: dict[str, type[Method]] = {}


def register(cls):
    """A method plugs in by decorating its class: its name, config schema, checks, labels and hooks are its own,
    and nothing outside its module compares method names."""
    METHODS[cls.name] = cls
    return cls


def method_class(name: str) -> type[Method]:
    """The registered class; a record of a method this checkout does not have gets the base class's labels."""
    return METHODS.get(name) or type(f"Unregistered_{name}", (Method,), {"name": name})


class Method:
    """Wraps a peft model; the loop calls these hooks in its fixed step order. The class methods describe a run of
    this method from its record's ``config.method`` alone (tables, plots, the cost estimate): no model needed."""

    name = "base"
    schema = None          # the method node's dataclass (sora.tuners.method_schemas)
    color = "tab:gray"     # its colour in the frontier plot
    sparsifiable = False   # the sparsifying scheduler (Algorithm 1) can raise its threshold stage by stage

    @classmethod
    def check(cls, cfg) -> None:
        """Rules between keys of the method node (each key alone: ``schema``)."""

    @classmethod
    def check_scheduler(cls, m, scheduler) -> None:
        """The sparsifying scheduler's stage hook: refuse a combination that cannot prune (``sparsifiable`` only)."""

    @classmethod
    def label(cls, m: dict) -> str:
        """Its row in Table 1 and the plots, e.g. 'LoRA (r=8)'."""
        return cls.name

    @classmethod
    def paper_key(cls, m: dict) -> str:
        """The row of results/paper/table1.csv it is compared with."""
        return cls.name

    @classmethod
    def rate_key(cls, m: dict) -> str:
        """Which measured step time (scripts/bench_step.py) prices it in the cost estimate."""
        return cls.name

    def __init__(self, model):
        self.model = model

    def param_groups(self, lr: float, weight_decay: float, eps: float) -> list[dict]:
        return decay_groups(self.model.parameters(), lr, weight_decay, eps)

    def extra_loss(self) -> torch.Tensor | None:
        return None

    def after_optimizer_step(self, step: int, optimizer) -> None:
        """Runs after optimizer.step(), before the scheduler steps and before grads are zeroed."""

    def ranks(self) -> dict[str, int]:
        raise NotImplementedError

    def export(self, out_dir, base_model_name_or_path: str | None) -> None:
        self.model.save_pretrained(str(out_dir))
        cfg_path = f"{out_dir}/adapter_config.json"
        if base_model_name_or_path:  # record the real backbone, not a temp path
            import json

            with open(cfg_path) as f:
                data = json.load(f)
            data["base_model_name_or_path"] = base_model_name_or_path
            with open(cfg_path, "w") as f:
                json.dump(data, f, indent=2)

    def extra_state(self) -> dict:
        return {}

    def save_for_resume(self, out_dir) -> None:
        """Beside a Trainer checkpoint, what its own save misses (nothing, but for AdaLoRA)."""

    def load_extra_state(self, state: dict) -> None:
        pass

    def snapshot(self):
        """Method state that belongs with a set of weights (kept beside the best checkpoint)."""
        return None

    def restore_snapshot(self, snap) -> None:
        pass

    def eval_context(self):
        """Evaluate the model as it would be exported (AdaLoRA: under its budget mask)."""
        return contextlib.nullcontext()

    def config_warnings(self, cfg) -> list[str]:
        """Recipe problems worth a warning before training (the record's diagnostics repeat them)."""
        return []

    def trace_point(self) -> list[float] | None:
        """Compact values kept at init and at every evaluation, so a diagnostic can be recomputed later."""
        return None

    def annotate_record(self, record: dict, trace: list[dict]) -> None:
        """What the method adds to its finished record (SoRA: its gate trace and the gate diagnostics)."""


@register
class SoraMethod(Method):
    name = "sora"
    schema = SoraMethodSchema
    color = "tab:red"
    sparsifiable = True

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
        self.gates = gate_parameters(self.model)

    def param_groups(self, lr, weight_decay, eps):
        return sora_step.param_groups(self.model, self.config, lr, weight_decay, eps, self.gates)

    def extra_loss(self):
        return sora_step.l1_loss(self.gates, self.config)

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


def _head(cfg) -> str:
    """The method's head policy; a causal LM (no ``head`` key in its config) trains only the adapters."""
    return cfg.get("head") or "none"


def sora_config(cfg) -> SoraConfig:
    """The ``method`` config node (GLUE or SFT) as a SoraConfig."""
    return SoraConfig(r_max=cfg.r_max, lora_alpha=cfg.lora_alpha, xi=cfg.xi, variant=cfg.variant,
                      gate_init=cfg.get("gate_init"), l1_coef=cfg.get("l1_coef") or 0.0,
                      gate_lr=cfg.get("gate_lr"), prox=cfg.get("prox"))


@register
class LoraMethod(Method):
    name = "lora"
    schema = LoraMethodSchema
    color = "tab:blue"

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
                            lora_dropout=cfg.lora_dropout, modules_to_save=head_modules_to_save(_head(cfg)),
                            **targets)
        super().__init__(get_peft_model(base_model, config))
        apply_head_policy(self.model, _head(cfg))
        self.r = cfg.r
        self.rank_pattern = rank_pattern

    def ranks(self):
        if self.rank_pattern is not None:
            return {name: self.rank_pattern[name] for name, _ in lora_linears(self.model)}
        return {name: self.r for name, _ in lora_linears(self.model)}


@register
class AdaLoraMethod(Method):
    name = "adalora"
    schema = AdaLoraMethodSchema
    color = "tab:green"

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
                               modules_to_save=head_modules_to_save(_head(cfg)), tinit=tinit, tfinal=tfinal,
                               deltaT=delta_t, beta1=cfg.beta1, beta2=cfg.beta2, orth_reg_weight=cfg.orth_reg_weight,
                               total_step=total_steps, **peft_targets(base_model, cfg.targets))
        super().__init__(get_peft_model(base_model, config))
        apply_head_policy(self.model, _head(cfg))
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


def build_method(base_model, cfg, total_steps: int, **extra) -> Method:
    check_method_config(cfg)
    return METHODS[cfg.name](base_model, cfg, total_steps, **extra)


def check_method_config(cfg) -> None:
    """Every value of the ``method`` node, before a model or a run folder exists: its schema
    (``Method.schema``), then what one key cannot say alone (``Method.check``)."""
    if cfg.name not in METHODS:
        raise UserError(f"unknown method {cfg.name!r}; valid: {', '.join(METHODS)}")
    cls = METHODS[cfg.name]
    check_node(cfg, cls.schema, "method.")
    head_modules_to_save(_head(cfg))
    if isinstance(cfg.get("targets"), str) and cfg.targets != "auto":
        target_regex(cfg.targets)
    cls.check(cfg)


def count_params(method: Method, hidden_size: int) -> dict[str, int]:
    """trainable; retained = sum over modules of kept rank x (in + out), exactly; and the released formula."""
    ranks = method.ranks()
    shapes = {n.removeprefix("base_model.model."): (m.in_features, m.out_features)  # the layer's: Conv1D too
              for n, m in method.model.named_modules() if isinstance(m, LoraLayer)}
    retained = sum(r * (shapes[n][0] + shapes[n][1]) for n, r in ranks.items())
    if method.name == "adalora":
        retained += sum(ranks.values())  # the singular values E that stay
    head = sum(p.numel() for n, p in method.model.named_parameters() if p.requires_grad and "modules_to_save" in n)
    return {
        "trainable": sum(p.numel() for p in method.model.parameters() if p.requires_grad),
        "retained": retained,
        "retained_repo_formula": repo_sparse_params(method.model, ranks, hidden_size),
        "head": head,
        "total_rank": sum(ranks.values()),
        "max_rank": len(ranks) * _rank_cap(method),
    }


def repo_sparse_params(model, ranks: dict[str, int], hidden_size: int) -> int:
    """The release's ``compute_trainable_sparse_param`` (``src/util.py:8-21``): every trainable non-gate numel,
    minus 2 * hidden per zero gate entry (as if every adapted map were hidden x hidden). For SoRA the zero
    entries are the gate size minus the kept ranks; without gates it is simply the trainable count."""
    gate_numel = non_gate = 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            if GATE_ATTR in name:
                gate_numel += p.numel()
            else:
                non_gate += p.numel()
    zeros = gate_numel - sum(ranks.values()) if gate_numel else 0
    return non_gate - zeros * 2 * hidden_size


def _rank_cap(method: Method) -> int:
    cfg = method.model.peft_config["default"]
    return getattr(cfg, "init_r", None) or cfg.r

