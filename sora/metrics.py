"""GLUE metrics with scikit-learn/scipy (no hub). Degenerate inputs give the defined value or NaN."""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef


def _corr(fn, preds, labels) -> float:
    # constant input: the correlation is undefined; record NaN rather than crash
    if np.std(preds) == 0 or np.std(labels) == 0:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(fn(preds, labels)[0])


METRIC_FNS = {
    "accuracy": lambda p, y: float(accuracy_score(y, p)),
    "f1": lambda p, y: float(f1_score(y, p, zero_division=0.0)),
    "mcc": lambda p, y: float(matthews_corrcoef(y, p)),  # 0.0 for constant predictions
    "pearson": lambda p, y: _corr(pearsonr, p, y),
    "spearman": lambda p, y: _corr(spearmanr, p, y),
}


def compute_metrics(names, predictions, labels) -> dict[str, float]:
    """predictions: class ids (classification) or scores (regression), aligned with labels."""
    p, y = np.asarray(predictions), np.asarray(labels)
    if len(p) != len(y) or len(p) == 0:
        raise ValueError(f"need equal, non-empty predictions and labels, got {len(p)} and {len(y)}")
    return {name: METRIC_FNS[name](p, y) for name in names}
