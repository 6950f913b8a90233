"""Every record under a results folder as one DataFrame; unreadable or unfinished ones are listed, not dropped.

A table row is one configuration: runs are grouped by everything that changes their numbers (the record's
``identity``: resolved config minus the seed and launch-only keys, with the data fingerprint), plus the device
they ran on and, unless ``pool_code=True``, the code commit and package versions. A row's label is the method's
name plus every key whose value differs between rows of that method, so two configurations never share a cell.

Record schema (version 1, see docs/results.md "Result records"): run_id, status, task, method, model, seed, variant,
protocol, config, versions, git, evals[], best{step, rule, select, metrics{split: {metric: v}}, main_metric,
main}, ranks{module: int}, params{trainable, retained, retained_repo_formula, head, total_rank, max_rank},
wall_time_s, peak_memory_mb, schema_version, checksum.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sora.diagnostics.verdict import record_diagnostics
from sora.errors import UserError
from sora.records import CorruptRecord, current_identity, drop_launch_keys, read_record
from sora.tuners.methods import method_class
from sora.tuners.targets import matrix_type

PAPER_MODEL = "deberta_v3_base"


@dataclass
class Records:
    frame: pd.DataFrame  # one row per finished run
    raw: dict[str, dict]  # run_id -> record
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, why) for every record not counted
    failed: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["run_id", "task", "label", "seed"]))
    labels: dict[str, str] = field(default_factory=dict)  # run_id -> row label (failed runs too)

    def __len__(self) -> int:
        return len(self.frame)


def flat_identity(rec: dict, pool_code: bool = False) -> dict[str, object]:
    """The keys that make a run's configuration, flattened: identity (or the config of older records) minus the
    seed, plus the device that ran it and, unless ``pool_code``, the code commit and package versions."""
    ident = current_identity(rec["identity"]) if rec.get("identity") else _strip_launch_keys(rec.get("config") or {})
    flat = {k: v for k, v in _flatten(ident).items() if k != "seed"}
    runtime = rec.get("runtime") or {}
    for key in ("device", "device_name", "tf32"):
        if key in runtime:
            flat[f"runtime.{key}"] = runtime[key]
    if not pool_code:
        git = rec.get("git") or {}
        if git.get("commit"):
            flat["code.commit"] = git["commit"][:8] + ("+dirty" if git.get("dirty") else "")
        flat.update({f"versions.{k}": v for k, v in (rec.get("versions") or {}).items()})
    return flat


def _strip_launch_keys(config: dict) -> dict:
    """An older record's config, reduced as ``sora.records.identity`` reduces a config."""
    return drop_launch_keys(json.loads(json.dumps(config)), extra=("data.dir",))


def _flatten(d, prefix: str = "") -> dict:
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = json.dumps(v, sort_keys=True) if isinstance(v, (list, dict)) else v
    return out


def _config_key(flat: dict) -> str:
    return hashlib.sha1(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _row_labels(entries: list[dict]) -> dict[str, str]:
    """run_id -> label: the method label plus every key that differs between its configurations on a task."""
    by_base: dict[str, list[dict]] = {}
    for e in entries:
        by_base.setdefault(e["base"], []).append(e)
    labels = {}
    for base, group in by_base.items():
        differing: set[str] = set()
        for task in {e["task"] for e in group}:
            configs = {e["key"]: e["flat"] for e in group if e["task"] == task}
            if len(configs) > 1:
                keys = set().union(*configs.values())
                differing |= {k for k in keys if len({json.dumps(c.get(k), default=str) for c in configs.values()}) > 1}
        differing -= {"task.name", "data.fingerprint"}  # differ between tasks by nature
        for e in group:
            extra = ", ".join(f"{k}={_short(e['flat'].get(k))}" for k in sorted(differing))
            labels[e["run_id"]] = f"{base} [{extra}]" if extra else base
    return labels


def _short(v) -> str:
    return "—" if v is None else str(v)


def paper_key(rec: dict) -> str:
    """The row of results/paper/table1.csv this run is compared with (the method's own ``paper_key``)."""
    return method_class(rec["method"]).paper_key(rec["config"]["method"])


def method_label(rec: dict) -> str:
    """'SoRA (r_max=8, code)', 'LoRA (r=8)', 'AdaLoRA (12->8)': the rows of Table 1 (the method's own ``label``)."""
    return method_class(rec["method"]).label(rec["config"]["method"])


def load_records(results_dir: str | Path, pool_code: bool = False) -> Records:
    """Finished runs as rows (grouped into configurations), failed ones beside them, unreadable ones listed.
    Two finished runs of one configuration and seed are an error: a cell must never count a seed twice."""
    entries, raw, problems = [], {}, []
    for path in sorted(Path(results_dir).glob("**/records/*/record.json")):
        try:
            rec = read_record(path)
        except CorruptRecord as exc:
            problems.append((str(path), exc.why))
            continue
        if rec.get("status") != "finished":
            problems.append((str(path), f"status {rec.get('status')!r}: {rec.get('error') or 'not finished'}"))
        # the published numbers are DeBERTaV3-base: other backbones get their own rows and no paper column
        base = method_label(rec) + ("" if rec["model"] == PAPER_MODEL else f" · {rec['model']}")
        if rec.get("scheduler"):  # a different experiment: labelled among its own kind
            base += " · sparsify"
        flat = flat_identity(rec, pool_code)
        entries.append({"rec": rec, "path": str(path), "run_id": rec["run_id"], "task": rec["task"], "base": base,
                        "flat": flat, "key": _config_key(flat)})
    labels = _row_labels(entries)
    _refuse_duplicates([e for e in entries if e["rec"].get("status") == "finished"])
    rows, failed = [], []
    for e in entries:
        rec = e["rec"]
        if rec.get("status") != "finished":
            failed.append({"run_id": rec["run_id"], "task": rec["task"], "label": labels[rec["run_id"]],
                           "seed": rec["seed"], "status": rec.get("status"), "error": rec.get("error"),
                           "scheduler": (rec.get("scheduler") or {}).get("mode", "none")})
            continue
        raw[rec["run_id"]] = rec
        rows.append(_row(rec, labels[rec["run_id"]], e["key"]))
    failed_frame = pd.DataFrame(failed, columns=["run_id", "task", "label", "seed", "status", "error", "scheduler"])
    if not rows:
        empty = pd.DataFrame(columns=["run_id", "task", "method", "label", "seed", "main", "config_key"])
        return Records(empty, raw, problems, failed_frame, labels)
    return Records(pd.DataFrame(rows), raw, problems, failed_frame, labels)


def _row(rec: dict, label: str, key: str) -> dict:
    paper_model = rec["model"] == PAPER_MODEL
    sweep = rec.get("sweep") or {}
    row = {"run_id": rec["run_id"], "task": rec["task"], "method": rec["method"], "label": label, "config_key": key,
           "paper_key": paper_key(rec) if paper_model else None, "model": rec["model"], "seed": rec["seed"],
           "variant": rec.get("variant"), "protocol": rec.get("protocol"),
           "scheduler": (rec.get("scheduler") or {}).get("mode", "none"),
           "expected_seeds": " ".join(map(str, sweep["seeds"])) if sweep.get("seeds") else "",
           "main_metric": rec["best"]["main_metric"], "main": _num(rec["best"]["main"]),
           "best_step": rec["best"]["step"], "wall_time_s": rec["wall_time_s"],
           **{f"params.{k}": v for k, v in (rec["params"] or {}).items()}, **_gate_columns(rec)}
    for split, metrics in rec["best"]["metrics"].items():
        for name, value in metrics.items():
            row[f"{split}.{name}"] = _num(value)
    return row


def _gate_columns(rec: dict) -> dict:
    """SoRA's gate diagnostics (stored, or recomputed from the record for runs made before they existed):
    ``gate_verdict`` (data-dependent / indistinguishable from the null / no pruning) and ``gate_warning``."""
    try:
        diag = rec.get("gate_diagnostics") or record_diagnostics(rec)
    except (KeyError, TypeError):  # a record too old to say what its gates saw
        return {"gate_verdict": "unknown (record lacks the recipe)", "gate_warning": None}
    if diag is None:
        return {"gate_verdict": None, "gate_warning": None}
    return {"gate_verdict": diag["verdict"], "gate_warning": "; ".join(diag["warnings"]) or None}


def _refuse_duplicates(entries: list[dict]) -> None:
    seen: dict[tuple, str] = {}
    for e in entries:
        k = (e["task"], e["key"], e["rec"]["seed"])
        if k in seen:
            raise UserError(f"two finished runs of one configuration and seed ({e['task']}, seed {e['rec']['seed']}): "
                            f"{seen[k]} and {e['path']}; move one away (or aggregate their folders separately)")
        seen[k] = e["path"]


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
                rows.append({"run_id": rid, "task": rec["task"], "method": rec["method"], "label": records.labels[rid],
                             "seed": rec["seed"], "layer": where[0], "matrix": where[1], "rank": r})
    return pd.DataFrame(rows, columns=["run_id", "task", "method", "label", "seed", "layer", "matrix", "rank"])
