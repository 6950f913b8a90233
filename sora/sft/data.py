"""SFT data: JSONL or hub rows -> token ids whose labels cover the response only (prompt tokens masked)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from sora.errors import UserError

IGNORE = -100  # the label torch's cross-entropy skips


@dataclass
class SftData:
    train: list[dict]
    eval: list[dict]
    dropped: int  # examples whose response did not fit in max_len


def load_rows(source: str, split: str = "train", revision: str | None = None) -> list[dict]:
    """A ``.jsonl`` file (one JSON object per line) or a hub dataset name."""
    if source.endswith(".jsonl"):
        path = _jsonl_path(source)
        rows = []
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise UserError(f"{path}:{i} is not JSON ({exc.msg}); one object per line") from None
        return rows
    from datasets import load_dataset

    try:
        return list(load_dataset(source, split=split, revision=revision))
    except Exception as exc:  # hub unreachable, unknown name: one line, not a traceback
        raise UserError(f"could not load dataset {source!r} split {split!r} ({type(exc).__name__}); give a "
                        f"local data.path=<file.jsonl> or check the name and your network") from None


def _jsonl_path(source: str) -> Path:
    path = Path(source).expanduser()
    if not path.is_file():
        raise UserError(f"data file {path} not found; give data.path=<file.jsonl> or a hub dataset name")
    return path


def fingerprint(cfg) -> str:
    """Part of the run's identity: the bytes of local files, or hub name + split + revision."""
    h = hashlib.sha1()
    for source in (cfg.path, cfg.get("eval_path")):
        if source and str(source).endswith(".jsonl"):
            h.update(_jsonl_path(source).read_bytes())
        else:
            h.update(json.dumps([source, cfg.get("split"), cfg.get("revision")]).encode())
    return h.hexdigest()[:16]


def encode(row: dict, tokenizer, template: str, response_field: str, max_len: int) -> dict | None:
    """bos + template(row) + response + eos; labels are IGNORE over bos and the prompt. None if no response
    token fits (counted, never silently trained on a prompt alone)."""
    try:
        prompt, response = template.format_map(row), str(row[response_field])
    except KeyError as exc:
        raise UserError(f"data row has no field {exc}; fields: {sorted(row)}; set data.template / "
                        f"data.response_field") from None
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    p = bos + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r = tokenizer(response, add_special_tokens=False)["input_ids"] + [eos_id(tokenizer)]
    ids = (p + r)[:max_len]
    if len(p) >= len(ids):
        return None
    return {"input_ids": ids, "labels": [IGNORE] * len(p) + ids[len(p):]}


def eos_id(tokenizer) -> int:
    """eos, else sep (BERT-style vocabularies, the offline tokenizer)."""
    for tok in (tokenizer.eos_token_id, tokenizer.sep_token_id):
        if tok is not None:
            return tok
    raise UserError("the tokenizer has neither an eos nor a sep token; use a causal LM's tokenizer")


def load_sft_data(cfg, tokenizer) -> SftData:
    """``cfg`` is the ``data`` node; without ``eval_path`` the last ``eval_rows`` rows of a seeded shuffle are held
    out (seed 0: the same split for every run)."""
    rows = load_rows(cfg.path, cfg.get("split", "train"), cfg.get("revision"))
    if cfg.get("eval_path"):
        train_rows, eval_rows = rows, load_rows(cfg.eval_path, cfg.get("eval_split", "validation"),
                                                 cfg.get("revision"))
    else:
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0)).tolist()
        n_eval = min(cfg.eval_rows, len(rows) // 2)
        train_rows = [rows[i] for i in order[:len(rows) - n_eval]]
        eval_rows = [rows[i] for i in order[len(rows) - n_eval:]]
    enc = [[encode(r, tokenizer, cfg.template, cfg.response_field, cfg.max_len) for r in part]
           for part in (train_rows, eval_rows)]
    train, evaluation = ([e for e in part if e is not None] for part in enc)
    if not train or not evaluation:
        raise UserError(f"no example fits data.max_len={cfg.max_len} with its response; raise data.max_len")
    dropped = sum(e is None for part in enc for e in part)
    return SftData(train, evaluation, dropped)


class Collator:
    """Right-pads a batch: ids with the pad id, labels with IGNORE, an attention mask."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n] = torch.tensor(f["input_ids"])
            labels[i, :n] = torch.tensor(f["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
