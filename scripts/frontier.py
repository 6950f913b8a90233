"""Accuracy vs retained parameters for every registered method: one Hydra multirun per method over its budget.

    python scripts/frontier.py experiment=frontier_minilm task=mrpc --budget sora=method.xi=1e-5,1e-4
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sora.cli import run_cli  # noqa: E402
from sora.sweep_plan import frontier_sweeps, parse_budgets  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", action="append", default=[], metavar="NAME=OVERRIDES",
                        help="a method's budget sweep instead of its own frontier_budget (empty: skip it)")
    args, overrides = parser.parse_known_args(argv)
    sweeps = run_cli(lambda _: frontier_sweeps(overrides, parse_budgets(args.budget)), None)
    for sweep in sweeps:
        cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "-m", *sweep]
        print("+", " ".join(cmd[1:]), flush=True)
        if (rc := subprocess.call(cmd)) != 0:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
