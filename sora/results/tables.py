"""The paper's Table 1 (ours beside the published numbers), significance over seeds, and the cost table."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import ttest_ind, ttest_rel, wilcoxon

from sora.data.tasks import TASKS
from sora.diagnostics.verdict import NULL
from sora.results.load import Records

TASK_ORDER = ["mnli", "sst2", "mrpc", "cola", "qnli", "qqp", "rte", "stsb"]
TASK_TITLES = {"mnli": "MNLI (m/mm)", "sst2": "SST-2", "mrpc": "MRPC", "cola": "CoLA", "qnli": "QNLI", "qqp": "QQP",
               "rte": "RTE", "stsb": "STS-B"}
PAPER_CSV = Path(__file__).resolve().parents[2] / "results" / "paper" / "table1.csv"


def _table_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Table 1 compares ordinary runs; sparsifying-scheduler runs are a different experiment (their own plot)."""
    return df[df["scheduler"] == "none"] if "scheduler" in df else df


DIVERGED_MARGIN = 1.0  # points x100 above the constant prediction's score


def diverged(task: str, score: float) -> bool:
    """A finished run no better than predicting a constant (within DIVERGED_MARGIN) learned nothing: it is shown
    as diverged, never averaged in."""
    t = TASKS.get(task)
    return t is not None and score == score and score <= t.constant_score + DIVERGED_MARGIN


def per_run_scores(records: Records) -> pd.DataFrame:
    """One row per run: label, paper_key, task, seed, score (x100, the papers' metric; NaN for a diverged run),
    raw_score, diverged, mm (MNLI mismatched)."""
    df = _table_runs(records.frame).copy()
    if df.empty:
        return pd.DataFrame(columns=["label", "paper_key", "task", "seed", "score", "raw_score", "diverged", "mm",
                                     "method"])
    df["raw_score"] = df["main"] * 100
    df["diverged"] = [diverged(t, s) for t, s in zip(df["task"], df["raw_score"])]
    df["score"] = df["raw_score"].where(~df["diverged"])
    mm_col = "validation_mismatched.accuracy"
    df["mm"] = df[mm_col] * 100 if mm_col in df else np.nan
    return df


def table1(records: Records, paper_csv: str | Path | None = PAPER_CSV, expected_seeds: list[int] | None = None,
           tasks: list[str] | None = None) -> pd.DataFrame:
    """Rows = configurations; per task: mean, std, n, failed, missing seeds, paper value, delta; plus average,
    params, time. Expected seeds: ``expected_seeds``, else the sweep that produced the runs, else every seed
    the row has on some task."""
    df = per_run_scores(records)
    failed = _table_runs(records.failed)
    paper = pd.read_csv(paper_csv).set_index("method") if paper_csv and Path(paper_csv).exists() else None
    tasks = [t for t in TASK_ORDER if tasks is None or t in tasks] + [t for t in (tasks or []) if t not in TASK_ORDER]
    rows = []
    for label, group in df.groupby("label", sort=True):
        key = group["paper_key"].iloc[0]
        sweep_seeds = {int(x) for s in group.get("expected_seeds", pd.Series(dtype=str)) for x in str(s).split()}
        seeds_all = sorted(set(expected_seeds or sweep_seeds or group["seed"]))
        row = {"method": label, "paper_key": key}
        means = []
        for task in tasks:
            g = group[group.task == task]
            bad = failed[(failed.label == label) & (failed.task == task)]
            vals = g["score"].dropna().to_numpy()
            row[f"{task}.mean"] = vals.mean() if len(vals) else np.nan
            row[f"{task}.std"] = vals.std(ddof=1) if len(vals) > 1 else np.nan
            row[f"{task}.n"] = len(vals)
            row[f"{task}.diverged"] = int(g["diverged"].sum())
            row[f"{task}.failed"] = len(bad) + int(g["score"].isna().sum()) - row[f"{task}.diverged"]
            present = set(g["seed"]) | set(bad["seed"])
            missing = sorted(set(seeds_all) - present) if present else []
            row[f"{task}.missing_seeds"] = " ".join(map(str, missing))
            row[f"{task}.gate_null"] = null_count(g)
            if task == "mnli":  # mismatched: this run's second dev set, or the release's separate mnli_mm runs
                mm = g["mm"].dropna().to_numpy()
                if not len(mm):
                    mm = group[group.task == "mnli_mm"]["score"].dropna().to_numpy()
                row["mnli.mm_mean"] = mm.mean() if len(mm) else np.nan
            pv = _paper_value(paper, key, task)
            row[f"{task}.paper"] = pv
            row[f"{task}.delta"] = row[f"{task}.mean"] - pv if pv == pv else np.nan
            if len(vals):
                means.append(row[f"{task}.mean"])
        row["avg"] = np.mean(means) if len(means) == len(tasks) else np.nan  # an average over a partial row misleads
        row["avg.paper"] = _paper_value(paper, key, "avg")
        row["params.retained"] = group["params.retained"].mean() if "params.retained" in group else np.nan
        row["wall_time_s"] = group["wall_time_s"].mean()
        rows.append(row)
    return pd.DataFrame(rows)


def null_count(g: pd.DataFrame) -> str:
    """"k/n": SoRA seeds whose pruning the gates' null model explains (``sora.diagnostics.verdict``); "" else."""
    if "gate_verdict" not in g or g["gate_verdict"].dropna().empty:
        return ""
    v = g["gate_verdict"].dropna()
    return f"{int((v == NULL).sum())}/{len(v)}"


def _paper_value(paper, key, col) -> float:
    if paper is None or key not in paper.index or col not in paper.columns:
        return np.nan
    v = paper.loc[key, col]
    return float(v) if pd.notna(v) and str(v).strip() != "" else np.nan


def significance(records: Records, reference: str = "sora") -> pd.DataFrame:
    """Each SoRA row vs each baseline row, per task. Seeds are paired across methods (same head init and data
    order), so when both rows have the same seeds: paired t-test and Wilcoxon signed-rank over those pairs;
    only where the seed sets differ, Welch's unpaired t-test. ``p`` is the test that applies."""
    df = per_run_scores(records)
    out = []
    for task, g in df.groupby("task"):
        labels = sorted(g["label"].unique())
        for ref in [lab for lab in labels if g[g.label == lab]["method"].iloc[0] == reference]:
            a = g[g.label == ref].set_index("seed")["score"].dropna()
            for other in [lab for lab in labels if g[g.label == lab]["method"].iloc[0] != reference]:
                b = g[g.label == other].set_index("seed")["score"].dropna()
                out.append({"task": task, "sora": ref, "baseline": other, **_compare(a, b)})
    return pd.DataFrame(out, columns=["task", "sora", "baseline", "sora_mean", "baseline_mean", "n_sora",
                                      "n_baseline", "diff", "test", "n_pairs", "p_paired_t", "p_wilcoxon",
                                      "p_welch", "p"])


def _compare(a: pd.Series, b: pd.Series) -> dict:
    out = {"sora_mean": a.mean() if len(a) else np.nan, "baseline_mean": b.mean() if len(b) else np.nan,
           "n_sora": len(a), "n_baseline": len(b), "diff": a.mean() - b.mean() if len(a) and len(b) else np.nan,
           "test": None, "n_pairs": 0, "p_paired_t": np.nan, "p_wilcoxon": np.nan, "p_welch": np.nan, "p": np.nan}
    if set(a.index) == set(b.index) and len(a) > 1:
        seeds = sorted(a.index)
        x, y = a[seeds].to_numpy(), b[seeds].to_numpy()
        out.update(test="paired", n_pairs=len(seeds))
        if np.any(x != y):
            with warnings.catch_warnings():  # constant differences: t is infinite, p 0 (scipy warns)
                warnings.simplefilter("ignore", RuntimeWarning)
                out["p_paired_t"] = float(ttest_rel(x, y).pvalue)
            out["p_wilcoxon"] = float(wilcoxon(x, y).pvalue)
        out["p"] = out["p_paired_t"]
    elif len(a) > 1 and len(b) > 1:
        out.update(test="welch", p_welch=float(ttest_ind(a, b, equal_var=False).pvalue))
        out["p"] = out["p_welch"]
    return out


def cost_table(records: Records) -> pd.DataFrame:
    """Retained parameters and wall-clock per method and task; SoRA's time as a fraction of AdaLoRA's."""
    df = _table_runs(records.frame)
    if df.empty:
        return pd.DataFrame()
    agg = df.groupby(["task", "label", "method"]).agg(
        runs=("seed", "count"), retained_params=("params.retained", "mean"),
        trainable_params=("params.trainable", "mean"), total_rank=("params.total_rank", "mean"),
        max_rank=("params.max_rank", "mean"), wall_time_s=("wall_time_s", "mean")).reset_index()
    agg["rank_kept_frac"] = agg["total_rank"] / agg["max_rank"]
    ada = agg[agg.method == "adalora"].groupby("task")["wall_time_s"].mean()
    agg["time_vs_adalora"] = [r.wall_time_s / ada[r.task] if r.task in ada.index else np.nan
                              for r in agg.itertuples()]
    return agg


def _cell(mean, std, n, missing, paper, delta, mm=None, p_marker="", failed=0, diverged=0, gate_null="") -> str:
    flagged = bool(gate_null) and not gate_null.startswith("0/")
    notes = ((f", {failed} failed" if failed else "") + (f", {diverged} diverged" if diverged else "")
             + (f", missing seed {missing}" if missing else "") + (f", pruning ≈ null {gate_null}" if flagged else ""))
    if n == 0 or mean != mean:
        ours = f"— ({notes.lstrip(', ')})" if notes else "—"
    else:
        ours = f"{mean:.2f}" + (f"/{mm:.2f}" if mm is not None and mm == mm else "")
        ours += f" ± {std:.2f}" if std == std else ""
        ours += f" (n={n}{notes}){p_marker}"
    if paper == paper:
        ours += f" · paper {paper:.2f}" + (f" · Δ {delta:+.2f}" if delta == delta else "")
    return ours


RECIPES = {
    "paper_table1": "each source's own recipe (SoRA: the release's; LoRA/AdaLoRA: the AdaLoRA scripts')",
    "controlled_table1": "one shared recipe per task for every method (conf/hparams/controlled)",
}


def recipe_line(records: Records) -> str:
    """Which experiment(s) the runs come from, and so which recipe each method trained under."""
    names = sorted({(r.get("sweep") or {}).get("experiment") or "single runs" for r in records.raw.values()})
    return "Recipe: " + "; ".join(f"{n} = {RECIPES[n]}" if n in RECIPES else n for n in names)


def render_table1_markdown(t1: pd.DataFrame, sig: pd.DataFrame | None = None, tasks: list[str] | None = None,
                           recipe: str | None = None) -> str:
    tasks = [t for t in TASK_ORDER if tasks is None or t in tasks]
    head = ["Method", *[TASK_TITLES.get(t, t) for t in tasks], "Avg", "#Params (retained)", "Time (s)"]
    lines = ([recipe, ""] if recipe else []) + ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in t1.to_dict("records"):
        cells = [r["method"]]
        for t in tasks:
            marker = ""
            if sig is not None and not sig.empty:
                s = sig[(sig.task == t) & (sig.sora == r["method"])]
                if len(s) and (s["p"] < 0.05).any():
                    marker = " *"
            cells.append(_cell(r[f"{t}.mean"], r[f"{t}.std"], r[f"{t}.n"], r[f"{t}.missing_seeds"],
                               r[f"{t}.paper"], r[f"{t}.delta"], r.get("mnli.mm_mean") if t == "mnli" else None,
                               marker, r.get(f"{t}.failed", 0), r.get(f"{t}.diverged", 0),
                               r.get(f"{t}.gate_null") or ""))
        cells.append(_cell(r["avg"], np.nan, 1, "", r["avg.paper"], r["avg"] - r["avg.paper"]).replace(" (n=1)", ""))
        cells.append(f"{r['params.retained'] / 1e6:.3f}M" if r["params.retained"] == r["params.retained"] else "—")
        cells.append(f"{r['wall_time_s']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Cells: mean ± std over seeds (n), x100, the papers' metric per task (MNLI m/mm acc, CoLA MCC, "
                 "STS-B Pearson, others acc); `paper` = results/paper/table1.csv, Δ = ours − paper; "
                 "`*` = SoRA differs from at least one baseline at p < 0.05 (paired t-test over shared seeds; "
                 "Welch's where the seed sets differ; see significance.csv with Wilcoxon); — = no finished run; "
                 "failed runs, diverged runs (no better than a constant prediction + 1 point) and missing seeds are "
                 "named in the cell, never averaged in. A row is one "
                 "configuration: [key=value] names what differs between rows of one method. `pruning ≈ null k/n`: "
                 "k of n SoRA seeds pruned as the gates' null model (no task gradient) predicts "
                 "(sora.diagnostics.verdict.RULE): their ranks were removed on a timetable, not by the data.")
    return "\n".join(lines) + "\n"


def write_tables(records: Records, out_dir: str | Path, tasks: list[str] | None = None,
                 expected_seeds: list[int] | None = None) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t1 = table1(records, expected_seeds=expected_seeds, tasks=tasks)
    sig = significance(records)
    cost = cost_table(records)
    paths = {"table1.md": out / "table1.md", "table1.csv": out / "table1.csv", "table1.tex": out / "table1.tex",
             "significance.csv": out / "significance.csv", "cost.csv": out / "cost.csv", "cost.md": out / "cost.md"}
    paths["table1.md"].write_text(render_table1_markdown(t1, sig, tasks, recipe_line(records)))
    t1.to_csv(paths["table1.csv"], index=False)
    cols = ["method"] + [c for c in t1.columns if c.endswith(".mean")] + ["avg", "params.retained"]
    paths["table1.tex"].write_text(t1[cols].to_latex(index=False, float_format="%.2f", na_rep="--")
                                   if not t1.empty else "% no finished runs\n")
    sig.to_csv(paths["significance.csv"], index=False)
    cost.to_csv(paths["cost.csv"], index=False)
    paths["cost.md"].write_text(cost.to_markdown(index=False, floatfmt=".3g") + "\n" if not cost.empty else "none\n")
    if records.problems:
        paths["problems.txt"] = out / "problems.txt"
        paths["problems.txt"].write_text("".join(f"{p}: {why}\n" for p, why in records.problems))
    return paths
