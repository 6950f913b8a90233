"""Evaluation in length-sorted batches; predictions are scattered back to the split's row order."""

from __future__ import annotations

import numpy as np
import torch

from sora.data.batching import Encoded, eval_batches
from sora.data.tasks import Task
from sora.metrics import compute_metrics


@torch.no_grad()
def predict(model, data: Encoded, task: Task, batch_size: int, pad_id: int, device, autocast,
            sort_by_length: bool = True, pad_to: int | None = None) -> np.ndarray:
    model.eval()
    preds = np.zeros(len(data), dtype=float if task.is_regression else int)
    for idx in eval_batches(data.lengths, batch_size, sort_by_length):
        batch = data.batch(idx, pad_id, pad_to)
        batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        with autocast():
            logits = model(**batch).logits.float()
        out = logits[:, 0] if task.is_regression else logits.argmax(-1)
        preds[idx] = out.cpu().numpy()
    return preds


def evaluate(model, data: Encoded, task: Task, batch_size: int, pad_id: int, device, autocast, **kw) -> dict:
    preds = predict(model, data, task, batch_size, pad_id, device, autocast, **kw)
    return compute_metrics(task.metrics, preds, data.labels)
