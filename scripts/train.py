"""Train one run (or a sweep with -m): python scripts/train.py task=cola method=sora model=minilm ..."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from sora.cli import check_group_choices, exit_if_failures, run_cli  # noqa: E402
from sora.config import CONF_DIR as CONF  # noqa: E402  (also registers ${repo_root:})
from sora.config import register_hparams_fallbacks  # noqa: E402


@hydra.main(config_path=str(CONF), config_name="train", version_base=None)
def main(cfg: DictConfig) -> None:
    from sora.train.loop import train

    run_cli(train, cfg)


if __name__ == "__main__":
    check_group_choices(sys.argv[1:], CONF)
    register_hparams_fallbacks()  # a method with no hparams file of its own: its set's recipe
    main()
    exit_if_failures()
