"""The allocation table: does SoRA allocate its budget better than the four controls of ``make controls``?

At each SoRA run's own budget, seed by seed (same task, data and recipe outside the ``method`` block, same seed):
(a) LoRA retrained from scratch on SoRA's kept pattern, (b) LoRA on a random pattern with SoRA's per-matrix-type
totals, (c) uniform LoRA at the rank nearest SoRA's mean kept rank (chosen per seed from that seed's SoRA run, so the
arm may mix ranks across seeds), (d) the gate with ξ = 0. For each SoRA configuration and arm: both means, and the
seed-paired difference SoRA − arm with its 95 % interval and minimum detectable difference
(``sora.results.evidence.paired_stats``), at the selected and at the final checkpoint, with each side's retained
parameters. Diverged runs are left out as everywhere; seeds without the arm are simply not paired.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from sora.rank_patterns import nearest_uniform_rank
from sora.records import current_identity
from sora.results.evidence import paired_stats, run_frame, verdict
from sora.results.load import Records

ARMS = {"a": "LoRA on SoRA's kept pattern", "b": "LoRA on a random pattern (same per-type totals)",
        "c": "uniform LoRA at the nearest rank", "d": "the gate with ξ = 0"}
COLUMNS = ["task", "sora", "arm", "arm_label", "checkpoint", "seeds", "sora_mean", "arm_mean", "sora_params",
           "arm_params", "n_pairs", "mean_diff", "ci_low", "ci_high", "mdd", "verdict"]


def _recipe(rec: dict) -> str:
    """Everything but the method block and the seed: runs of one recipe, task and data share it."""
    ident = current_identity(rec["identity"]) if rec.get("identity") else {}
    return json.dumps({k: v for k, v in ident.items() if k not in ("method", "seed")}, sort_keys=True, default=str)


def _arm(rec: dict, sora: dict) -> str | None:
    """Which control arm of the SoRA run ``sora`` the run ``rec`` is (None: not one of them)."""
    m, xi = rec["config"]["method"], sora["config"]["method"]["xi"]
    if rec["method"] == "lora" and m.get("rank_pattern_from") in ("sora", "random"):
        return ("a" if m["rank_pattern_from"] == "sora" else "b") if m.get("pattern_xi") == xi else None
    if rec["method"] == "lora":
        return "c" if m.get("r") == nearest_uniform_rank(sora) else None
    if rec["method"] == "sora" and m.get("xi") == 0 and m.get("r_max") == sora["config"]["method"]["r_max"]:
        return "d"
    return None


def arm_runs(records: Records, task: str) -> pd.DataFrame:
    """One row per (SoRA run, arm run): the SoRA run's label and seed, the arm, both runs' scores and params."""
    runs = run_frame(records, task).set_index("run_id")
    runs = runs[~runs["diverged"]]
    raw = {rid: records.raw[rid] for rid in runs.index}
    by_key: dict[tuple, list[str]] = {}
    for rid, rec in raw.items():
        by_key.setdefault((_recipe(rec), rec["seed"]), []).append(rid)
    rows = []
    for rid, rec in raw.items():
        if rec["method"] != "sora" or not rec["config"]["method"].get("xi") or rec.get("scheduler"):
            continue
        for other in by_key[(_recipe(rec), rec["seed"])]:
            arm = None if other == rid else _arm(raw[other], rec)
            if arm:
                s, a = runs.loc[rid], runs.loc[other]
                rows.append({"sora": s["label"], "seed": rec["seed"], "arm": arm, "arm_label": a["label"],
                             **{f"sora_{k}": s[k] for k in ("sel_score", "final_score", "sel_params", "final_params")},
                             **{f"arm_{k}": a[k] for k in ("sel_score", "final_score", "sel_params", "final_params")}})
    return pd.DataFrame(rows)


def allocation_frame(records: Records, task: str) -> pd.DataFrame:
    pairs = arm_runs(records, task)
    rows = []
    for (sora, arm), g in (pairs.groupby(["sora", "arm"], sort=True) if len(pairs) else []):
        labels = " / ".join(sorted(set(g["arm_label"])))
        for checkpoint, col, params in (("selected", "sel_score", "sel_params"), ("final", "final_score",
                                                                                "final_params")):
            d = (g[f"sora_{col}"] - g[f"arm_{col}"]).to_numpy(float)
            ok = ~np.isnan(d)
            s = paired_stats(d[ok])
            rows.append({"task": task, "sora": sora, "arm": arm, "arm_label": labels, "checkpoint": checkpoint,
                         "seeds": " ".join(map(str, sorted(g["seed"][ok]))), "sora_mean": g[f"sora_{col}"].mean(),
                         "arm_mean": g[f"arm_{col}"].mean(), "sora_params": g[f"sora_{params}"].mean(),
                         "arm_params": g[f"arm_{params}"].mean(), **{k: s[k] for k in ("n_pairs", "mean_diff",
                                                                                         "ci_low", "ci_high", "mdd")},
                         "verdict": verdict(s, "SoRA", "the arm")})
    return pd.DataFrame(rows, columns=COLUMNS)


PATTERN_COLUMNS = ["task", "sora", "contrast", "checkpoint", "seeds", "a_mean", "other_mean", "n_pairs", "mean_diff",
                   "ci_low", "ci_high", "mdd", "verdict"]


def pattern_frame(pairs: pd.DataFrame, task: str) -> pd.DataFrame:
    """The allocation claim itself, with SoRA's own training taken out: arm (a), LoRA on SoRA's kept pattern,
    against (b) a random pattern with the same per-type totals and (c) uniform LoRA at the nearest rank, each
    retrained the same way, paired on seed within one SoRA configuration. (a) > (b) is what "SoRA allocates its
    ranks better than chance" predicts."""
    rows = []
    for sora, g in (pairs.groupby("sora", sort=True) if len(pairs) else []):
        by_arm = {arm: h.set_index("seed") for arm, h in g.groupby("arm")}
        for other in ("b", "c"):
            if "a" not in by_arm or other not in by_arm:
                continue
            a, o = by_arm["a"], by_arm[other]
            seeds = sorted(set(a.index) & set(o.index))
            for checkpoint, col in (("selected", "arm_sel_score"), ("final", "arm_final_score")):
                d = (a.loc[seeds, col] - o.loc[seeds, col]).dropna()
                st = paired_stats(d.to_numpy())
                rows.append({"task": task, "sora": sora, "contrast": f"(a) − ({other})", "checkpoint": checkpoint,
                             "seeds": " ".join(map(str, d.index)), "a_mean": a.loc[d.index, col].mean(),
                             "other_mean": o.loc[d.index, col].mean(),
                             **{k: st[k] for k in ("n_pairs", "mean_diff", "ci_low", "ci_high", "mdd")},
                             "verdict": verdict(st, "SoRA's pattern", f"arm ({other})")})
    return pd.DataFrame(rows, columns=PATTERN_COLUMNS)


def render_allocation_markdown(frame: pd.DataFrame, task: str, patterns: pd.DataFrame | None = None) -> str:
    lines = [f"# {task}: SoRA against its allocation controls, at its own budget (x100, seed-paired)", "",
             "| SoRA | arm | checkpoint | seeds | SoRA | arm | params SoRA / arm | SoRA − arm [95 % CI] | MDD | "
             "verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in frame.itertuples():
        ci = "—" if r.ci_low != r.ci_low else f"{r.mean_diff:+.2f} [{r.ci_low:+.2f}, {r.ci_high:+.2f}]"
        mdd = "—" if r.mdd != r.mdd else f"{r.mdd:.2f}"
        lines.append(f"| {r.sora} | ({r.arm}) {ARMS[r.arm]}: {r.arm_label} | {r.checkpoint} | {r.seeds} | "
                     f"{r.sora_mean:.2f} | {r.arm_mean:.2f} | {r.sora_params:,.0f} / {r.arm_params:,.0f} | {ci} | "
                     f"{mdd} | {r.verdict.replace('|', chr(92) + '|')} |")
    lines += ["", "Arms: (a) plain LoRA retrained from scratch on the ranks SoRA kept; (b) plain LoRA on a random "
              "pattern with the same per-matrix-type totals (seeded); (c) uniform LoRA at the rank nearest SoRA's mean "
              "kept rank, per seed; (d) SoRA's gate with ξ = 0 (nothing pruned). Paired on the seeds both have; the "
              "interval is a t interval; MDD = the smallest true difference a paired t-test at α 0.05 detects with "
              "power 0.8 at this n and spread. 'unresolved': the interval holds 0."]
    if patterns is not None and len(patterns):
        lines += ["", "## The allocation itself: SoRA's kept pattern against a random and a uniform one, each trained "
                  "as plain LoRA", "", "| SoRA budget | contrast | checkpoint | seeds | (a) | other | "
                  "Δ [95 % CI] | MDD | verdict |", "|---|---|---|---|---|---|---|---|---|"]
        for r in patterns.itertuples():
            ci = "—" if r.ci_low != r.ci_low else f"{r.mean_diff:+.2f} [{r.ci_low:+.2f}, {r.ci_high:+.2f}]"
            mdd = "—" if r.mdd != r.mdd else f"{r.mdd:.2f}"
            lines.append(f"| {r.sora} | {r.contrast} | {r.checkpoint} | {r.seeds} | {r.a_mean:.2f} | "
                         f"{r.other_mean:.2f} | {ci} | {mdd} | {r.verdict.replace('|', chr(92) + '|')} |")
        lines += ["", "(a) − (b) > 0 is what 'SoRA allocates its ranks better than chance' predicts; (a) − (c) > 0, "
                  "better than spreading the same budget evenly. Parameters: (a) and (b) are equal by construction; "
                  "(c) is the nearest uniform rank (see the table above)."]
    return "\n".join(lines) + "\n"


def write_allocation(records: Records, task: str, tables_dir: str | Path) -> list[Path]:
    frame = allocation_frame(records, task)
    if frame.empty:
        return []
    patterns = pattern_frame(arm_runs(records, task), task)
    out = Path(tables_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv, md = out / f"allocation_{task}.csv", out / f"allocation_{task}.md"
    frame.to_csv(csv, index=False)
    written = [csv, md]
    if len(patterns):
        patterns.to_csv(out / f"allocation_patterns_{task}.csv", index=False)
        written.append(out / f"allocation_patterns_{task}.csv")
    md.write_text(render_allocation_markdown(frame, task, patterns))
    return written
