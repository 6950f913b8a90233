"""The embedded main job: SoRA vs LoRA vs AdaLoRA on real MiniLM weights and real SST-2 rows, offline, on CPU.

Runs three ordinary runs through the normal training path (experiment=demo), then prints the small table and
writes the rank heatmap. Re-running it skips finished runs and resumes interrupted ones.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from sora.cli import run_cli  # noqa: E402
from sora.config import load_config  # noqa: E402
from sora.results import load_records, plot_rank_heatmaps  # noqa: E402
from sora.train.loop import train  # noqa: E402

METHODS = ("sora", "lora", "adalora")


def main(argv: list[str]) -> None:
    t0 = time.time()
    overrides = [f"data.dir={ROOT / 'data' / 'glue_sample'}", *argv]
    cfg = None
    for method in METHODS:
        cfg = load_config(["experiment=demo", f"method={method}", *overrides])
        print(f"\n=== {method} on {cfg.task.name} / {cfg.model.name} ===", flush=True)
        run_cli(train, cfg)
    results = Path(cfg.results_dir)
    records = load_records(results)
    df = records.frame[records.frame.task == cfg.task.name].sort_values("method")
    print(f"\nSST-2 dev accuracy, all-MiniLM-L6-v2, 1 epoch on 8,000 real training rows ({time.time() - t0:.0f} s)")
    print(f"{'method':32s} {'acc':>6s} {'retained params':>16s} {'ranks kept':>12s} {'time':>7s}")
    for r in df.itertuples():
        rec = records.raw[r.run_id]
        kept, cap = rec["params"]["total_rank"], rec["params"]["max_rank"]
        print(f"{r.label:32s} {100 * r.main:6.2f} {int(rec['params']['retained']):16,d} "
              f"{kept:>5d}/{cap:<6d} {r.wall_time_s:6.0f}s")
    paths = plot_rank_heatmaps(records, cfg.task.name, results / "plots")
    if paths:
        print(f"\nrank heatmap: {paths[0]}")
    print(f"records: {results / 'records'}")


if __name__ == "__main__":
    main(sys.argv[1:])
