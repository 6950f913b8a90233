"""The evidence table: what each configuration's number rests on, and which differences three seeds can resolve.

A mean ± std per configuration flatters in three ways this table undoes:

- **Selection on the reported rows.** ``best_on_dev`` picks the checkpoint by the same dev rows it reports, so the
  number is the maximum over evaluations (optimistic); ``sora_split`` selects on rows disjoint from those reported
  ("held-out"). The table names which.
- **An early snapshot.** The selected checkpoint may come before the end of training (SoRA at a large ξ peaks after
  epoch 1 and then prunes every rank). The table gives the selected step beside the run's last stage-0 evaluation
  ("final": its metric and *its* retained parameters) and optimism = selected − final.
- **Unresolved differences.** For each pair of configurations, seed-paired differences (only the seeds both have):
  their mean, a 95 % t interval, and the minimum detectable difference of that design (see ``paired_stats``).

Diverged runs (``sora.results.tables.diverged``, judged on the selected score as elsewhere) are named and left out
of every mean and pair. A final metric that is undefined (constant predictions: Pearson NaN) is counted as the
task's constant-prediction score and named, never dropped. Sparsifying-scheduler runs are a different experiment
and are skipped. If ``records.frame`` carries ``gate_verdict``, the seeds flagged "indistinguishable from the null"
are counted per configuration.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import t as student_t

from sora.data.tasks import TASKS
from sora.results.load import Records
from sora.results.tables import _table_runs, null_count, per_run_scores

SELECTION_ROWS = {"sora_split": "held-out", "best_on_dev": "same rows (optimistic)"}
ALPHA, POWER = 0.05, 0.80
MDD_FORMULA = "MDD = (t_{1-α/2, n-1} + t_{power, n-1}) · sd_d / √n, α = 0.05, power = 0.8"


def _stage0(rec: dict) -> list[dict]:
    """Ordinary-training evaluations only (stage 0), in step order."""
    return sorted((e for e in rec.get("evals") or [] if (e.get("stage") or 0) == 0), key=lambda e: e["step"])


def final_point(rec: dict, task: str) -> dict:
    """The last stage-0 evaluation: its step, report-split metric x100 (NaN -> the constant-prediction score,
    flagged ``final_undefined``) and its own retained parameters (SoRA keeps pruning after the selected step)."""
    evals = _stage0(rec)
    if not evals:
        return {"end_step": np.nan, "final_score": np.nan, "final_params": np.nan, "final_undefined": False}
    last, spec = evals[-1], TASKS.get(task)
    split = spec.dev_splits[0] if spec else next(iter(last.get("report") or {"": {}}))
    metric = spec.main_metric if spec else rec["best"]["main_metric"]
    value = ((last.get("report") or {}).get(split) or {}).get(metric)
    undefined = value is None or value != value
    score = (spec.constant_score if spec else np.nan) if undefined else 100 * float(value)
    return {"end_step": last["step"], "final_score": score, "final_undefined": undefined,
            "final_params": np.nan if last.get("nonzero_params") is None else float(last["nonzero_params"])}


def run_frame(records: Records, task: str) -> pd.DataFrame:
    """One row per finished ordinary run of ``task``: selected score/params/step beside the final ones."""
    df = per_run_scores(records)
    df = df[df.task == task] if len(df) else df
    rows = []
    for r in df.to_dict("records"):
        rec = records.raw[r["run_id"]]
        row = {"run_id": r["run_id"], "label": r["label"], "method": r["method"], "seed": int(r["seed"]),
               "protocol": r.get("protocol"), "diverged": bool(r["diverged"]), "sel_score": r["score"],
               "sel_params": r.get("params.retained", np.nan), "sel_step": rec["best"]["step"],
               "total_steps": rec.get("total_steps"), **final_point(rec, task)}
        if "gate_verdict" in df.columns:
            row["gate_verdict"] = r["gate_verdict"]
        rows.append(row)
    cols = ["run_id", "label", "method", "seed", "protocol", "diverged", "sel_score", "sel_params", "sel_step",
            "total_steps", "end_step", "final_score", "final_params", "final_undefined"]
    cols += ["gate_verdict"] if "gate_verdict" in df.columns else []
    out = pd.DataFrame(rows, columns=cols)
    # a diverged run is named, never averaged: not in the selected mean, nor the final one
    out.loc[out["diverged"], "final_score"] = np.nan
    return out


def _mean_std(x: pd.Series) -> tuple[float, float]:
    x = x.dropna()
    return (x.mean() if len(x) else np.nan), (x.std(ddof=1) if len(x) > 1 else np.nan)


def _seeds(g: pd.DataFrame) -> str:
    return " ".join(map(str, sorted(g["seed"])))


def _selection_note(ok: pd.DataFrame) -> str:
    """'selected before the end in 3/3 seeds (step 180 of 540)' or 'at the end in 3/3 seeds'."""
    early = ok[ok["sel_step"] < ok["end_step"]]
    if not len(ok):
        return ""
    if not len(early):
        return f"at the end in {len(ok)}/{len(ok)} seeds"
    where = ", ".join(sorted({f"step {int(r.sel_step)} of {int(r.end_step)}" for r in early.itertuples()}))
    return f"selected before the end in {len(early)}/{len(ok)} seeds ({where})"


def _gate_cell(g: pd.DataFrame) -> str:
    """'null 3/3': seeds whose gates were judged indistinguishable from the null, of those with a verdict."""
    count = null_count(g)
    return f"null {count}" if count else ""


def _config_row(task: str, label: str, g: pd.DataFrame, failed: int) -> dict:
    ok = g[~g["diverged"]]
    sel, sel_std = _mean_std(ok["sel_score"])
    fin, fin_std = _mean_std(ok["final_score"])
    protocols = sorted({str(p) for p in g["protocol"]})
    row = {"task": task, "method": g["method"].iloc[0], "label": label, "seeds": _seeds(g), "n": len(ok),
           "failed": failed, "diverged": _seeds(g[g["diverged"]]), "protocol": " ".join(protocols),
           "selection_rows": " / ".join(SELECTION_ROWS.get(p, "unknown") for p in protocols),
           "selected": sel, "selected_std": sel_std, "selected_params": ok["sel_params"].mean(),
           "selected_steps": " ".join(map(str, sorted({int(s) for s in ok["sel_step"]}))),
           "selected_early": int((ok["sel_step"] < ok["end_step"]).sum()), "selection_note": _selection_note(ok),
           "final": fin, "final_std": fin_std, "final_params": ok["final_params"].mean(),
           "final_undefined": _seeds(ok[ok["final_undefined"]]),
           "optimism": (ok["sel_score"] - ok["final_score"]).mean()}
    if "gate_verdict" in g.columns:
        row["gate_null"] = _gate_cell(g)
    return row


def evidence_frame(records: Records, task: str, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per configuration (label) on ``task``: the selected checkpoint beside the final one."""
    runs = run_frame(records, task) if runs is None else runs
    failed = _table_runs(records.failed)
    rows = [_config_row(task, label, g, int(((failed.label == label) & (failed.task == task)).sum()))
            for label, g in runs.groupby("label", sort=True)]
    out = pd.DataFrame(rows)
    return out.sort_values(["method", "selected_params"]).reset_index(drop=True) if len(out) else out


def paired_stats(d) -> dict:
    """Seed-paired differences d -> mean, sd, n, 95 % t interval and the minimum detectable difference.

    MDD = (t_{1-α/2, n-1} + t_{0.8, n-1}) · sd_d / √n (α = 0.05): the smallest true difference a two-sided paired
    t-test detects with 80 % power at this n and spread (the usual central-t approximation). With n < 2 nothing
    is estimable (NaN); with sd 0 the interval is a point and MDD 0.
    """
    d = np.asarray(d, float)
    n = len(d)
    out = {"n_pairs": n, "mean_diff": d.mean() if n else np.nan, "sd_diff": np.nan, "ci_low": np.nan,
           "ci_high": np.nan, "mdd": np.nan}
    if n < 2:
        return out
    sd = d.std(ddof=1)
    se = sd / np.sqrt(n)
    t_crit, t_pow = student_t.ppf(1 - ALPHA / 2, n - 1), student_t.ppf(POWER, n - 1)
    out.update(sd_diff=sd, ci_low=out["mean_diff"] - t_crit * se, ci_high=out["mean_diff"] + t_crit * se,
               mdd=(t_crit + t_pow) * se)
    return out


def verdict(s: dict, a: str = "A", b: str = "B") -> str:
    """'unresolved' when the interval holds 0; the direction otherwise; and whether |mean| is under the MDD."""
    if s["n_pairs"] < 2 or s["ci_low"] != s["ci_low"]:
        return f"too few pairs (n={s['n_pairs']})"
    text = "unresolved" if s["ci_low"] <= 0 <= s["ci_high"] else f"{a if s['mean_diff'] > 0 else b} higher"
    return text + ("; |Δ| < MDD" if abs(s["mean_diff"]) < s["mdd"] else "")


def default_pairs(runs: pd.DataFrame, references: list[str] | None = None) -> list[tuple[str, str]]:
    """(reference, other) for every reference label against every other label; the references default to the
    SoRA configurations, compared with every non-SoRA one (as ``tables.significance`` does)."""
    order = runs.groupby("label").agg(method=("method", "first"), params=("sel_params", "mean"))
    labels = list(order.sort_values(["method", "params"]).index)  # the evidence table's row order
    if references is None:
        refs = [lab for lab in labels if order.loc[lab, "method"] == "sora"]
        return [(a, b) for a in refs for b in labels if order.loc[b, "method"] != "sora"]
    return [(a, b) for a in references for b in labels if b != a]


PAIR_COLUMNS = ["task", "a", "b", "checkpoint", "seeds", "n_pairs", "mean_diff", "sd_diff", "ci_low", "ci_high",
                "mdd", "verdict"]


def evidence_pairs(records: Records, task: str, pairs: list[tuple[str, str]] | None = None,
                   references: list[str] | None = None, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """a − b on seeds both have (diverged seeds out), at the selected and at the final checkpoint; ``pairs`` names
    them explicitly, else ``references`` against every other label, else SoRA vs the rest."""
    runs = run_frame(records, task) if runs is None else runs
    ok = runs[~runs["diverged"]]
    rows = []
    for a, b in pairs if pairs is not None else default_pairs(runs, references):
        x, y = (ok[ok.label == lab].set_index("seed") for lab in (a, b))
        seeds = sorted(set(x.index) & set(y.index))
        for checkpoint, col in (("selected", "sel_score"), ("final", "final_score")):
            d = (x.loc[seeds, col] - y.loc[seeds, col]).dropna()
            s = paired_stats(d.to_numpy())
            rows.append({"task": task, "a": a, "b": b, "checkpoint": checkpoint,
                         "seeds": " ".join(map(str, d.index)), **s, "verdict": verdict(s, "a", "b")})
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def _pm(mean: float, std: float, fmt: str = "{:.2f}") -> str:
    if mean != mean:
        return "—"
    return fmt.format(mean) + ("" if std != std else " ± " + fmt.format(std))


def _params(v: float) -> str:
    return "—" if v != v else f"{v:,.0f}"


def _rows_markdown(frame: pd.DataFrame, metric: str) -> list[str]:
    gate = "gate_null" in frame.columns
    head = (f"| configuration | seeds | selection rows | selected {metric} | selected params | selected step | "
            f"final {metric} | final params | optimism (sel − final) |" + (" gate verdict |" if gate else "")
            + " diverged seeds |")
    lines = [head, "|" + "---|" * (10 + gate)]
    for r in frame.to_dict("records"):
        final = _pm(r["final"], r["final_std"]) + (f" (undefined in seed {r['final_undefined']})"
                                                   if r["final_undefined"] else "")
        lines.append(f"| {r['label']} | {r['seeds']} | {r['selection_rows']} | "
                     f"{_pm(r['selected'], r['selected_std'])} | {_params(r['selected_params'])} | "
                     f"{r['selection_note'] or r['selected_steps']} | {final} | {_params(r['final_params'])} | "
                     f"{_pm(r['optimism'], np.nan, '{:+.2f}')} |" + (f" {r['gate_null']} |" if gate else "")
                     + f" {r['diverged']} |")
    return lines


def _pairs_markdown(pairs: pd.DataFrame) -> list[str]:
    lines = ["| a | b | n pairs | selected: a − b [95 % CI] | MDD | verdict | final: a − b [95 % CI] | MDD | "
             "verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for (a, b), g in pairs.groupby(["a", "b"], sort=False):
        cells = []
        for ck in ("selected", "final"):
            s = g[g.checkpoint == ck].iloc[0]
            ci = "—" if s.ci_low != s.ci_low else f"{s.mean_diff:+.2f} [{s.ci_low:+.2f}, {s.ci_high:+.2f}]"
            cells += [ci, "—" if s.mdd != s.mdd else f"{s.mdd:.2f}", s.verdict.replace("|", "\\|")]
        lines.append(f"| {a} | {b} | {g['n_pairs'].iloc[0]} | " + " | ".join(cells) + " |")
    return lines


LEGEND = (
    "**Legend.** *Selection rows*: \"held-out\" = the checkpoint was chosen on rows disjoint from the reported "
    "ones (eval.protocol=sora_split); \"same rows (optimistic)\" = chosen and reported on the same full dev rows "
    "(best_on_dev), so the selected number is a maximum over evaluations and flatters. *Selected* = the reported "
    "checkpoint, with its retained adapter parameters and step; \"selected before the end\" means that step is "
    "earlier than the run's last ordinary (stage-0) evaluation. *Final* = that last evaluation: its metric and its "
    "own retained parameters (SoRA keeps pruning after the selected step). *Optimism* = mean over seeds of selected "
    "− final. *Pairs*: a − b over the seeds both configurations have (diverged seeds excluded), mean and 95 % "
    "t interval mean ± t_{0.975, n-1} · sd_d / √n; \"unresolved\" = the interval contains 0. *MDD* (minimum "
    f"detectable difference) = the smallest true difference this design (n pairs, the observed sd_d) detects with a "
    f"two-sided paired t-test at α = 0.05 with 80 % power: {MDD_FORMULA}; \"|Δ| < MDD\" = the observed difference "
    "is smaller than what the design could reliably detect. Diverged runs (no better than a constant prediction + 1 "
    "point) are named and excluded from every mean; an undefined final metric counts as the constant-prediction "
    "score. Metric x100.")


def render_evidence_markdown(frame: pd.DataFrame, pairs: pd.DataFrame, task: str) -> str:
    metric = TASKS[task].main_metric if task in TASKS else "task metric"
    lines = [f"# {task}: evidence table ({metric} x100)", "", *_rows_markdown(frame, metric), "",
             f"## Paired comparisons ({metric} x100, seed-paired)", "", *_pairs_markdown(pairs), "", LEGEND]
    return "\n".join(lines) + "\n"


def write_evidence(records: Records, task: str, tables_dir: str | Path, pairs: list[tuple[str, str]] | None = None,
                   references: list[str] | None = None) -> list[Path]:
    """evidence_<task>.md (both tables + legend), evidence_<task>.csv (rows), evidence_pairs_<task>.csv."""
    runs = run_frame(records, task)
    if runs.empty:
        return []
    frame = evidence_frame(records, task, runs)
    pair_frame = evidence_pairs(records, task, pairs, references, runs)
    out = Path(tables_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"evidence_{task}.md", out / f"evidence_{task}.csv", out / f"evidence_pairs_{task}.csv"]
    paths[0].write_text(render_evidence_markdown(frame, pair_frame, task))
    frame.to_csv(paths[1], index=False)
    pair_frame.to_csv(paths[2], index=False)
    return paths
