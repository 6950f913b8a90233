"""Every record under a results folder as one DataFrame; unreadable or unfinished ones are listed, not dropped.

Record schema (version 1, see README "Result records"): run_id, status, task, method, model, seed, variant,
protocol, config, versions, git, evals[], best{step, rule, select, metrics{split: {metric: v}}, main_metric,
main}, ranks{module: int}, params{trainable, retained, retained_repo_formula, head, total_rank, max_rank},
wall_time_s, peak_memory_mb, schema_version, checksum.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sora.records import CorruptRecord, read_record
from sora.tuners.targets import matrix_type

PAPER_MODEL = "deberta_v3_base"


@dataclass
class Records:
    frame: pd.DataFrame  # one row per finished run
    raw: dict[str, dict]  # run_id -> record
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, why) for every record not counted

    def __len__(self) -> int:
        return len(self.frame)


def paper_key(rec: dict) -> str:
    """The row of results/paper/table1.csv this run is compared with."""
    m = rec["config"]["method"]
    if rec["method"] == "sora":
        return f"SoRA r_max={m['r_max']}"
    if rec["method"] == "lora":
        return f"LoRA r={m['r']}"
    return "AdaLoRA"


def method_label(rec: dict) -> str:
    """'SoRA (r_max=8, code)', 'LoRA (r=8)', 'AdaLoRA (12->8)': the rows of Table 1."""
    m = rec["config"]["method"]
    if rec["method"] == "sora":
        return f"SoRA (r_max={m['r_max']}, {m['variant']})"
    if rec["method"] == "lora":
        return f"LoRA (r={m['r']}{', qv' if m.get('targets') == 'qv' else ''})"
    return f"AdaLoRA ({m['init_r']}->{m['target_r']})"


def load_records(results_dir: str | Path) -> Records:
    rows, raw, problems = [], {}, []
    for path in sorted(Path(results_dir).glob("**/records/*/record.json")):
        try:
            rec = read_record(path)
        except CorruptRecord as exc:
            problems.append((str(path), exc.why))
            continue
        if rec.get("status") != "finished":
            problems.append((str(path), f"status {rec.get('status')!r}: {rec.get('error') or 'not finished'}"))
            continue
        raw[rec["run_id"]] = rec
        # the published numbers are DeBERTaV3-base: other backbones get their own rows and no paper column
        paper_model = rec["model"] == PAPER_MODEL
        label = method_label(rec) + ("" if paper_model else f" · {rec['model']}")
        row = {"run_id": rec["run_id"], "task": rec["task"], "method": rec["method"], "label": label,
               "paper_key": paper_key(rec) if paper_model else None, "model": rec["model"], "seed": rec["seed"],
               "variant": rec.get("variant"),
               "protocol": rec.get("protocol"), "scheduler": (rec.get("scheduler") or {}).get("mode", "none"),
               "main_metric": rec["best"]["main_metric"],
               "main": _num(rec["best"]["main"]), "best_step": rec["best"]["step"],
               "wall_time_s": rec["wall_time_s"], **{f"params.{k}": v for k, v in (rec["params"] or {}).items()}}
        for split, metrics in rec["best"]["metrics"].items():
            for name, value in metrics.items():
                row[f"{split}.{name}"] = _num(value)
        rows.append(row)
    if not rows:
        return Records(pd.DataFrame(columns=["run_id", "task", "method", "label", "seed", "main"]), raw, problems)
    return Records(pd.DataFrame(rows), raw, problems)


def _num(v):
    return np.nan if v is None else float(v)


def curve_frame(records: Records) -> pd.DataFrame:
    """The sparsifying scheduler's curves, long format: one row per (run, evaluation)."""
    rows = []
    for rid, rec in records.raw.items():
        for p in rec.get("curve") or []:
            rows.append({"run_id": rid, "task": rec["task"], "seed": rec["seed"], "mode": rec["scheduler"]["mode"],
                         **{k: p.get(k) for k in ("stage", "step", "xi", "lr", "nonzero_params", "total_rank",
                                                  "memorization", "generalization")}})
    cols = ["run_id", "task", "seed", "mode", "stage", "step", "xi", "lr", "nonzero_params", "total_rank",
            "memorization", "generalization"]
    return pd.DataFrame(rows, columns=cols).astype({"memorization": float, "generalization": float})


def rank_frame(records: Records) -> pd.DataFrame:
    """Long format: run_id, task, method, label, seed, layer, matrix (Q K V AO I O), rank."""
    rows = []
    for rid, rec in records.raw.items():
        for module, r in (rec.get("ranks") or {}).items():
            where = matrix_type(module)
            if where:
                rows.append({"run_id": rid, "task": rec["task"], "method": rec["method"], "label": method_label(rec),
                             "seed": rec["seed"], "layer": where[0], "matrix": where[1], "rank": r})
    return pd.DataFrame(rows, columns=["run_id", "task", "method", "label", "seed", "layer", "matrix", "rank"])
