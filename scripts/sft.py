"""Instruction-tune a causal LM with SoRA, LoRA or AdaLoRA: python scripts/sft.py method=sora lm=tiny_llama ..."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from sora.cli import check_group_choices, exit_if_failures, run_cli  # noqa: E402
from sora.config import CONF_DIR as CONF  # noqa: E402  (also registers ${repo_root:})


@hydra.main(config_path=str(CONF), config_name="sft", version_base=None)
def main(cfg: DictConfig) -> None:
    from sora.sft.run import run_sft

    run_cli(run_sft, cfg)


if __name__ == "__main__":
    check_group_choices(sys.argv[1:], CONF)
    main()
    exit_if_failures()
