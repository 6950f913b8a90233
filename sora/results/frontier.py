"""Task metric against retained adapter parameters: is SoRA better than simply a smaller LoRA rank, or
AdaLoRA at the same budget? One point per configuration (mean ± std over seeds), Pareto-optimal points marked.

Diverged seeds (no better than a constant prediction, ``sora.results.tables.diverged``) are named in the
``diverged`` column and on the plot and left out of the mean; failed runs are counted in ``failed``.

x is the exact retained adapter parameter count of the reported checkpoint (Σ kept rank × (in + out), AdaLoRA's
kept singular values included); the head is reported beside it (``head_params``), not plotted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sora.data.tasks import TASKS
from sora.results.load import Records
from sora.results.tables import _table_runs, null_count, per_run_scores

COLUMNS = ["task", "method", "label", "params", "params_std", "head_params", "score", "score_std", "n", "failed",
           "diverged", "seeds", "commits", "gate_null", "gates_cannot_grow", "pareto", "dominated_by"]


def _dominators(p: np.ndarray, s: np.ndarray, i: int) -> np.ndarray:
    """Indices of the scored points with at most point i's parameters and at least its score, one strictly."""
    return np.flatnonzero(np.isfinite(s) & (p <= p[i]) & (s >= s[i]) & ((p < p[i]) | (s > s[i])))


def pareto_mask(params, scores) -> list[bool]:
    """True where no other point has at most as many parameters and at least the score, one of them strictly."""
    p, s = np.asarray(params, float), np.asarray(scores, float)
    return [bool(np.isfinite(s[i])) and not len(_dominators(p, s, i)) for i in range(len(p))]


def dominated_by(params, scores, labels) -> list[str]:
    """For each point, the cheapest point that dominates it ("" for a Pareto-optimal or unscored one): the
    reader's question is not only "is SoRA on the front" but "which simpler choice beats it, at what size"."""
    p, s, labels = np.asarray(params, float), np.asarray(scores, float), list(labels)
    out = []
    for i in range(len(p)):
        dom = _dominators(p, s, i) if np.isfinite(s[i]) else []
        # fewest params; among equals the best score
        out.append(str(labels[min(dom, key=lambda k: (p[k], -s[k]))]) if len(dom) else "")
    return out


def _commits(records: Records, run_ids) -> str:
    """The code commits a point's runs were made by: a sweep spanning sessions pools them (aggregate
    --pool-code), and the CSV says which were pooled."""
    return " ".join(sorted({(records.raw[r].get("git") or {}).get("commit", "?")[:8] for r in run_ids}))


def _gate_flags(g: pd.DataFrame) -> dict:
    """SoRA points: how many seeds' pruning the null model (no task gradient) explains, e.g. "3/3" (see
    ``sora.diagnostics.verdict.RULE``), and whether the recipe left the gates no room to grow."""
    return {"gate_null": null_count(g),
            "gates_cannot_grow": bool("gate_warning" in g and g["gate_warning"].notna().any())}


def null_dominated(gate_null: str) -> bool:
    """A point whose pruning is indistinguishable from the null in most of its seeds."""
    if not gate_null:
        return False
    k, n = map(int, gate_null.split("/"))
    return n > 0 and 2 * k > n


def frontier_frame(records: Records, task: str) -> pd.DataFrame:
    df = per_run_scores(records)
    df = df[df.task == task] if len(df) else df
    failed = _table_runs(records.failed)
    rows = []
    for label, g in df.groupby("label", sort=True):
        ok = g.dropna(subset=["score"])
        rows.append({"task": task, "method": g["method"].iloc[0], "label": label,
                     "params": ok["params.retained"].mean() if len(ok) else np.nan,
                     "params_std": ok["params.retained"].std(ddof=1) if len(ok) > 1 else 0.0,
                     "head_params": g["params.head"].mean() if "params.head" in g else np.nan,
                     "score": ok["score"].mean() if len(ok) else np.nan,
                     "score_std": ok["score"].std(ddof=1) if len(ok) > 1 else np.nan, "n": len(ok),
                     "failed": int(((failed.label == label) & (failed.task == task)).sum()) + len(g) - len(ok)
                     - int(g["diverged"].sum()),
                     "diverged": " ".join(map(str, sorted(g[g["diverged"]]["seed"]))),
                     "seeds": " ".join(map(str, sorted(g["seed"]))), "commits": _commits(records, g["run_id"]),
                     **_gate_flags(g)})
    out = pd.DataFrame(rows, columns=COLUMNS[:-2])
    out["pareto"] = pareto_mask(out["params"], out["score"]) if len(out) else []
    out["dominated_by"] = dominated_by(out["params"], out["score"], out["label"]) if len(out) else []
    return out.sort_values(["method", "params"]).reset_index(drop=True)


def metric_name(task: str) -> str:
    """The task's own metric (STS-B Pearson, CoLA MCC), for the table header and the plot's axis alike."""
    return TASKS[task].main_metric if task in TASKS else "task metric"


def plot_frontier(frame: pd.DataFrame, task: str, out_dir: str | Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sora.results.plots import _save
    from sora.tuners.methods import method_class

    if frame.empty or not frame["score"].notna().any():  # every run diverged: no point to place (the table says so)
        return []
    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    positive = frame["params"][frame["params"] > 0]
    zero_x = positive.min() / 4 if len(positive) else 1.0  # a log axis has no 0: such points sit left of all others
    for method, g in frame.groupby("method"):
        g = g.dropna(subset=["score"]).sort_values("params")
        color = method_class(method).color
        x = g["params"].where(g["params"] > 0, zero_x)
        ax.errorbar(x, g["score"], yerr=g["score_std"].fillna(0), xerr=g["params_std"].fillna(0),
                    fmt="-o", ms=4, capsize=3, color=color, label=method)
        for r in g[g["params"] <= 0].itertuples():  # every rank pruned: only the head learned
            ax.annotate("0 ranks kept (head only)", (zero_x, r.score), fontsize=7, textcoords="offset points",
                        xytext=(4, 6), color=color)
        for r in g[g["diverged"] != ""].itertuples():  # diverged seeds are left out of the mean, and said so
            ax.annotate(f"seed {r.diverged} diverged", (x[r.Index], r.score), fontsize=7,
                        textcoords="offset points", xytext=(4, -10), color=color)
        null = g[g["gate_null"].map(null_dominated)] if "gate_null" in g else g.iloc[:0]
        ax.scatter(x[null.index], null["score"], s=60, marker="x", color="black", zorder=6)
        star = g[g["pareto"]]
        ax.scatter(x[star.index], star["score"], s=160, facecolors="none", edgecolors="black", zorder=5)
    ax.scatter([], [], s=160, facecolors="none", edgecolors="black", label="Pareto-optimal")
    ax.scatter([], [], s=60, marker="x", color="black", label="pruning ≈ gate null model (no data)")
    ax.set_xscale("log")
    ax.set_xlabel("retained adapter parameters (log scale; head excluded)")
    metric = metric_name(task)
    ax.set_ylabel(f"{metric} x100 (mean ± std over seeds)")
    ax.set_title(f"{task}: {metric} vs retained adapter parameters")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, Path(out_dir), f"frontier_{task}")


def write_frontier(records: Records, task: str, tables_dir: str | Path, plots_dir: str | Path) -> list[Path]:
    frame = frontier_frame(records, task)
    if frame.empty:
        return []
    Path(tables_dir).mkdir(parents=True, exist_ok=True)
    csv = Path(tables_dir) / f"frontier_{task}.csv"
    frame.to_csv(csv, index=False)
    md = Path(tables_dir) / f"frontier_{task}.md"
    md.write_text(render_frontier_markdown(frame, task))
    return [csv, md, *plot_frontier(frame, task, plots_dir)]


def render_frontier_markdown(frame: pd.DataFrame, task: str) -> str:
    """The CSV as a table a README can quote: one row per configuration, by method and parameters."""
    metric = metric_name(task)
    lines = [f"# {task}: {metric} x100 vs retained adapter parameters", "",
             f"| configuration | seeds | {metric} (mean ± std) | retained params | Pareto | dominated by | failed "
             "| diverged seeds | pruning ≈ null (seeds) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in frame.itertuples():
        score = "—" if r.score != r.score else f"{r.score:.2f}" + (f" ± {r.score_std:.2f}" if r.n > 1 else "")
        params = "—" if r.params != r.params else f"{r.params:,.0f}" + (f" ± {r.params_std:,.0f}" if r.params_std
                                                                        else "")
        null = (f"**{r.gate_null}**" if null_dominated(r.gate_null) else r.gate_null) + (
            " (gates cannot grow)" if r.gates_cannot_grow else "")
        lines.append(f"| {r.label} | {r.seeds} | {score} | {params} | {'yes' if r.pareto else ''} | "
                     f"{r.dominated_by} | {r.failed or ''} | {r.diverged} | {null} |")
    lines += ["", "Diverged seeds (no better than a constant prediction + 1 point) and failed runs are not in the "
              "mean. The head (classifier + pooler) is trained by every method and not counted.", "",
              "`pruning ≈ null`: seeds whose kept ranks the gates' null model (same init, lr schedule, optimizer, L1 "
              "term and prox, no task gradient) predicts, by the rule in `sora.diagnostics.verdict.RULE`; in bold "
              "when most seeds are: such a point measures SoRA's schedule, not an allocation learned from data. "
              "\"gates cannot grow\": ξ ≥ the peak gate lr."]
    return "\n".join(lines) + "\n"
