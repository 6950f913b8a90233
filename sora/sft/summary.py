"""One row per finished SFT run: what a user reads after ``make sft-demo`` (or a sweep of scripts/sft.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sora.records import CorruptRecord, read_record


def sft_table(results_dir: str | Path) -> pd.DataFrame:
    """Eval loss / perplexity before and after, kept rank and adapter size per run; unreadable records listed
    as such, never dropped silently."""
    rows = []
    for path in sorted(Path(results_dir).expanduser().glob("records/*/record.json")):
        try:
            r = read_record(path)
        except CorruptRecord as exc:
            rows.append({"run": path.parent.name, "status": f"unreadable: {exc.why}"})
            continue
        if r.get("kind") != "sft":
            continue
        rows.append({"run": r["run_id"], "status": r["status"], "method": r["method"], "model": r["model"],
                     "seed": r["seed"], "steps": r["steps"], "eval loss before": r["eval_before"]["loss"],
                     "eval loss": r["eval"]["loss"], "perplexity": r["eval"]["perplexity"],
                     "total rank": r["total_rank"], "adapter params": r["params"]["retained_adapter"],
                     "wall (s)": r["runtime"]["wall_s"]})
    return pd.DataFrame(rows)
