"""Where a sweep stands, from its results folder alone: python scripts/status.py results [--rerun-failed]"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sora.status import rerun_commands, sweep_status  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("results", nargs="?", default="results", help="a results_dir (holds records/ and hydra/sweeps/)")
    ap.add_argument("--rerun-failed", action="store_true",
                    help="print the multirun command(s) that rerun exactly the failed / missing configs")
    args = ap.parse_args(argv)
    if not Path(args.results).is_dir():
        print(f"error: {args.results!r} is not a folder; pass the sweep's results_dir", file=sys.stderr)
        return 2
    statuses = sweep_status(args.results)
    order = {"running": 0, "interrupted": 1, "started": 2, "failed": 3, "missing": 4, "finished": 5}
    for s in sorted(statuses, key=lambda s: (order.get(s.state, 9), s.run_id)):
        job = f"  [slurm {s.slurm}]" if s.slurm else ""
        print(f"{s.state:<12} {s.run_id:<48} {s.detail}{job}")
    counts = Counter(s.state for s in statuses)
    print(f"\n{len(statuses)} runs: " + ", ".join(f"{counts[k]} {k}" for k in order if counts[k]))
    if args.rerun_failed:
        cmds = rerun_commands(statuses)
        none = ("nothing to rerun (failed/missing runs need a recorded sweep)" if counts["failed"] + counts["missing"]
                + counts["started"] else "nothing failed or missing")
        print("\n" + ("\n".join(cmds) if cmds else none))
        stopped = [replace(s, state="failed") for s in statuses if s.state == "interrupted"]
        if stopped:  # a requeued Slurm task resumes them by itself; a cancelled one never comes back
            print(f"\n{len(stopped)} interrupted: resumed by their requeued Slurm task if any, else by re-running:")
            print("\n".join(f"  {cmd}" for cmd in rerun_commands(stopped)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
