"""Tokenised examples and batches that carry as little padding as possible.

GLUE sentences are short (mean 11-51 tokens) next to the scripts' max_len (64-512): padding to max_len
wastes 76-91% of tokens. Training batches are length-grouped (shuffled megabatches sorted by length,
then the batch order shuffled); evaluation runs sorted by length and restores the original order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from sora.data.tasks import Task
from sora.errors import UserError


@dataclass
class Encoded:
    features: list[dict[str, list[int]]]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.features)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(f["input_ids"]) for f in self.features])


def encode(df: pd.DataFrame, task: Task, tokenizer, max_len: int) -> Encoded:
    specials = tokenizer.num_special_tokens_to_add(pair=len(task.text_columns) == 2)
    if max_len <= specials:
        raise UserError(f"data.max_len={max_len} leaves no room for text next to {specials} special tokens; "
                        f"use data.max_len >= {specials + 8}")
    texts = [df[c].tolist() for c in task.text_columns]
    enc = tokenizer(*texts, truncation=True, max_length=max_len)
    keys = [k for k in ("input_ids", "token_type_ids") if k in enc]
    features = [{k: enc[k][i] for k in keys} for i in range(len(df))]
    return Encoded(features, df["label"].to_numpy())


def collate(features: list[dict], labels: np.ndarray, pad_id: int, pad_to: int | None = None) -> dict:
    """Pad to the longest sequence of the batch (or to ``pad_to`` when static padding is asked for)."""
    width = pad_to or max(len(f["input_ids"]) for f in features)
    batch = {}
    for key in features[0]:
        fill = pad_id if key == "input_ids" else 0
        batch[key] = torch.tensor([f[key] + [fill] * (width - len(f[key])) for f in features])
    lengths = torch.tensor([len(f["input_ids"]) for f in features])
    batch["attention_mask"] = (torch.arange(width)[None, :] < lengths[:, None]).long()
    batch["labels"] = torch.tensor(labels, dtype=torch.float if labels.dtype.kind == "f" else torch.long)
    return batch


def train_batches(n: int, lengths: np.ndarray, batch_size: int, seed: int, epoch: int,
                  group_by_length: bool = True, mega: int = 50) -> list[np.ndarray]:
    """One epoch's batches of row indices, a pure function of (seed, epoch): resume replays it exactly."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    if not group_by_length:
        return [order[i:i + batch_size] for i in range(0, n, batch_size)]
    span = batch_size * mega
    batches = []
    for start in range(0, n, span):
        chunk = order[start:start + span]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def eval_batches(lengths: np.ndarray, batch_size: int, sort_by_length: bool = True) -> list[np.ndarray]:
    """Batches of row indices; sorted by length so each batch pads little. Callers scatter back by index."""
    order = np.argsort(-lengths, kind="stable") if sort_by_length else np.arange(len(lengths))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
