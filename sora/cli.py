"""Entry-point plumbing: bad input becomes one line naming the fix, exit code 2, no library traceback."""

from __future__ import annotations

import sys
from pathlib import Path

from sora.errors import UserError

GROUPS = ("task", "method", "model", "experiment", "logger", "hparams_set", "scheduler")


def check_group_choices(argv: list[str], conf_dir: Path) -> None:
    """Reject unknown ``task=``/``method=``/``model=``/... values before Hydra composes (its error is long)."""
    for arg in argv:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+~")
        if not sep or key not in GROUPS:
            continue
        valid = sorted(p.stem for p in (conf_dir / key).glob("*.yaml"))
        for choice in value.split(","):  # multirun lists
            if choice and choice != "null" and choice not in valid:
                _die(f"unknown {key} {choice!r}; valid: {', '.join(valid)}")


def run_cli(fn, cfg):
    try:
        return fn(cfg)
    except UserError as exc:
        _die(str(exc))


def _die(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)
