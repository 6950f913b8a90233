"""Where the ranks went: per-layer x per-matrix heatmaps (same colour scale across methods) and rank vs step."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sora.results.load import Records, curve_frame, method_label, rank_frame  # noqa: E402
from sora.tuners.targets import MATRIX_TYPES  # noqa: E402


def _save(fig, out: Path, stem: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    for p in paths:
        fig.savefig(p, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return paths


def rank_grid(ranks, label: str):
    """Mean final rank over seeds as a (layers x matrices) array for one method label."""
    sub = ranks[ranks.label == label]
    pivot = sub.groupby(["layer", "matrix"])["rank"].mean().unstack("matrix")
    pivot = pivot.reindex(columns=[m for m in MATRIX_TYPES if m in pivot.columns])
    return pivot, sub["seed"].nunique()


def annotated_heatmap(ax, values, xlabels, ylabels, vmax, fmt=lambda v: str(int(v))):
    """Ranks as colours on a fixed 0..vmax scale (runs compare by eye), each cell also written out; NaN cells
    (a module the run did not adapt) stay blank."""
    image = ax.imshow(values, cmap="viridis", vmin=0, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(xlabels)), xlabels)
    ax.set_yticks(range(len(ylabels)), ylabels)
    for (i, j), v in np.ndenumerate(values):
        if v == v:
            ax.text(j, i, fmt(v), ha="center", va="center", fontsize=7, color="white" if v < 0.6 * vmax else "black")
    return image


def plot_rank_heatmaps(records: Records, task: str, out_dir: str | Path, methods=("sora", "adalora", "lora")):
    """One panel per method label for ``task``: final rank per layer (rows) x matrix (cols), mean over seeds."""
    ranks = rank_frame(records)
    ranks = ranks[(ranks.task == task) & ranks.method.isin(methods)]
    labels = sorted(ranks["label"].unique(), key=lambda s: (methods.index(ranks[ranks.label == s].method.iloc[0]), s))
    if not labels:
        return []
    vmax = ranks["rank"].max()
    fig, axes = plt.subplots(1, len(labels), figsize=(3.4 * len(labels) + 1.4, 4.6), squeeze=False,
                             layout="constrained")
    image = None
    for ax, label in zip(axes[0], labels):
        grid, n = rank_grid(ranks, label)
        image = annotated_heatmap(ax, grid.to_numpy(), list(grid.columns), list(grid.index), vmax,
                                  fmt=lambda v: f"{v:.1f}".rstrip("0").rstrip("."))
        ax.set_xlabel("weight matrix")
        if ax is axes[0][0]:
            ax.set_ylabel("encoder layer")
        ax.set_title(f"{label}\n(mean of {n} seed{'s' if n != 1 else ''})", fontsize=9)
    fig.colorbar(image, ax=axes[0].tolist(), label="final rank (non-zero ranks kept)")
    fig.suptitle(f"{task}: final rank per module (Q, K, V: attention projections; AO: attention output; "
                 f"I, O: FFN in/out)", fontsize=10)
    return _save(fig, Path(out_dir), f"ranks_{task}")


def plot_rank_over_training(records: Records, task: str, out_dir: str | Path):
    """Total non-zero ranks vs optimizer step for every SoRA (and AdaLoRA) run of ``task``."""
    fig, ax = plt.subplots(figsize=(6.4, 4))
    drawn = 0
    for _rid, rec in sorted(records.raw.items()):
        if rec["task"] != task or rec["method"] not in ("sora", "adalora"):
            continue
        # step 0: every rank is live (AdaLoRA starts at init_r, SoRA's gates are all non-zero)
        steps = [0] + [e["step"] for e in rec["evals"]]
        total = [rec["params"]["max_rank"]] + [e["total_rank"] for e in rec["evals"]]
        ax.plot(steps, total, marker="o", ms=3, label=f"{rec['method']} seed {rec['seed']}")
        drawn += 1
    if not drawn:
        plt.close(fig)
        return []
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("total non-zero ranks (all adapted modules)")
    ax.set_title(f"{task}: ranks over training")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, Path(out_dir), f"rank_over_training_{task}")


def plot_sparsify_curves(records: Records, task: str, out_dir: str | Path):
    """Memorization (train subset) and generalization (dev), % of the dense best, vs non-zero parameters."""
    curves = curve_frame(records)
    curves = curves[curves.task == task]
    if curves.empty:
        return []
    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    colors = {"shrink_only": "tab:blue", "retrain": "tab:orange"}
    for (mode, seed), g in curves.groupby(["mode", "seed"]):
        g = g.sort_values("step")
        color = colors.get(mode, "tab:gray")
        ax.plot(g["nonzero_params"], g["memorization"], "-o", ms=3, color=color,
                label=f"{mode} seed {seed}: memorization (train)")
        ax.plot(g["nonzero_params"], g["generalization"], "--s", ms=3, color=color,
                label=f"{mode} seed {seed}: generalization (dev)")
    ax.set_xscale("log")
    ax.invert_xaxis()  # sparsification runs right: fewer parameters further along
    ax.axhline(100, color="black", lw=0.6, alpha=0.5)
    ax.set_xlabel("non-zero adapter parameters (log scale; fewer to the right)")
    ax.set_ylabel("% of the dense best checkpoint's metric")
    ax.set_title(f"{task}: sparsifying scheduler")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, Path(out_dir), f"sparsify_{task}")


def plot_record_ranks(record: dict, out_dir: str | Path) -> Path | None:
    """The rank heatmap of one run (for trackers and quick looks)."""
    one = Records(frame=None, raw={record["run_id"]: record}, labels={record["run_id"]: method_label(record)})
    paths = plot_rank_heatmaps(one, record["task"], out_dir, methods=(record["method"],))
    return paths[0] if paths else None
