"""Experiment trackers behind one tiny interface. ``logger=none`` (default) never imports wandb.

Whatever the tracker, every run also writes ``metrics.jsonl`` beside its record, so nothing depends on a
tracker to be read back. With ``logger=wandb``: one wandb run per harness run (id = run_id, so a resumed run
continues its wandb run), grouped by sweep, logged offline when ``WANDB_MODE=offline`` (``wandb sync`` later),
and always finished, also when training fails, so a multirun in one process keeps going.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from omegaconf import OmegaConf

from sora.errors import UserError
from sora.tuners.targets import MATRIX_TYPES, matrix_type


def ranks_by_matrix(ranks: dict[str, int]) -> dict[str, int]:
    """Total non-zero ranks per matrix type (Q, K, V, AO, I, O) over all layers."""
    out = dict.fromkeys(MATRIX_TYPES, 0)
    for name, r in ranks.items():
        where = matrix_type(name)
        if where:
            out[where[1]] += r
    return out


def flatten_eval(point: dict) -> dict:
    """An evaluation point as flat wandb keys: select/<metric>, <split>/<metric>, lr/<group>, ranks/<type>."""
    flat = {f"select/{k}": v for k, v in point["select"].items()}
    for split, metrics in point["report"].items():
        flat.update({f"{split}/{k}": v for k, v in metrics.items()})
    for k, v in (point.get("memorization") or {}).items():
        flat[f"train_subset/{k}"] = v
    flat.update({f"lr/{k}": v for k, v in point["lr"].items()})
    flat.update({f"ranks/{k}": v for k, v in (point.get("ranks_by_matrix") or {}).items()})
    for key in ("loss", "total_rank", "nonzero_params", "xi", "stage", "epoch"):
        if point.get(key) is not None:
            flat[key] = point[key]
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in flat.items()}


class NoTracker:
    active = False  # nothing is sent anywhere: callers skip work done only for a tracker (plots)

    def log_eval(self, point: dict, step: int) -> None:
        pass

    def log_image(self, key: str, path: Path) -> None:
        pass

    def finish(self, summary: dict | None = None, failed: bool = False) -> None:
        pass


class WandbTracker(NoTracker):
    active = True

    def __init__(self, cfg, run_id: str, run_dir: Path):
        try:
            import wandb
        except ImportError:
            raise UserError("logger=wandb needs the optional extra: pip install 'sora-glue[wandb]' "
                            "(or pip install wandb); or use logger=none") from None
        self.wandb = wandb
        lg = cfg.logger
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=lg.project, entity=lg.get("entity"), group=lg.get("group") or _sweep_name(),
            tags=list(lg.get("tags") or []) + [cfg.task.name, cfg.method.name, cfg.model.name],
            name=run_id, id=_wandb_id(run_id), resume="allow", dir=str(run_dir),
            config=OmegaConf.to_container(cfg, resolve=True), mode=os.environ.get("WANDB_MODE", lg.get("mode")),
            reinit="finish_previous",
        )

    last_step = 0

    def log_eval(self, point, step):
        self.last_step = step
        self.run.log(flatten_eval(point), step=step)

    def log_image(self, key, path):
        if path and Path(path).exists():  # one row after the last evaluation: steps must not go back
            self.run.log({key: self.wandb.Image(str(path))}, step=self.last_step + 1)

    def finish(self, summary=None, failed=False):
        if summary:
            self.run.summary.update(flatten_eval_summary(summary))
        self.run.finish(exit_code=1 if failed else 0)


def flatten_eval_summary(best: dict) -> dict:
    out = {"best/step": best["step"], "best/main": best["main"], "best/main_metric": best["main_metric"]}
    for split, metrics in best["metrics"].items():
        out.update({f"best/{split}/{k}": v for k, v in metrics.items()})
    return out


def _wandb_id(run_id: str) -> str:
    return run_id[-64:]  # wandb ids: <= 64 chars; the tail keeps the config hash


def _sweep_name() -> str:
    try:
        from hydra.core.hydra_config import HydraConfig

        choices = HydraConfig.get().runtime.choices
        return choices.get("experiment") or "single"
    except Exception:  # composed without the CLI (tests, notebooks)
        return "single"


def make_tracker(cfg, run_id: str, run_dir: Path):
    name = cfg.logger.name if cfg.get("logger") else "none"
    if name == "none":
        return NoTracker()
    if name == "wandb":
        return WandbTracker(cfg, run_id, run_dir)
    raise UserError(f"unknown logger {name!r}; valid: none, wandb")
