"""Where the ranks went in a causal LM: a (matrix x layer) grid of kept ranks and its heatmap."""

from __future__ import annotations

import re
from pathlib import Path

from sora.tuners.targets import matrix_type

_BLOCK = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks)\.(\d+)\.(.+)$")


def layer_and_matrix(name: str) -> tuple[int, str] | None:
    """``model.layers.3.self_attn.q_proj`` -> (3, "q_proj"); encoders keep their Q K V AO I O names."""
    encoder = matrix_type(name)
    if encoder:
        return encoder
    m = _BLOCK.search(name)
    return (int(m.group(1)), m.group(2).rsplit(".", 1)[-1]) if m else None


def rank_grid(ranks: dict[str, int]) -> dict[str, dict[int, int]]:
    """matrix -> {layer: rank}, matrices in first-seen (forward) order; modules outside blocks are skipped."""
    grid: dict[str, dict[int, int]] = {}
    for name, r in ranks.items():
        where = layer_and_matrix(name)
        if where:
            grid.setdefault(where[1], {})[where[0]] = r
    return grid


def plot_rank_grid(grid: dict[str, dict[int, int]], r_max: int, title: str, out: Path) -> Path:
    """One heatmap of a run (matrices x layers), colour scale 0..r_max."""
    import matplotlib.pyplot as plt
    import numpy as np

    from sora.results.plots import annotated_heatmap  # matplotlib (Agg) only when a run ends

    layers = sorted({layer for row in grid.values() for layer in row})
    values = np.array([[grid[m].get(layer, np.nan) for layer in layers] for m in grid], dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.5 * len(layers), 1.0 + 0.4 * len(grid)), layout="constrained")
    fig.colorbar(annotated_heatmap(ax, values, layers, list(grid), r_max), ax=ax, label="kept rank")
    ax.set_xlabel("layer")
    ax.set_title(title, fontsize=9)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out
