"""Compose the project's Hydra config from Python (tests, notebooks, benchmarks) exactly as the CLI does."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
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

# method: ${methods:} in an experiment's sweep: every method this checkout has (a new plugin joins the sweep)
if not OmegaConf.has_resolver("methods"):
    OmegaConf.register_new_resolver("methods", lambda: ",".join(group_choices("method")))


def group_choices(group: str, conf_dir: Path = CONF_DIR) -> list[str]:
    """A group's yaml files and the nodes a plugin stored for it in Hydra's ConfigStore (``method``: every method,
    one defined outside the repo's files too, e.g. in a test)."""
    stored = ConfigStore.instance().repo.get(group, {})
    return sorted({p.stem for p in (conf_dir / group).glob("*.yaml")} | {n.removesuffix(".yaml") for n in stored})


HPARAMS_MISSING = "hparams_missing"  # the key a set with neither the method's file nor a recipe composes to


def register_hparams_fallbacks(conf_dir: Path = CONF_DIR) -> None:
    """``hparams: ${hparams_set}/${task}/${method}`` needs a file per method: where a set has none for a method, its
    task's ``recipe.yaml`` (the settings the set's methods share) stands in, so a new method needs no hparams file.
    A set without recipes (``sora_authors_lora``: LoRA only) gets no fallback: such a run stops with one line."""
    store = ConfigStore.instance()
    for task_dir in sorted(p for p in (conf_dir / "hparams").glob("*/*") if p.is_dir()):
        group = task_dir.relative_to(conf_dir).as_posix()
        for name in group_choices("method", conf_dir):
            if (task_dir / f"{name}.yaml").exists():
                continue
            if (task_dir / "recipe.yaml").exists():
                store.store(group=group, name=name, node={"defaults": [f"/{group}/recipe"]}, package="_global_")
            else:  # composes, then sora.validate refuses it in one line (Hydra's own error is a page)
                store.store(group=group, name=name, node={HPARAMS_MISSING: group}, package="_global_")


@contextmanager
def hydra_context():
    """Hydra's composition from Python as the CLI composes (the hparams fallbacks registered first)."""
    register_hparams_fallbacks()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        yield


def load_config(overrides: list[str] | None = None, config_name: str = "train") -> DictConfig:
    with hydra_context():
        return compose(config_name=config_name, overrides=list(overrides or []))
