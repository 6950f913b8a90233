"""Compose the project's Hydra config from Python (tests, notebooks, benchmarks) exactly as the CLI does."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"

# ${repo_root:} in configs: shipped data paths that work from any working directory
if not OmegaConf.has_resolver("repo_root"):
    OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT))
# ${mul:2,${method.r}}: a LoRA alpha that keeps the scale alpha / r fixed whatever r a sweep picks
if not OmegaConf.has_resolver("mul"):
    OmegaConf.register_new_resolver("mul", lambda a, b: a * b)
# ${per_task:${task.name},{cola:6},3}: one experiment whose recipe differs for some tasks; the run's config
# (and so its identity) holds the resolved value, never the table
if not OmegaConf.has_resolver("per_task"):
    OmegaConf.register_new_resolver("per_task", lambda task, table, default: table.get(task, default))


def load_config(overrides: list[str] | None = None, config_name: str = "train") -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose(config_name=config_name, overrides=list(overrides or []))
