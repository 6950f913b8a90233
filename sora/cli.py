"""Entry-point plumbing: bad input becomes one line naming the fix, exit code 2, no library traceback.

In a local multirun one failing run (a bad override for one task, a diverging seed) must not take the rest
of the sweep down: the error is printed, the run's record says ``failed`` where it got that far, the sweep
goes on, and the process exits non-zero at the end with a summary.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sora.errors import UserError

GROUPS = ("task", "method", "model", "experiment", "logger", "hparams_set", "scheduler", "lm")
FAILURES: list[str] = []


def check_group_choices(argv: list[str], conf_dir: Path) -> None:
    """Reject unknown ``task=``/``method=``/``model=``/... values before Hydra composes (its error is long)."""
    for arg in argv:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+~")
        if not sep or key not in GROUPS:
            continue
        from sora.config import group_choices

        valid = group_choices(key, conf_dir)
        for choice in value.split(","):  # multirun lists
            if choice and choice != "null" and choice not in valid:
                _die(f"unknown {key} {choice!r}; valid: {', '.join(valid)}")


def _in_local_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        return hc.mode == RunMode.MULTIRUN and "basic" in str(hc.runtime.choices.get("hydra/launcher", ""))
    except Exception:  # not under Hydra's CLI
        return False


def run_cli(fn, cfg):
    try:
        return fn(cfg)
    except UserError as exc:
        if _in_local_multirun():
            FAILURES.append(str(exc))
            print(f"error: {exc}", file=sys.stderr)
            return None
        _die(str(exc))


def exit_if_failures() -> None:
    if FAILURES:
        print(f"error: {len(FAILURES)} run(s) of this sweep failed (see the lines above)", file=sys.stderr)
        sys.exit(1)


def _die(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)
