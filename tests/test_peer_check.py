"""scripts/peer_check_trainer.py --compare: the stock-Trainer runs are judged only against harness runs with the
same batching (hand-made results; the verdicts worked out by hand in the comments)."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "peer_check_trainer.py"


@pytest.fixture(scope="module")
def peer():
    spec = importlib.util.spec_from_file_location("peer_check_trainer", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _harness(root: Path, seed: int, main: float, grouped: bool, r: int = 8) -> None:
    rid = f"stsb-lora-s{seed}-{'g' if grouped else 'n'}{r}"
    rec = {"task": "stsb", "status": "finished", "method": "lora", "seed": seed, "best": {"main": main},
           "config": {"method": {"r": r}, "data": {"group_by_length": grouped}}}
    (root / "records" / rid).mkdir(parents=True)
    (root / "records" / rid / "record.json").write_text(json.dumps(rec))


def _stock(out: Path, seed: int, main: float, sampler: str | None) -> None:
    config = {"epochs": 3} if sampler is None else {"epochs": 3, "sampler": sampler}  # None: written before --sampler
    (out / f"stsb-{sampler or 'old'}-s{seed}.json").write_text(json.dumps({"seed": seed, "main": main,
                                                                           "config": config}))


def test_only_sampler_matched_pairs_decide(peer, tmp_path, capsys):
    harness, out = tmp_path / "harness", tmp_path / "peer"
    out.mkdir()
    for seed, ours_random, ours_grouped in ((0, 0.80, 0.70), (1, 0.82, 0.72)):
        _harness(harness, seed, ours_random, grouped=False)
        _harness(harness, seed, ours_grouped, grouped=True)
    _harness(harness, 0, 0.10, grouped=False, r=4)  # another rank: never part of the r=8 comparison
    _stock(out, 0, 0.81, None)
    _stock(out, 1, 0.83, None)
    # matched (random): means 81.00 vs 82.00, diff -1.00 <= std 1.41 -> agree; the grouped harness runs (71.00)
    # against the random stock ones differ by -11.00: shown as what the sampler does, not a verdict
    assert peer.compare("stsb", [harness], out) == 0
    text = (out / "compare_stsb.md").read_text()
    assert "difference of means -1.00; larger seed std 1.41: agree" in text
    assert "difference of means -11.00" in text and "Unmatched" in text
    assert "agree (1 of 1 matched pairs agree)" in text
    # a length-grouped stock run far from the grouped harness runs (90.50 vs 71.00) fails the check
    _stock(out, 0, 0.90, "group_by_length")
    _stock(out, 1, 0.91, "group_by_length")
    assert peer.compare("stsb", [harness], out) == 1
    assert "1 of 2 matched pairs agree" in (out / "compare_stsb.md").read_text()
    capsys.readouterr()


def test_no_matched_pair_is_not_agreement(peer, tmp_path, capsys):
    harness, out = tmp_path / "harness", tmp_path / "peer"
    out.mkdir()
    for seed in (0, 1):
        _harness(harness, seed, 0.80 + seed / 100, grouped=True)
        _stock(out, seed, 0.80 + seed / 100, None)  # identical numbers, but random vs grouped batches
    assert peer.compare("stsb", [harness], out) == 1
    assert "NOT SHOWN TO AGREE (0 of 0" in (out / "compare_stsb.md").read_text()
    capsys.readouterr()
