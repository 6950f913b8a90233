"""Encoding an MNLI-train-sized split (392,600 rows) with the DeBERTa-v3 tokenizer at max_len 256: time and peak
RSS of the list-of-dicts encoding this project used before against the flat arrays + offsets it uses now, and a
second run reading the cache. Rows: the real MNLI dev rows (../shared/glue or the test fixture) repeated.
Each measurement runs in a fresh process (peak RSS is per process). Writes results/bench/encode.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ROWS = 392_600


def _frame(n: int):
    import pandas as pd

    base = ROOT.parent / "shared" / "glue" / "mnli"
    if not base.exists():
        base = ROOT / "tests" / "fixtures" / "glue" / "mnli"
    dev = pd.concat([pd.read_csv(p, sep="\t", keep_default_na=False, dtype=str)
                     for p in sorted(base.glob("validation_*.tsv*"))])
    df = pd.concat([dev] * (n // len(dev) + 1)).head(n).reset_index(drop=True)
    df["label"] = df["label"].astype(int)
    return df


def _tokenizer():
    from transformers import AutoTokenizer

    shared = ROOT.parent / "shared" / "deberta-v3-base"
    return AutoTokenizer.from_pretrained(str(shared) if shared.exists() else str(ROOT / "tests"), use_fast=True)


def measure(mode: str, rows: int, cache: str) -> dict:
    from sora.data.batching import encode
    from sora.data.tasks import get_task

    df, tok, task = _frame(rows), _tokenizer(), get_task("mnli")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if mode == "lists":  # the previous encoding: every token a Python int in a list of dicts
        enc = tok(df["premise"].tolist(), df["hypothesis"].tolist(), truncation=True, max_length=256)
        keys = [k for k in ("input_ids", "token_type_ids") if k in enc]
        out = [{k: enc[k][i] for k in keys} for i in range(len(df))]
        n_tokens = sum(len(f["input_ids"]) for f in out)
    else:
        out = encode(df, task, tok, 256, cache_dir=cache if mode != "arrays" else None)
        n_tokens = int(out.offsets[-1])
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"mode": mode, "seconds": seconds, "peak_rss_delta_mb": (peak - before) / 1024, "tokens": n_tokens}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=ROWS)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "results" / "bench"))
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, args.rows, args.cache)))
        return 0
    cache = tempfile.mkdtemp()
    results = []
    for mode in ("lists", "arrays", "cache_write", "cache_read"):
        out = subprocess.run([sys.executable, __file__, "--one", mode.replace("cache_write", "cached").replace(
            "cache_read", "cached"), "--rows", str(args.rows), "--cache", cache], capture_output=True, text=True)
        if out.returncode:
            print(out.stderr[-2000:])
            return 1
        results.append({**json.loads(out.stdout.strip().splitlines()[-1]), "mode": mode})
    lists = results[0]
    lines = [f"# Encoding {args.rows:,} MNLI-like rows, DeBERTa-v3 tokenizer, max_len 256", "",
             "| encoding | time (s) | peak RSS added (MB) | of the lists' RSS |", "|---|---|---|---|",
             *[f"| {r['mode']} | {r['seconds']:.1f} | {r['peak_rss_delta_mb']:.0f} | "
               f"{r['peak_rss_delta_mb'] / lists['peak_rss_delta_mb']:.1%} |" for r in results],
             "", f"tokens: {results[1]['tokens']:,} (the same in every mode: "
                 f"{len({r['tokens'] for r in results}) == 1})"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "encode.json").write_text(json.dumps({"rows": args.rows, "results": results}, indent=2) + "\n")
    (out / "encode.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
