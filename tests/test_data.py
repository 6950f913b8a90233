"""Every GLUE task's format loads; bad files fail with a message that names the fix."""

import numpy as np
import pandas as pd
import pytest

from sora.data.batching import Encoded, eval_batches, train_batches
from sora.data.glue import protocol_splits, read_split, validate
from sora.data.tasks import TASKS, get_task
from sora.errors import UserError
from tests.conftest import GLUE_FIXTURE

SPLITS = {t: ("train", *TASKS[t].dev_splits) for t in TASKS}
SPLITS["mnli"] = ("train", "validation_matched", "validation_mismatched")
SPLITS["qnli"] = ("train", "validation")


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_format_loads(task):
    t = get_task(task)
    for split in SPLITS[task]:
        df = read_split(t, split, str(GLUE_FIXTURE))
        assert len(df) > 0
        if t.is_regression:
            assert df["label"].between(0, 5).all()
        else:
            assert set(df["label"]) <= set(range(t.num_labels))


def test_quotes_and_na_survive():
    df = read_split(get_task("qqp"), "train", str(GLUE_FIXTURE))
    assert 'What does "NA" mean in a spreadsheet?' in df["question1"].tolist()


def test_unknown_task_lists_valid_names():
    with pytest.raises(UserError, match="valid: cola, sst2"):
        get_task("colaa")


@pytest.mark.parametrize("frame,match", [
    (pd.DataFrame({"sentence": ["a"], "idx": [0]}), "missing column"),
    (pd.DataFrame({"sentence": ["a", "b"], "label": ["1", "7"]}), "out of range"),
    (pd.DataFrame({"sentence": ["a"], "label": ["-1"]}), "out of range"),
    (pd.DataFrame({"sentence": [], "label": []}), "empty"),
])
def test_bad_tables(frame, match):
    with pytest.raises(UserError, match=match):
        validate(frame, get_task("cola"), "train")


def test_missing_dir_and_split(tmp_path):
    with pytest.raises(UserError, match="not a folder"):
        read_split(get_task("cola"), "train", str(tmp_path / "nope"))
    with pytest.raises(UserError, match="missing split file"):
        read_split(get_task("rte"), "train", str(tmp_path))


def test_sora_split_protocol_halves_dev_with_seed_42():
    s = protocol_splits(get_task("mrpc"), str(GLUE_FIXTURE), "sora_split")
    assert len(s["select"]) == 60 and len(s["report/validation"]) == 60
    assert not set(s["select"]["idx"]) & set(s["report/validation"]["idx"])
    again = protocol_splits(get_task("mrpc"), str(GLUE_FIXTURE), "sora_split")
    assert s["select"]["idx"].tolist() == again["select"]["idx"].tolist()
    dev = protocol_splits(get_task("mrpc"), str(GLUE_FIXTURE), "best_on_dev")
    assert len(dev["select"]) == 120


def test_large_task_holds_out_train_rows():
    s = protocol_splits(get_task("sst2"), str(GLUE_FIXTURE), "sora_split")
    # the fixture has 240 train rows, fewer than 1,000: all go to selection, none left to train on
    assert len(s["select"]) == 240 and len(s["report/validation"]) == 120


def test_length_grouped_batches_cover_every_row_once_and_are_deterministic():
    import numpy as np

    lengths = np.random.default_rng(0).integers(5, 60, size=103)
    batches = train_batches(103, lengths, 8, seed=1, epoch=2)
    assert sorted(np.concatenate(batches).tolist()) == list(range(103))
    again = train_batches(103, lengths, 8, seed=1, epoch=2)
    assert all((a == b).all() for a, b in zip(batches, again))
    other = train_batches(103, lengths, 8, seed=1, epoch=3)
    assert any(len(a) != len(b) or (a != b).any() for a, b in zip(batches, other))
    # grouped batches waste less padding than random ones
    def waste(bs):
        return sum(int(lengths[b].max()) * len(b) - int(lengths[b].sum()) for b in bs)
    assert waste(batches) < waste(train_batches(103, lengths, 8, 1, 2, group_by_length=False))
    sorted_batches = eval_batches(lengths, 16)
    assert sorted(np.concatenate(sorted_batches).tolist()) == list(range(103))


def test_batches_pad_dynamically():
    import numpy as np

    enc = Encoded(np.array([1, 5, 2, 1, 6, 7, 8, 2], np.int32), np.array([0, 3, 8]), np.array([0, 1]))
    b = enc.batch([0, 1], pad_id=0)
    assert b["input_ids"].tolist() == [[1, 5, 2, 0, 0], [1, 6, 7, 8, 2]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert b["labels"].tolist() == [0, 1] and enc.batch([1, 0], 0)["input_ids"][1].tolist() == [1, 5, 2, 0, 0]
    assert enc.batch([0, 1], pad_id=0, pad_to=8)["input_ids"].shape == (2, 8)


def test_encoding_is_the_tokenizers_and_a_second_run_reuses_the_cache(tmp_path, monkeypatch):
    """Flat arrays equal the tokenizer's own output row by row; the same rows, tokenizer and max_len load from
    the cache without tokenising again."""
    from sora.config import load_config
    from sora.data.batching import encode
    from sora.models import load_tokenizer

    tok = load_tokenizer(load_config(["model=minilm"]).model)
    df = read_split(get_task("mrpc"), "validation", str(GLUE_FIXTURE))
    enc = encode(df, get_task("mrpc"), tok, 64, cache_dir=tmp_path)
    ref = tok(df["sentence1"].tolist(), df["sentence2"].tolist(), truncation=True, max_length=64)
    for i in (0, 7, len(df) - 1):
        row = enc.ids[enc.offsets[i]:enc.offsets[i + 1]].tolist()
        assert row == ref["input_ids"][i] and enc.type_ids[enc.offsets[i]:enc.offsets[i + 1]].tolist() == \
            ref["token_type_ids"][i]
    assert len(list(tmp_path.glob("*.npz"))) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("tokenised again instead of reading the cache")

    monkeypatch.setattr(type(tok), "__call__", refuse)
    again = encode(df, get_task("mrpc"), tok, 64, cache_dir=tmp_path)
    assert np.array_equal(again.ids, enc.ids) and np.array_equal(again.offsets, enc.offsets)
    assert np.array_equal(again.labels, enc.labels)


def _released_indices(n: int, split: str, validation_size: int) -> list[int]:
    """Transcribed from the release, src/processor.py:50-54 and 72-77 (seed 42)."""
    import torch

    generator = torch.Generator()
    generator.manual_seed(42)
    indices = torch.randperm(n, generator=generator).tolist()
    return indices[:validation_size] if split == "validation" else indices[validation_size:]


@pytest.mark.parametrize("task,dev", [("mrpc", "validation"), ("cola", "validation"), ("stsb", "validation"),
                                      ("mnli", "validation_matched"), ("mnli_mm", "validation_mismatched")])
def test_sora_split_rows_are_the_released_ones(task, dev):
    """Small tasks: select = dev[indices[:n//2]], report = dev[indices[n//2:]] of the task's one dev set; MNLI
    is two runs as released (mnli-m on matched, mnli-mm on mismatched)."""
    full = read_split(get_task(task), dev, str(GLUE_FIXTURE))
    s = protocol_splits(get_task(task), str(GLUE_FIXTURE), "sora_split")
    n = len(full)
    assert set(s) == {"train", "select", f"report/{dev}"}
    assert s["select"]["idx"].tolist() == full["idx"].iloc[_released_indices(n, "validation", n // 2)].tolist()
    assert s[f"report/{dev}"]["idx"].tolist() == full["idx"].iloc[_released_indices(n, "test", n // 2)].tolist()


def test_sora_split_large_task_holds_out_the_released_train_rows(tmp_path):
    """SST-2 / QNLI / QQP: select on train[indices[:1000]], train on train[indices[1000:]], report full dev."""
    rows = pd.DataFrame({"sentence": [f"s{i}" for i in range(1300)], "label": [i % 2 for i in range(1300)],
                         "idx": range(1300)})
    (tmp_path / "sst2").mkdir()
    rows.to_csv(tmp_path / "sst2" / "train.tsv", sep="\t", index=False)
    rows.iloc[:50].to_csv(tmp_path / "sst2" / "validation.tsv", sep="\t", index=False)
    s = protocol_splits(get_task("sst2"), str(tmp_path), "sora_split")
    assert s["select"]["idx"].astype(int).tolist() == _released_indices(1300, "validation", 1000)
    assert s["train"]["idx"].astype(int).tolist() == _released_indices(1300, "train", 1000)
    assert len(s["report/validation"]) == 50


def test_memorization_subset_is_the_released_datasets_shuffle():
    """run_glue.py:664: train_dataset.shuffle(seed=42).select(range(1000)), by `datasets` itself."""
    import datasets

    from sora.train.plan import memorization_rows

    ds = datasets.Dataset.from_dict({"i": list(range(1500))}).shuffle(seed=42).select(range(1000))
    assert memorization_rows(1500).tolist() == ds["i"]
