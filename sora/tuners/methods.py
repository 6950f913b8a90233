"""The method registry: every method is one plugin module under ``sora/tuners/`` (``lora.py``, ``adalora.py``,
``sora/method.py``, ``eva.py``, ...) whose class registers itself and owns everything its name means, so the training
loop, the tables and the cost estimate hold no method branches.

Discovery: importing this module imports every ``sora/tuners/<name>.py`` and ``sora/tuners/<name>/method.py``, so a
new method is one new file (plus ``conf/method/<name>.yaml``) and nothing else.
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path

import torch
from peft.tuners.lora.layer import LoraLayer

from sora.errors import UserError
from sora.optim import decay_groups
from sora.schema import check_node, choice_keys, spec, unit_interval
from sora.tuners.heads import head_modules_to_save, method_head
from sora.tuners.sora.layer import GATE_ATTR
from sora.tuners.targets import target_regex

METHODS: dict[str, type[Method]] = {}


@dataclass
class AdapterKeys:
    """The keys every method's node has (its schema extends this): where the adapters go, what the head does."""

    targets: str | list[str] = spec("all", what="all | qv (GLUE), auto or a list of module names (SFT)")
    head: str | None = "trainable"
    lora_dropout: float = spec(0.0, what="in [0, 1)", ok=unit_interval, example=0.0)


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
    schema = None          # the method node's dataclass (each plugin module defines it beside its class)
    color = "tab:gray"     # its colour in the frontier plot
    sparsifiable = False   # the sparsifying scheduler (Algorithm 1) can raise its threshold stage by stage
    capturable_after_step = True  # after_optimizer_step is device ops only: a CUDA graph may hold it (no host logic)
    frontier_budget = None  # ``make frontier``'s sweep of its budget, e.g. "method.r=1,2,4,8"; None = not swept

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
        self.data_batches = 0  # > 0: the run calls init_from_data with that many training batches first

    def param_groups(self, lr: float, weight_decay: float, eps: float) -> list[dict]:
        return decay_groups(self.model.parameters(), lr, weight_decay, eps)

    def extra_loss(self) -> torch.Tensor | None:
        return None

    def after_optimizer_step(self, step: int, optimizer) -> None:
        """Runs after optimizer.step(), before the scheduler steps and before grads are zeroed."""

    def init_from_data(self, batches) -> None:
        """A data-driven initialisation (EVA: activation SVDs) before the optimizer exists. ``batches`` is a
        ``sora.tuners.methods.Batches``: ``data_batches`` training batches of model inputs, on the model's device
        (a GLUE run drops the class labels; an SFT run keeps the token labels, -100 on the prompt)."""

    def ranks(self) -> dict[str, int]:
        raise NotImplementedError

    def rank_cap(self) -> int:
        """The most rank one module can hold (the frontier's ``max_rank`` is this x the module count)."""
        return self.model.peft_config["default"].r

    def retained_params(self, ranks: dict[str, int], shapes: dict[str, tuple[int, int]]) -> int:
        """Parameters an export keeps: kept rank x (in + out) per module (AdaLoRA adds its singular values)."""
        return sum(r * (shapes[n][0] + shapes[n][1]) for n, r in ranks.items())

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


def build_method(base_model, cfg, total_steps: int, **extra) -> Method:
    check_method_config(cfg)
    return METHODS[cfg.name](base_model, cfg, total_steps, **extra)


def check_method_config(cfg) -> None:
    """Every value of the ``method`` node, before a model or a run folder exists: its schema
    (``Method.schema``), then what one key cannot say alone (``Method.check``)."""
    if cfg.name not in METHODS:
        raise UserError(f"unknown method {cfg.name!r}; valid: {', '.join(sorted(METHODS))}")
    cls = METHODS[cfg.name]
    check_node(cfg, cls.schema, "method.", foreign=choice_keys(c.schema for c in METHODS.values()))
    head_modules_to_save(method_head(cfg))
    if isinstance(cfg.get("targets"), str) and cfg.targets != "auto":
        target_regex(cfg.targets)
    cls.check(cfg)


def count_params(method: Method, hidden_size: int) -> dict[str, int]:
    """trainable; retained = sum over modules of kept rank x (in + out), exactly; and the released formula."""
    ranks = method.ranks()
    shapes = {n.removeprefix("base_model.model."): (m.in_features, m.out_features)  # the layer's: Conv1D too
              for n, m in method.model.named_modules() if isinstance(m, LoraLayer)}
    retained = method.retained_params(ranks, shapes)
    head = sum(p.numel() for n, p in method.model.named_parameters() if p.requires_grad and "modules_to_save" in n)
    return {
        "trainable": sum(p.numel() for p in method.model.parameters() if p.requires_grad),
        "retained": retained,
        "retained_repo_formula": repo_sparse_params(method.model, ranks, hidden_size),
        "head": head,
        "total_rank": sum(ranks.values()),
        "max_rank": len(ranks) * method.rank_cap(),
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


class Batches:
    """Training batches for ``Method.init_from_data``: at most ``limit`` of them, model inputs only, moved to
    ``device``; a sized iterable (peft's EVA asks ``len``), re-iterable (it cycles until its SVDs converge)."""

    def __init__(self, batches, device, limit: int, drop=()):
        self.items = []
        for batch in batches:
            if len(self.items) >= limit:
                break
            self.items.append({k: v.to(device) for k, v in batch.items() if k not in drop})

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)


def load_plugins() -> None:
    """Import every method module of this package: each registers itself on import."""
    package = Path(__file__).parent
    for info in pkgutil.iter_modules([str(package)]):
        if info.ispkg:
            if (package / info.name / "method.py").exists():
                importlib.import_module(f"{__package__}.{info.name}.method")
        elif info.name != "methods":
            importlib.import_module(f"{__package__}.{info.name}")


load_plugins()
