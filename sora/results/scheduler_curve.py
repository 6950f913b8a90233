"""The sparsifying scheduler's curve (Algorithm 1) beside the uniform-LoRA rank curve of the same recipe.

Each stage's last evaluation is a pruned model at the end of its training (no checkpoint is selected, so the
number is not optimistic): its ξ, non-zero parameters, kept ranks, the report split's metric (held-out rows under
``sora_split``) and the memorization rows' metric. Beside it, the largest uniform LoRA rank whose parameters fit
the stage's mean budget (or the smallest rank, with more parameters, when none fits), at its final checkpoint, and
the seed-paired difference stage − LoRA with its 95 % t interval and minimum detectable difference
(``sora.results.evidence.paired_stats``): does pruning a trained r_max adapter in stages beat training a smaller
rank?
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sora.data.tasks import TASKS
from sora.results.evidence import paired_stats, run_frame, verdict
from sora.results.load import Records

COLUMNS = ["stage", "xi", "seeds", "nonzero_params", "total_rank", "dev", "dev_std", "train", "lora", "lora_params",
           "lora_final", "n_pairs", "mean_diff", "ci_low", "ci_high", "mdd", "verdict"]


def stage_ends(records: Records, task: str) -> pd.DataFrame:
    """One row per (scheduler run, stage): the stage's last curve point, metrics x100."""
    rows = []
    for rec in records.raw.values():
        if rec["task"] != task or not rec.get("curve"):
            continue
        last = {}
        for p in rec["curve"]:
            last[p["stage"]] = p  # the curve is in step order: the last point of a stage wins
        rows += [{"seed": int(rec["seed"]), "stage": s, "xi": p["xi"], "nonzero_params": p["nonzero_params"],
                  "total_rank": p["total_rank"], "dev": 100 * p["dev"], "train": 100 * p["train"]}
                 for s, p in sorted(last.items())]
    return pd.DataFrame(rows, columns=["seed", "stage", "xi", "nonzero_params", "total_rank", "dev", "train"])


def _recipe(rec: dict) -> tuple:
    ident = rec.get("identity") or rec.get("config") or {}
    return repr(ident.get("train")), repr({k: v for k, v in (ident.get("data") or {}).items() if k != "dir"})


def uniform_lora(records: Records, task: str) -> pd.DataFrame:
    """Uniform-rank LoRA runs (no rank pattern) of ``task`` trained with the scheduler runs' recipe (their
    ``train`` and ``data`` settings), not diverged: label, seed, final score and params."""
    runs = run_frame(records, task)
    recipes = {_recipe(rec) for rec in records.raw.values() if rec["task"] == task and rec.get("curve")}
    uniform = [rid for rid, rec in records.raw.items() if rec["method"] == "lora" and _recipe(rec) in recipes
               and not (rec.get("identity") or rec.get("config") or {}).get("method", {}).get("rank_pattern_from")]
    return runs[runs.run_id.isin(uniform) & ~runs.diverged]


def curve_table(records: Records, task: str) -> pd.DataFrame:
    ends, lora = stage_ends(records, task), uniform_lora(records, task)
    sizes = lora.groupby("label")["final_params"].mean().sort_values()
    rows = []
    for stage, g in ends.groupby("stage"):
        budget = g["nonzero_params"].mean()
        fits = sizes[sizes <= budget]
        fits = fits if len(fits) else sizes.iloc[:1]  # below the smallest rank: that rank, with more parameters
        row = {"stage": stage, "xi": g["xi"].iloc[0], "seeds": " ".join(map(str, sorted(g.seed))),
               "nonzero_params": budget, "total_rank": g["total_rank"].mean(), "dev": g["dev"].mean(),
               "dev_std": g["dev"].std(ddof=1) if len(g) > 1 else np.nan, "train": g["train"].mean()}
        if len(fits):
            label = fits.index[-1]
            ref = lora[lora.label == label].set_index("seed")["final_score"]
            seeds = sorted(set(g.seed) & set(ref.index))
            d = g.set_index("seed").loc[seeds, "dev"] - ref.loc[seeds]
            stats = paired_stats(d.dropna().to_numpy())
            row.update(lora=label, lora_params=fits.iloc[-1], lora_final=ref.mean(), **stats,
                       verdict=verdict(stats, "stage", "LoRA"))
        rows.append(row)
    return pd.DataFrame(rows).reindex(columns=COLUMNS)


def _f(v, fmt="{:.2f}") -> str:
    return "—" if v is None or v != v else fmt.format(v)


def render(table: pd.DataFrame, task: str) -> str:
    metric = TASKS[task].main_metric if task in TASKS else "metric"
    lines = [f"# {task}: the sparsifying scheduler against uniform LoRA ({metric} x100)", "",
             "| stage | ξ | seeds | non-zero params | ranks | report split, stage end | memorization rows | "
             "largest uniform LoRA that fits | its params | its final | stage − LoRA [95 % CI] | MDD | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(f"| {r.stage} | {r.xi:g} | {r.seeds} | {_f(r.nonzero_params, '{:,.0f}')} | "
                     f"{_f(r.total_rank, '{:.0f}')} | {_f(r.dev)} ± {_f(r.dev_std)} | {_f(r.train)} | "
                     f"{r.lora if isinstance(r.lora, str) else '—'} | {_f(r.lora_params, '{:,.0f}')} | "
                     f"{_f(r.lora_final)} | {_f(r.mean_diff, '{:+.2f}')} [{_f(r.ci_low, '{:+.2f}')}, "
                     f"{_f(r.ci_high, '{:+.2f}')}] (n = {_f(r.n_pairs, '{:.0f}')}) | {_f(r.mdd)} | "
                     f"{r.verdict if isinstance(r.verdict, str) else '—'} |")
    lines += ["", "Stage 0 is the dense phase; each later stage raises ξ, prunes and (retrain mode) trains again "
              "with a fresh schedule. Each stage's value is its last evaluation (no selection). The LoRA column is "
              "the largest uniform rank with no more parameters than the stage's mean (the smallest rank where none "
              "fits: then LoRA holds more), at its final checkpoint; differences are paired on the seeds both have "
              "(n pairs)."]
    return "\n".join(lines) + "\n"


def write_scheduler_curve(records: Records, task: str, tables_dir: str | Path) -> list[Path]:
    """sparsify_curve_<task>.md / .csv, where ``task`` has sparsifying-scheduler runs."""
    table = curve_table(records, task)
    if table.empty:
        return []
    out = Path(tables_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"sparsify_curve_{task}.md", out / f"sparsify_curve_{task}.csv"]
    paths[0].write_text(render(table, task))
    table.to_csv(paths[1], index=False)
    return paths
