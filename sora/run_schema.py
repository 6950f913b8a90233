"""The typed schema of a run's config: ``conf/train.yaml`` (GLUE loop, cost estimate) and ``conf/sft.yaml``.

Groups whose keys depend on a choice (``method``, ``scheduler``, ``logger``) are checked against the chosen
schema; ``sora.validate`` adds what needs the machine or the model (the device, ``data.max_len`` against the
model's positions, the hub). The yaml files hold these defaults (``tests/test_schema.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sora.schema import check_node, choice_keys, nonneg, positive, spec, unit_interval

_OPTIMIZERS = Literal["auto", "adamw", "adamw_hf_legacy"]  # sora.optim.OPTIMIZERS (tested equal)
_WARMUP = ">= 0 (< 1: a ratio of the steps, >= 1: steps)"


def _steps_or_off(v) -> bool:
    return v == -1 or v > 0


@dataclass
class DataSchema:
    dir: str | None = None
    cache_dir: str | None = "${oc.env:SORA_CACHE_DIR,'~/.cache/sora-glue/encoded'}"
    revision: str | None = None
    max_len: int = spec(128, what="an integer > 1", ok=lambda v: v > 1, example=128)
    pad_to_max_len: bool = False
    group_by_length: bool = True
    sort_eval_by_length: bool = True
    pad_buckets: int = spec(0, what="0 (pad to each batch's longest row) or a number of length buckets", ok=nonneg,
                            example=8)


@dataclass
class TrainSchema:
    lr: float = spec(8e-4, what="a finite number > 0", ok=positive, example=8e-4)
    batch_size: int = spec(32, what="a positive integer", ok=positive, example=32)
    epochs: float = spec(20, what="a finite number > 0", ok=positive, example=20)
    max_steps: int = spec(-1, what="-1 (use epochs) or a positive integer", ok=_steps_or_off, example=-1)
    warmup: float = spec(0.06, what=_WARMUP, ok=nonneg, example=0.06)
    weight_decay: float = spec(0.1, what="a finite number >= 0", ok=nonneg, example=0.01)
    max_grad_norm: float = spec(0.1, what=">= 0 (0 = no clipping)", ok=nonneg, example=1.0)
    adam_betas: list[float] = spec(default_factory=lambda: [0.9, 0.999], what="two numbers in [0, 1)",
                                   ok=lambda v: len(v) == 2 and all(unit_interval(b) for b in v),
                                   example="[0.9,0.999]")
    adam_eps: float = spec(1e-8, what="a finite number > 0", ok=positive, example=1e-8)
    optimizer: _OPTIMIZERS = "auto"
    schedule: Literal["standard", "sora_release"] = "standard"
    cls_dropout: float | None = spec(None, what="null or in [0, 1)", ok=unit_interval, example=0.1)
    eval_steps: int = spec(-1, what="-1 (once per epoch) or a positive integer", ok=_steps_or_off, example=-1)
    save_steps: int = spec(200, what="an integer >= 0 (0 = never)", ok=nonneg, example=200)
    save_minutes: float = spec(0, what=">= 0 (0 = off)", ok=nonneg, example=0)
    log_steps: int = spec(10, what="a positive integer", ok=positive, example=10)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    attention: Literal["eager", "disentangled_flash"] = "eager"
    compile: Literal["off", "default", "reduce-overhead", False, True] = "off"  # bools: before it named a mode
    tf32: bool = True


@dataclass
class EvalSchema:
    protocol: Literal["best_on_dev", "sora_split"] = "best_on_dev"
    batch_size: int = spec(64, what="a positive integer", ok=positive, example=64)


@dataclass
class TaskSchema:
    name: str = "cola"


@dataclass
class ModelSchema:
    name: str = "minilm"
    source: str | None = None
    tokenizer: str | None = None
    hub_id: str | None = None
    random_init: bool = False
    overrides: dict = spec(default_factory=dict)
    config: dict | None = None  # a random model's architecture (model=tiny)


@dataclass
class SparsifySchema:
    name: Literal["sparsify"] = "sparsify"
    mode: Literal["shrink_only", "retrain"] = "shrink_only"
    xi0: float = spec(0.0, what="a finite number >= 0", ok=nonneg, example=0)
    xi_max: float = spec(7e-4, what="a finite number > 0", ok=positive, example=7e-4)
    n_stages: int = spec(7, what="an integer >= 2 (the dense phase + at least one stage)", ok=lambda v: v >= 2,
                         example=7)
    schedule: Literal["linear", "log_linear", "exp_linear"] = "linear"
    stage_epochs: float = spec(15, what="a finite number > 0", ok=positive, example=15)
    stage_max_steps: int = spec(-1, what="-1 (use stage_epochs) or a positive integer", ok=_steps_or_off,
                                example=-1)


@dataclass
class NoSchedulerSchema:
    name: Literal["none"] = "none"


@dataclass
class NoLoggerSchema:
    name: Literal["none"] = "none"


@dataclass
class WandbSchema:
    name: Literal["wandb"] = "wandb"
    project: str = "sora-glue"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = spec(default_factory=list)
    mode: Literal["online", "offline", "disabled"] | None = None


@dataclass
class RunSchema:
    """``conf/train.yaml``: one GLUE run."""

    seed: int = spec(0, what="an integer in [0, 2**32)", ok=lambda v: 0 <= v < 2**32, example=0)
    results_dir: str = "results"
    device: str = "auto"  # what exists on this machine: sora.validate.validate_device
    progress: bool = True
    data: DataSchema = spec(default_factory=DataSchema)
    train: TrainSchema = spec(default_factory=TrainSchema)
    eval: EvalSchema = spec(default_factory=EvalSchema)
    task: TaskSchema = spec(default_factory=TaskSchema)
    model: ModelSchema = spec(default_factory=ModelSchema)
    hparams_set: dict = spec(default_factory=dict)  # picks conf/hparams/<set>/... files; its own node is empty
    method: Any = None      # the registered method's own schema (Method.schema)
    scheduler: Any = None   # SCHEDULER_SCHEMAS[scheduler.name]
    logger: Any = None      # LOGGER_SCHEMAS[logger.name]


@dataclass
class SftDataSchema:
    path: str = "${repo_root:}/data/sft_sample/train.jsonl"
    eval_path: str | None = "${repo_root:}/data/sft_sample/eval.jsonl"
    split: str = "train"
    eval_split: str = "validation"
    revision: str | None = None
    eval_rows: int = spec(64, what="a positive integer", ok=positive, example=64)
    template: str = "### Instruction:\n{prompt}\n\n### Response:\n"
    response_field: str = "response"
    max_len: int = spec(256, what="an integer > 1", ok=lambda v: v > 1, example=256)


@dataclass
class SftTrainSchema:
    lr: float = spec(1e-3, what="a finite number > 0", ok=positive, example=1e-3)
    batch_size: int = spec(8, what="a positive integer", ok=positive, example=8)
    eval_batch_size: int = spec(16, what="a positive integer", ok=positive, example=16)
    grad_accum: int = spec(1, what="a positive integer", ok=positive, example=1)
    epochs: float = spec(3, what="a finite number > 0", ok=positive, example=3)
    max_steps: int = spec(-1, what="-1 (use epochs) or a positive integer", ok=_steps_or_off, example=-1)
    warmup: float = spec(0.06, what=_WARMUP, ok=nonneg, example=0.06)
    weight_decay: float = spec(0.0, what="a finite number >= 0", ok=nonneg, example=0.0)
    max_grad_norm: float = spec(1.0, what=">= 0 (0 = no clipping)", ok=nonneg, example=1.0)
    optimizer: _OPTIMIZERS = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    gradient_checkpointing: bool = False
    eval_steps: int = spec(20, what="a positive integer", ok=positive, example=20)
    save_steps: int = spec(50, what="a positive integer", ok=positive, example=50)
    log_steps: int = spec(5, what="a positive integer", ok=positive, example=5)


@dataclass
class LmSchema:
    name: str = "tiny_llama"
    source: str | None = None
    tokenizer: str | None = None
    random_init: bool = False
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    config: dict | None = None


@dataclass
class SftSchema:
    """``conf/sft.yaml``: one instruction-tuning run of a causal LM."""

    seed: int = spec(0, what="an integer in [0, 2**32)", ok=lambda v: 0 <= v < 2**32, example=0)
    results_dir: str = "results/sft"
    device: str = "auto"
    progress: bool = False
    data: SftDataSchema = spec(default_factory=SftDataSchema)
    train: SftTrainSchema = spec(default_factory=SftTrainSchema)
    lm: LmSchema = spec(default_factory=LmSchema)
    method: Any = None
    logger: Any = None


SCHEDULER_SCHEMAS = {"none": NoSchedulerSchema, "sparsify": SparsifySchema}
LOGGER_SCHEMAS = {"none": NoLoggerSchema, "wandb": WandbSchema}


def check_run_schema(cfg, schema=RunSchema) -> None:
    """Every key of a composed run config (``RunSchema`` or ``SftSchema``) against its schema, the chosen
    groups against theirs."""
    check_node(cfg, schema)
    from sora.tuners.methods import check_method_config

    if cfg.get("method") is not None:
        check_method_config(cfg.method)  # the method's own schema and rules, as build_method checks them
    _check_choice(cfg, "logger", LOGGER_SCHEMAS)
    if schema is RunSchema:
        _check_choice(cfg, "scheduler", SCHEDULER_SCHEMAS)


def _check_choice(cfg, group: str, schemas: dict) -> None:
    node = cfg.get(group)
    if node is None:
        return
    name = node.get("name")
    if name not in schemas:
        from sora.errors import UserError

        raise UserError(f"unknown {group} {name!r}; valid: {', '.join(schemas)}")
    check_node(node, schemas[name], f"{group}.", foreign=choice_keys(schemas.values()))
