"""The allocation table: each SoRA run paired, seed by seed, with its four control arms, at both checkpoints."""

import pytest

from sora.records import write_record
from sora.results import load_records
from sora.results.allocation import allocation_frame, arm_runs, write_allocation
from tests.fixtures import make_results_fixture as fx

XI = 3e-4
SORA = {0: 0.80, 1: 0.82, 2: 0.84}  # SoRA's MRPC accuracy per seed
ARMS = {"a": {0: 0.79, 1: 0.80, 2: 0.81}, "b": {0: 0.78, 1: 0.78, 2: 0.78}, "c": {0: 0.80, 1: 0.82, 2: 0.84},
        "d": {0: 0.83, 1: 0.84, 2: 0.85}}
# SoRA keeps 100 of 288 ranks on every seed (fixture ranks are replaced): mean 100 / 36 modules = 2.78 -> rank 3


def _rec(method: str, seed: int, value: float, **m) -> dict:
    rec = fx.record("mrpc", method, seed, value)
    rec["run_id"] = f"mrpc-{method}-{'-'.join(f'{k}{v}' for k, v in m.items())}-s{seed}"
    rec["config"]["method"] = {**rec["config"]["method"], **m}
    rec["identity"] = {"task": {"name": "mrpc"}, "seed": seed, "train": {"lr": 1e-3}, "method": rec["config"]["method"],
                       "data": {"fingerprint": "f"}}
    return rec


def _write(root, rec):
    write_record(root / "records" / rec["run_id"] / "record.json", rec)


@pytest.fixture
def records(tmp_path):
    for seed, v in SORA.items():
        rec = _rec("sora", seed, v, xi=XI, r_max=8)
        modules = sorted(rec["ranks"])[:36]
        rec["ranks"] = {n: (3 if i < 28 else 2) for i, n in enumerate(modules)}  # 28 x 3 + 8 x 2 = 100
        _write(tmp_path, rec)
        _write(tmp_path, _rec("lora", seed, ARMS["a"][seed], r=8, rank_pattern_from="sora", pattern_xi=XI))
        _write(tmp_path, _rec("lora", seed, ARMS["b"][seed], r=8, rank_pattern_from="random", pattern_xi=XI))
        _write(tmp_path, _rec("lora", seed, ARMS["c"][seed], r=3))
        _write(tmp_path, _rec("sora", seed, ARMS["d"][seed], xi=0.0, r_max=8))
        _write(tmp_path, _rec("lora", seed, 0.70, r=8))  # not an arm: rank 8 is not the nearest
        _write(tmp_path, _rec("lora", seed, 0.70, r=8, rank_pattern_from="sora", pattern_xi=1e-3))  # another xi
    other = _rec("lora", 0, 0.10, r=3)
    other["identity"]["train"] = {"lr": 5e-4}  # another recipe: never paired
    other["run_id"] += "-otherlr"
    _write(tmp_path, other)
    return load_records(tmp_path, pool_code=True)


def test_every_arm_is_found_per_seed_and_nothing_else(records):
    pairs = arm_runs(records, "mrpc")
    assert sorted(pairs["arm"].value_counts().items()) == [("a", 3), ("b", 3), ("c", 3), ("d", 3)]
    assert set(pairs[pairs.arm == "c"]["arm_sel_score"]) == {80.0, 82.0, 84.0}  # LoRA r = 3, the nearest rank


def test_paired_differences_by_hand(records, tmp_path):
    frame = allocation_frame(records, "mrpc").set_index(["arm", "checkpoint"])
    # (a): SoRA - arm = 1, 2, 3 points: mean 2, 95 % CI 2 ± 4.303 / sqrt 3
    a = frame.loc[("a", "selected")]
    assert a["n_pairs"] == 3 and a["mean_diff"] == pytest.approx(2.0)
    assert (a["ci_low"], a["ci_high"]) == (pytest.approx(-0.484, abs=1e-3), pytest.approx(4.484, abs=1e-3))
    assert a["verdict"].startswith("unresolved")
    # (b): 2, 4, 6: mean 4 ± 4.303 * 2 / sqrt 3 = [-0.97, 8.97]; (c): identical scores: 0 exactly
    assert frame.loc[("b", "selected"), "mean_diff"] == pytest.approx(4.0)
    assert frame.loc[("c", "selected"), "mean_diff"] == 0 and frame.loc[("c", "final"), "mdd"] == 0
    # (d) is higher on every seed by exactly 3, 2, 1 points: resolved only if the interval excludes 0
    d = frame.loc[("d", "selected")]
    assert d["mean_diff"] == pytest.approx(-2.0) and d["verdict"].startswith("unresolved")
    paths = write_allocation(records, "mrpc", tmp_path / "tables")
    text = paths[1].read_text()
    assert "(c) uniform LoRA at the nearest rank" in text and "+2.00 [-0.48, +4.48]" in text


def test_the_pattern_contrasts_by_hand(records, tmp_path):
    """(a) − (b): 79 − 78, 80 − 78, 81 − 78 = 1, 2, 3 points; (a) − (c): 79 − 80, 80 − 82, 81 − 84 = −1, −2, −3."""
    from sora.results.allocation import pattern_frame

    frame = pattern_frame(arm_runs(records, "mrpc"), "mrpc").set_index(["contrast", "checkpoint"])
    ab, ac = frame.loc[("(a) − (b)", "selected")], frame.loc[("(a) − (c)", "final")]
    assert ab["n_pairs"] == 3 and ab["mean_diff"] == pytest.approx(2.0) and ab["seeds"] == "0 1 2"
    assert (ab["ci_low"], ab["ci_high"]) == (pytest.approx(-0.484, abs=1e-3), pytest.approx(4.484, abs=1e-3))
    assert ac["mean_diff"] == pytest.approx(-2.0) and (ab["a_mean"], ab["other_mean"]) == (80.0, 78.0)
    text = write_allocation(records, "mrpc", tmp_path / "tables")[1].read_text()
    assert "## The allocation itself" in text and "| (a) − (b) | selected | 0 1 2 | 80.00 | 78.00 |" in text
