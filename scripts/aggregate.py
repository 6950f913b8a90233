"""Render every record under --results into tables (Markdown, CSV, LaTeX) and rank plots (PNG + PDF)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sora.errors import UserError  # noqa: E402
from sora.results import (  # noqa: E402
    load_records,
    plot_rank_heatmaps,
    plot_rank_over_training,
    plot_sparsify_curves,
)
from sora.results.allocation import write_allocation  # noqa: E402
from sora.results.evidence import write_evidence  # noqa: E402
from sora.results.frontier import write_frontier  # noqa: E402
from sora.results.scheduler_curve import write_scheduler_curve  # noqa: E402
from sora.results.tables import write_tables  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--results", default="results", help="folder holding records/ (searched recursively)")
    ap.add_argument("--out", default=None, help="where tables/ and plots/ go (default: --results)")
    ap.add_argument("--tasks", nargs="*", default=None)
    ap.add_argument("--seeds", nargs="*", type=int, default=None,
                    help="expected seeds (default: the seeds of the sweep that produced each run)")
    ap.add_argument("--pool-code", action="store_true",
                    help="pool runs made by different code commits / package versions into one row")
    args = ap.parse_args(argv)
    try:
        records = load_records(args.results, pool_code=args.pool_code)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out or args.results)
    for path, why in records.problems:
        print(f"not counted: {path}: {why}")
    if not len(records):
        print(f"no finished records under {args.results}")
        return 1
    paths = write_tables(records, out / "tables", tasks=args.tasks, expected_seeds=args.seeds)
    tasks = args.tasks or sorted(records.frame["task"].unique())
    for task in tasks:
        plot_rank_heatmaps(records, task, out / "plots")
        plot_rank_over_training(records, task, out / "plots")
        plot_sparsify_curves(records, task, out / "plots")
        write_frontier(records, task, out / "tables", out / "plots")
        write_evidence(records, task, out / "tables")
        write_allocation(records, task, out / "tables")  # only where SoRA runs have control arms
        write_scheduler_curve(records, task, out / "tables")  # only where sparsifying-scheduler runs exist
    print((out / "tables" / "table1.md").read_text())
    print(f"{len(records)} runs; tables: {out / 'tables'}; plots: {out / 'plots'}; written: {len(paths)} tables")
    return 0


if __name__ == "__main__":
    sys.exit(main())
