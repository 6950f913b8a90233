"""Rebuild the committed GLUE samples from a full GLUE folder (default ../shared/glue).

data/glue_sample/     real rows for the demo and the MiniLM table (<= 2 MB): CoLA, MRPC, STS-B in full,
                      SST-2 train subsampled to 8,000 rows (seed 0) + full dev.
tests/fixtures/glue/  a few hundred real rows per split for the tests (first rows of each split, so
                      labels appear as in the file), MNLI/QNLI dev rows; their train splits and RTE, QQP
                      and WNLI are hand-written format fixtures (see tests/fixtures/glue/README.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def read(src: Path, task: str, split: str) -> pd.DataFrame:
    return pd.read_csv(src / task / f"{split}.tsv.gz", sep="\t", keep_default_na=False, dtype=str)


def write(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, sep="\t", index=False, compression={"method": "gzip", "mtime": 0})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", default=str(ROOT.parent / "shared" / "glue"))
    args = ap.parse_args()
    src = Path(args.src)
    sample = ROOT / "data" / "glue_sample"
    for task in ("cola", "mrpc", "stsb"):
        for split in ("train", "validation"):
            write(read(src, task, split), sample / task / f"{split}.tsv.gz")
    write(read(src, "sst2", "train").sample(n=8000, random_state=0).sort_index(), sample / "sst2" / "train.tsv.gz")
    write(read(src, "sst2", "validation"), sample / "sst2" / "validation.tsv.gz")

    fixtures = ROOT / "tests" / "fixtures" / "glue"
    for task in ("cola", "mrpc", "stsb", "sst2"):
        write(read(src, task, "train").head(240), fixtures / task / "train.tsv.gz")
        write(read(src, task, "validation").head(120), fixtures / task / "validation.tsv.gz")
    write(read(src, "qnli", "validation").head(120), fixtures / "qnli" / "validation.tsv.gz")
    for split in ("validation_matched", "validation_mismatched"):
        write(read(src, "mnli", split).head(120), fixtures / "mnli" / f"{split}.tsv.gz")


if __name__ == "__main__":
    main()
