"""Allocation controls at a SoRA run's budget, in order: SoRA, (d) xi = 0, (a) LoRA on SoRA's pattern, (b) LoRA on a
random pattern with its per-type totals, (c) uniform LoRA at the nearest rank (per seed, from its SoRA record).

python scripts/controls.py --experiment frontier_minilm --task mrpc --xi 4e-3 --seeds 0,1,2 [overrides...]
Finished runs are skipped by the harness. --dry-run prints the first four sweeps without running anything (the
uniform ranks need the SoRA records); --print-results-dir prints the experiment's results folder and exits.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sora import controls  # noqa: E402
from sora.errors import UserError  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", required=True, help="a Hydra experiment, e.g. frontier_minilm")
    ap.add_argument("--task", required=True)
    ap.add_argument("--xi", required=True, help="the SoRA xi whose retained budget is tested")
    ap.add_argument("--seeds", default="0,1,2", help="comma list (default 0,1,2)")
    ap.add_argument("--dry-run", action="store_true", help="print the sweeps, run nothing")
    ap.add_argument("--print-results-dir", action="store_true", help="print the results folder and exit")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run (single values)")
    args = ap.parse_args(argv)
    try:
        if args.print_results_dir:
            print(controls.results_dir(args.experiment, args.task, args.overrides))
            return 0
        controls.parse_xi(args.xi)
        seeds = controls.parse_seeds(args.seeds)
        for overrides in controls.first_arms(args.experiment, args.task, args.xi, seeds, args.overrides):
            if rc := _train(overrides, args.dry_run):
                return rc
        if args.dry_run:
            print("# (c) uniform LoRA: method=lora method.r=<nearest rank per seed>, once the SoRA runs are finished")
            return 0
        ranks = controls.uniform_ranks(args.experiment, args.task, args.xi, seeds, args.overrides)
        print("nearest uniform rank per seed: " + ", ".join(f"seed {s}: r={k}" for s, k in ranks.items()), flush=True)
        for overrides in controls.uniform_arms(args.experiment, args.task, ranks, args.overrides):
            if rc := _train(overrides, False):
                return rc
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _train(overrides: list[str], dry_run: bool) -> int:
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "-m", *overrides]
    print("+ " + shlex.join(cmd), flush=True)
    return 0 if dry_run else subprocess.run(cmd).returncode


if __name__ == "__main__":
    sys.exit(main())
