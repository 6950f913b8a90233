"""GLUE splits as pandas DataFrames: a local folder of TSVs (../shared/glue layout) or the hub.

Layout: ``<dir>/<task>/<split>.tsv[.gz]`` with a header row and the ``nyu-mll/glue`` column names,
read with csv quoting (never QUOTE_NONE) and ``keep_default_na=False`` so "NA" stays text.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sora.data.tasks import Task
from sora.errors import UserError

HUB_DATASET = "nyu-mll/glue"
SELECT_SEED = 42  # the released code splits dev / holds out train with seed 42, whatever the run seed
HELDOUT_TRAIN = 1000


_FINGERPRINTS: dict[tuple, str] = {}


def data_fingerprint(task: Task, data_dir: str | None, revision: str | None = None) -> str:
    """What the run reads, as a short hash: the content of the task's split files, or the hub dataset and
    revision. A run on other data gets another run id, so it never reuses a stale result."""
    if not data_dir:
        return f"hub:{HUB_DATASET}/{task.source}@{revision or 'main'}"
    files = []
    for split in ("train", *task.dev_splits):
        path = next((Path(data_dir) / task.source / f"{split}{ext}" for ext in (".tsv.gz", ".tsv")
                     if (Path(data_dir) / task.source / f"{split}{ext}").exists()), None)
        files.append((split, path))
    key = tuple((s, str(p), p.stat().st_mtime_ns, p.stat().st_size) if p else (s, None) for s, p in files)
    if key not in _FINGERPRINTS:
        digest = hashlib.sha256()
        for split, path in files:
            digest.update(split.encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest() if path else b"missing")
        _FINGERPRINTS[key] = "files:" + digest.hexdigest()[:16]
    return _FINGERPRINTS[key]


def read_split(task: Task, split: str, data_dir: str | None, revision: str | None = None) -> pd.DataFrame:
    df = _read_local(task, split, data_dir) if data_dir else _read_hub(task, split, revision)
    return validate(df, task, split)


def _read_local(task: Task, split: str, data_dir: str) -> pd.DataFrame:
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"data.dir {data_dir!r} is not a folder; point it at a GLUE folder "
                        f"(<dir>/<task>/<split>.tsv[.gz]) or drop data.dir to load {HUB_DATASET} from the hub")
    for name in (f"{split}.tsv.gz", f"{split}.tsv"):
        path = root / task.source / name
        if path.exists():
            return pd.read_csv(path, sep="\t", keep_default_na=False, dtype=str)
    raise UserError(f"missing split file {root / task.source / (split + '.tsv[.gz]')}; "
                    f"add it or drop data.dir to load {HUB_DATASET} from the hub")


def _read_hub(task: Task, split: str, revision: str | None = None) -> pd.DataFrame:
    try:
        import datasets

        ds = datasets.load_dataset(HUB_DATASET, task.source, split=split, revision=revision)
    except Exception as exc:  # hub/network errors come in many types
        raise UserError(f"cannot load {HUB_DATASET}/{task.source} split {split!r} from the hub "
                        f"({type(exc).__name__}); offline, set data.dir=<folder of GLUE TSVs>") from None
    return ds.to_pandas().astype({c: str for c in task.text_columns})


def validate(df: pd.DataFrame, task: Task, split: str) -> pd.DataFrame:
    """Columns present, labels parse and lie in range, split not empty: fail early with the fix."""
    missing = [c for c in (*task.text_columns, "label") if c not in df.columns]
    if missing:
        raise UserError(f"{task.name}/{split}: missing column(s) {missing}; expected {[*task.text_columns, 'label']} "
                        f"(nyu-mll/glue names), found {list(df.columns)}")
    if len(df) == 0:
        raise UserError(f"{task.name}/{split} is empty; check the file or the split name")
    try:
        labels = pd.to_numeric(df["label"], errors="raise")
    except (ValueError, TypeError):
        raise UserError(f"{task.name}/{split}: non-numeric label(s) such as {df['label'].iloc[0]!r}; "
                        f"labels must be class ids (or STS-B scores)") from None
    df = df.copy()
    if task.is_regression:
        df["label"] = labels.astype(float)
    else:
        bad = labels[(labels < 0) | (labels >= task.num_labels) | (labels % 1 != 0)]
        if len(bad):
            raw = df["label"].loc[bad.index[0]]
            raise UserError(f"{task.name}/{split}: label {raw} out of range 0..{task.num_labels - 1} "
                            f"(row {bad.index[0]}); unlabelled test splits cannot be used")
        df["label"] = labels.astype(int)
    return df.reset_index(drop=True)


def released_order(n: int) -> np.ndarray:
    """The release's shuffle (``src/processor.py:50-54``): ``torch.randperm(n)`` from a generator seeded 42."""
    generator = torch.Generator()
    generator.manual_seed(SELECT_SEED)
    return torch.randperm(n, generator=generator).numpy()


def protocol_splits(task: Task, data_dir: str | None, protocol: str, revision: str | None = None
                    ) -> dict[str, pd.DataFrame]:
    """{'train', 'select', 'report/<dev split>'...} for an evaluation protocol.

    * ``best_on_dev``: select and report on the full dev set(s) (how LoRA/AdaLoRA were reported).
    * ``sora_split`` (released SoRA code, ``src/processor.py:72-100``): with ``indices = released_order(n)``,
      small tasks select on ``dev[indices[:n//2]]`` and report ``dev[indices[n//2:]]`` of their one dev set
      (MNLI: ``mnli`` = the release's mnli-m on matched, ``mnli_mm`` on mismatched, two runs as released);
      large tasks (SST-2, QNLI, QQP) select on ``train[indices[:1000]]``, train on ``train[indices[1000:]]``
      and report the full dev set.
    """
    if protocol not in ("best_on_dev", "sora_split"):
        raise UserError(f"eval.protocol must be best_on_dev or sora_split, got {protocol!r}")
    train = read_split(task, "train", data_dir, revision)
    if protocol == "best_on_dev":
        devs = {s: read_split(task, s, data_dir, revision) for s in task.dev_splits}
        return {"train": train, "select": devs[task.dev_splits[0]], **{f"report/{s}": d for s, d in devs.items()}}
    dev_name = task.dev_splits[0]
    dev = read_split(task, dev_name, data_dir, revision)
    if task.large:
        order = released_order(len(train))
        return {"train": _rows(train, order[HELDOUT_TRAIN:]), "select": _rows(train, order[:HELDOUT_TRAIN]),
                f"report/{dev_name}": dev}
    order, half = released_order(len(dev)), len(dev) // 2
    return {"train": train, "select": _rows(dev, order[:half]), f"report/{dev_name}": _rows(dev, order[half:])}


def _rows(df: pd.DataFrame, idx: np.ndarray) -> pd.DataFrame:
    return df.iloc[idx].reset_index(drop=True)
