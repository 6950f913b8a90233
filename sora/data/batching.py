"""Tokenised examples and batches that carry as little padding as possible.

GLUE sentences are short (mean 11-51 tokens) next to the scripts' max_len (64-512): padding to max_len
wastes 76-91% of tokens. Training batches are length-grouped (shuffled megabatches sorted by length,
then the batch order shuffled); evaluation runs sorted by length and restores the original order.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sora.data.tasks import Task
from sora.errors import UserError

CHUNK_ROWS = 20_000  # tokenised at a time: Python lists for at most this many rows exist at once


@dataclass
class Encoded:
    """A split's tokens as flat arrays: ``ids[offsets[i]:offsets[i + 1]]`` is row i (int32; token types int8).

    MNLI's 392,702 training rows are ~60 MB this way; as Python lists of dicts they took +3.2 GB.
    """

    ids: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray
    type_ids: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def batch(self, idx, pad_id: int, pad_to: int | tuple[int, ...] | None = None) -> dict[str, torch.Tensor]:
        """Rows ``idx`` padded to the longest of them, or to ``pad_to``: one width, or length buckets (a sorted
        tuple of widths: the smallest that holds the longest row), with attention mask and labels."""
        idx = np.asarray(idx)
        starts, lens = self.offsets[idx], self.lengths[idx]
        width = pad_width(int(lens.max()), pad_to)
        ids = np.full((len(idx), width), pad_id, dtype=np.int64)
        types = np.zeros((len(idx), width), dtype=np.int64) if self.type_ids is not None else None
        for row, (s, n) in enumerate(zip(starts, lens)):
            ids[row, :n] = self.ids[s:s + n]
            if types is not None:
                types[row, :n] = self.type_ids[s:s + n]
        out = {"input_ids": torch.from_numpy(ids)}
        if types is not None:
            out["token_type_ids"] = torch.from_numpy(types)
        out["attention_mask"] = (torch.arange(width)[None, :] < torch.from_numpy(lens)[:, None]).long()
        labels = self.labels[idx]
        out["labels"] = torch.tensor(labels, dtype=torch.float if labels.dtype.kind == "f" else torch.long)
        return out


def pad_width(longest: int, pad_to: int | tuple[int, ...] | None) -> int:
    if pad_to is None:
        return longest
    if isinstance(pad_to, int):
        return pad_to
    return next((w for w in pad_to if w >= longest), max(pad_to[-1], longest))


def length_buckets(max_len: int, n: int, multiple: int = 8) -> tuple[int, ...] | None:
    """``data.pad_buckets``: ``n`` evenly spaced widths up to ``max_len`` (rounded up to a multiple of 8, the last
    exactly ``max_len``), so a compiled model sees a handful of shapes instead of one per batch; None for n = 0."""
    if n <= 0:
        return None
    up = lambda x, m: -(-x // m) * m  # noqa: E731  (ceil to a multiple of m)
    return tuple(sorted({min(max_len, up(up(max_len * i, n) // n, multiple)) for i in range(1, n + 1)}))


def encode(df: pd.DataFrame, task: Task, tokenizer, max_len: int, cache_dir: str | Path | None = None) -> Encoded:
    """Tokenise ``df`` in chunks into flat arrays; with ``cache_dir``, reuse an earlier run's result for the same
    tokenizer, rows and max_len (the 15 runs of one task tokenise once)."""
    specials = tokenizer.num_special_tokens_to_add(pair=len(task.text_columns) == 2)
    if max_len <= specials:
        raise UserError(f"data.max_len={max_len} leaves no room for text next to {specials} special tokens; "
                        f"use data.max_len >= {specials + 8}")
    path = _cache_path(df, task, tokenizer, max_len, cache_dir) if cache_dir else None
    if path is not None and path.exists():
        with np.load(path) as z:
            return Encoded(z["ids"], z["offsets"], z["labels"], z["type_ids"] if "type_ids" in z else None)
    ids, types, lengths = [], [], []
    for start in range(0, len(df), CHUNK_ROWS):
        chunk = df.iloc[start:start + CHUNK_ROWS]
        enc = tokenizer(*[chunk[c].tolist() for c in task.text_columns], truncation=True, max_length=max_len)
        lengths.append(np.fromiter((len(x) for x in enc["input_ids"]), dtype=np.int64, count=len(chunk)))
        ids.append(np.fromiter(itertools.chain.from_iterable(enc["input_ids"]), dtype=np.int32))
        if "token_type_ids" in enc:
            types.append(np.fromiter(itertools.chain.from_iterable(enc["token_type_ids"]), dtype=np.int8))
        del enc
    offsets = np.concatenate([[0], np.cumsum(np.concatenate(lengths) if lengths else [])]).astype(np.int64)
    out = Encoded(np.concatenate(ids) if ids else np.zeros(0, np.int32), offsets, df["label"].to_numpy(),
                  np.concatenate(types) if types else None)
    if path is not None:
        _save(path, out)
    return out


def _cache_path(df: pd.DataFrame, task: Task, tokenizer, max_len: int, cache_dir) -> Path:
    h = hashlib.sha256()
    h.update(f"{type(tokenizer).__name__}|{tokenizer.name_or_path}|{len(tokenizer)}|{max_len}|{task.name}".encode())
    h.update(pd.util.hash_pandas_object(df[[*task.text_columns, "label"]], index=False).to_numpy().tobytes())
    return Path(cache_dir).expanduser() / f"{task.name}-{h.hexdigest()[:20]}.npz"


def _save(path: Path, enc: Encoded) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"ids": enc.ids, "offsets": enc.offsets, "labels": enc.labels}
    if enc.type_ids is not None:
        arrays["type_ids"] = enc.type_ids
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)  # concurrent runs of a sweep may race here: either file is the same
    except OSError:
        tmp.unlink(missing_ok=True)  # a cache that cannot be written is only a cache


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
