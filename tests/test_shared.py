"""Extras that read ../shared (the full GLUE files and the DeBERTa-v3 tokenizer on the project's dev machines).
They skip, with the reason, where ../shared is absent (a user's machine): the committed fixtures cover the rest."""

import pytest

from sora.data.glue import read_split
from sora.data.tasks import get_task
from tests.conftest import SHARED, needs_shared

ROWS = {("cola", "train"): 8551, ("cola", "validation"): 1043, ("sst2", "validation"): 872,
        ("mrpc", "train"): 3668, ("mrpc", "validation"): 408, ("stsb", "validation"): 1500,
        ("qnli", "validation"): 5463, ("mnli", "validation_matched"): 9815, ("mnli", "validation_mismatched"): 9832}


@needs_shared()
@pytest.mark.parametrize("task,split", sorted(ROWS))
def test_full_glue_files_load_with_their_row_counts(task, split):
    df = read_split(get_task(task), split, str(SHARED / "glue"))
    assert len(df) == ROWS[(task, split)]


@needs_shared()
def test_mrpc_label_counts_match_hf():
    df = read_split(get_task("mrpc"), "validation", str(SHARED / "glue"))
    assert df["label"].value_counts().to_dict() == {1: 279, 0: 129}


@pytest.mark.skipif(not (SHARED / "deberta-v3-base" / "spm.model").exists(), reason="../shared/deberta-v3-base absent")
def test_deberta_v3_tokenizer_encodes_the_known_example():
    pytest.importorskip("sentencepiece")
    from omegaconf import OmegaConf

    from sora.models import load_tokenizer

    tok = load_tokenizer(OmegaConf.create({"source": str(SHARED / "deberta-v3-base"), "tokenizer": None}))
    assert tok("The quick brown fox jumped.")["input_ids"] == [1, 279, 1538, 3258, 16123, 6827, 260, 2]
