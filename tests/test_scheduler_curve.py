"""The scheduler's curve table against hand values: each stage's last point, the largest uniform LoRA rank that fits
its budget (a LoRA run on a rank pattern is not uniform), and the seed-paired difference with its interval."""

import pytest

from sora.records import write_record
from sora.results import load_records
from sora.results.scheduler_curve import curve_table, render, write_scheduler_curve
from tests.fixtures import make_results_fixture as fx

# (stage, xi, nonzero params, dev, train) per curve point; two points in stage 1: the last one counts
CURVE = [(0, 0.0, 400, 0.80, 0.90), (1, 1e-4, 300, 0.70, 0.80), (1, 1e-4, 150, 0.75, 0.85)]
SHIFT = {0: 0.00, 1: 0.02}  # seed 1 scores 2 points higher everywhere


def _lora(seed: int, r: int, value: float, params: int, pattern: str | None = None, recipe=None) -> dict:
    rec = fx.record("mrpc", "lora", seed, value)
    rec["run_id"] = f"mrpc-lora-r{r}{pattern or ''}{'x' if recipe else ''}-s{seed}"
    if recipe:
        rec["config"]["data"] = recipe
    rec["config"]["method"] = {**rec["config"]["method"], "r": r, "rank_pattern_from": pattern}
    for e in rec["evals"]:
        e["nonzero_params"] = params
    rec["params"]["retained"] = params
    return rec


def _scheduler(seed: int) -> dict:
    rec = fx.record("mrpc", "sora", seed, 0.8)
    rec["run_id"] = f"mrpc-sora-sparsify-s{seed}"
    rec["scheduler"] = {"mode": "retrain"}
    rec["config"]["scheduler"] = {"name": "sparsify", "mode": "retrain"}
    rec["curve"] = [{"stage": s, "step": i, "xi": xi, "nonzero_params": n, "total_rank": n // 10,
                     "dev": dev + SHIFT[seed], "train": tr} for i, (s, xi, n, dev, tr) in enumerate(CURVE)]
    return rec


@pytest.fixture
def records(tmp_path):
    root = tmp_path / "results" / "records"
    recs = [_scheduler(0), _scheduler(1)]
    for seed in (0, 1):
        recs += [_lora(seed, 1, 0.71 + 0.03 * seed, 100), _lora(seed, 4, 0.78, 400),
                 _lora(seed, 8, 0.99, 140, pattern="random"),  # fits stage 1's budget, but not uniform
                 _lora(seed, 2, 0.99, 150, recipe={"group_by_length": False})]  # fits, but another recipe
    for rec in recs:
        write_record(root / rec["run_id"] / "record.json", rec)
    return load_records(tmp_path / "results")


def test_stage_ends_pair_with_the_largest_uniform_rank_that_fits(records):
    table = curve_table(records, "mrpc").set_index("stage")
    assert list(table.index) == [0, 1]
    s0, s1 = table.loc[0], table.loc[1]
    assert s0.nonzero_params == 400 and s0.dev == pytest.approx(81.0) and s0.train == pytest.approx(90.0)
    assert s1.nonzero_params == 150 and s1.dev == pytest.approx(76.0)  # (75 + 77) / 2: the stage's last point
    assert "r=4" in s0.lora and s0.lora_params == 400  # 400 fits a 400 budget
    assert "r=1" in s1.lora and s1.lora_params == 100  # r 4 too large, the pattern not uniform, r 2 another recipe
    # stage 1 − LoRA r 1: seed 0: 75 − 71 = 4, seed 1: 77 − 74 = 3 -> mean 3.5, sd 0.7071, t(0.975, 1) = 12.706
    assert s1.n_pairs == 2 and s1.mean_diff == pytest.approx(3.5)
    assert s1.ci_high - s1.mean_diff == pytest.approx(12.7062 * 0.70711 / 2 ** 0.5, rel=1e-4)


def test_written_only_where_the_scheduler_ran(records, tmp_path):
    paths = write_scheduler_curve(records, "mrpc", tmp_path / "tables")
    assert [p.name for p in paths] == ["sparsify_curve_mrpc.md", "sparsify_curve_mrpc.csv"]
    assert "+3.50 [" in paths[0].read_text() and "(n = 2)" in render(curve_table(records, "mrpc"), "mrpc")
    assert write_scheduler_curve(records, "cola", tmp_path / "other") == []
