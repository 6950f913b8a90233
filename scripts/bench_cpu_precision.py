"""Does bf16 autocast on CPU keep the demo's metrics? The demo (SoRA, LoRA, AdaLoRA on real MiniLM weights and real
SST-2 rows) run twice through the real CLI, fp32 and bf16 autocast, same seed, same rows; per method the dev
accuracy, the ranks kept, the wall time and the fp32 / bf16 time ratio. This is the evidence behind bf16 being
the CPU default of the demo and of the step benchmarks. Writes results/bench/cpu_precision.{json,md}.

Both precisions run under the same conditions (interleaved per method when --interleave, else one after the
other); re-running skips finished runs, so an interrupted check resumes.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sora.results import load_records  # noqa: E402

PRECISIONS = ("fp32", "bf16")
METHODS = ("sora", "lora", "adalora")


def run_demo(workdir: Path, precision: str, method: str) -> None:
    """One demo run through the real CLI (scripts/train.py with the demo's config)."""
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "experiment=demo", f"method={method}",
           f"data.dir={ROOT / 'data' / 'glue_sample'}", f"train.precision={precision}",
           f"results_dir={workdir / precision}"]
    subprocess.run(cmd, check=True)


def collect(workdir: Path) -> list[dict]:
    rows = []
    for precision in PRECISIONS:
        records = load_records(workdir / precision)
        for r in records.frame.itertuples():
            rec = records.raw[r.run_id]
            rows.append(dict(precision=precision, method=r.method, run_id=r.run_id, accuracy=float(r.main),
                             kept_ranks=int(rec["params"]["total_rank"]), max_ranks=int(rec["params"]["max_rank"]),
                             wall_s=float(r.wall_time_s), threads=rec.get("runtime", {}).get("torch_threads")))
    return rows


def render(rows: list[dict]) -> str:
    by = {(r["method"], r["precision"]): r for r in rows}
    lines = ["| method | acc fp32 | acc bf16 | Δ (points) | ranks kept fp32 / bf16 | wall fp32 | wall bf16 "
             "| fp32 ÷ bf16 |", "|---|---|---|---|---|---|---|---|"]
    for m in METHODS:
        a, b = by.get((m, "fp32")), by.get((m, "bf16"))
        if not (a and b):
            continue
        lines.append(f"| {m} | {100 * a['accuracy']:.2f} | {100 * b['accuracy']:.2f} | "
                     f"{100 * (b['accuracy'] - a['accuracy']):+.2f} | {a['kept_ranks']} / {b['kept_ranks']} | "
                     f"{a['wall_s']:.0f} s | {b['wall_s']:.0f} s | {a['wall_s'] / b['wall_s']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=str(ROOT / "results" / "bench" / "cpu_precision_runs"))
    ap.add_argument("--out", default=str(ROOT / "results" / "bench"))
    ap.add_argument("--note", default="", help="conditions worth recording (e.g. 'CPU shared with a sweep')")
    args = ap.parse_args()
    workdir = Path(args.workdir)
    for method in METHODS:  # interleaved per method: drift in machine load hits both precisions alike
        for precision in PRECISIONS:
            run_demo(workdir, precision, method)
    rows = collect(workdir)
    out = Path(args.out)
    payload = dict(bench="cpu_precision", machine=platform.processor() or platform.machine(), note=args.note,
                   rows=rows)
    (out / "cpu_precision.json").write_text(json.dumps(payload, indent=2) + "\n")
    md = (f"# bf16 autocast vs fp32 on CPU: the demo (SST-2, all-MiniLM-L6-v2, 1 epoch, seed 0)\n\n"
          f"`python scripts/bench_cpu_precision.py` ({args.note or 'quiet machine'}; threads per run: "
          f"{sorted({r['threads'] for r in rows})})\n\n{render(rows)}\n")
    (out / "cpu_precision.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
