"""The aggregator on hand-made records (tests/fixtures/results): values worked out by hand."""

import math
import sys

import pytest
from scipy.stats import t as student_t

from sora.results import (
    curve_frame,
    load_records,
    plot_rank_heatmaps,
    plot_rank_over_training,
    plot_sparsify_curves,
    rank_frame,
)
from sora.results.tables import cost_table, render_table1_markdown, significance, table1, write_tables
from tests import script_process
from tests.conftest import FIXTURES, ROOT

RESULTS = FIXTURES / "results"


@pytest.fixture(scope="module")
def records():
    return load_records(RESULTS)


def test_unreadable_and_unfinished_records_are_listed_not_counted(records):
    assert len(records) == 19  # 17 Table-1 runs + 2 sparsifying-scheduler runs
    problems = dict((p.split("/records/")[1].split("/")[0], why) for p, why in records.problems)
    assert set(problems) == {"cola-sora-deberta_v3_base-s81-corrupt0000", "mrpc-sora-deberta_v3_base-s81-failed0000"}
    assert "unreadable" in problems["cola-sora-deberta_v3_base-s81-corrupt0000"]
    assert "failed" in problems["mrpc-sora-deberta_v3_base-s81-failed0000"]


def test_table1_means_stds_counts_and_missing_seed(records):
    t1 = table1(records, expected_seeds=[0, 21, 42]).set_index("method")
    sora, lora, ada = t1.loc["SoRA (r_max=8, code)"], t1.loc["LoRA (r=8)"], t1.loc["AdaLoRA (12->8)"]
    # SoRA MRPC: 88, 89, 90 -> mean 89, sample std 1; CoLA 60, 62, 64 -> 62, std 2
    assert (sora["mrpc.mean"], sora["mrpc.std"], sora["mrpc.n"]) == pytest.approx((89.0, 1.0, 3))
    assert (sora["cola.mean"], sora["cola.std"]) == pytest.approx((62.0, 2.0))
    # LoRA MRPC: 87, 87.5, 88 -> 87.5, std 0.5; paper 89.95 -> delta -2.45
    assert (lora["mrpc.mean"], lora["mrpc.std"], lora["mrpc.paper"]) == pytest.approx((87.5, 0.5, 89.95))
    assert lora["mrpc.delta"] == pytest.approx(-2.45)
    # AdaLoRA MRPC: seed 42 missing -> 86, 87: mean 86.5, std sqrt(0.5), n 2, flagged
    assert (ada["mrpc.mean"], ada["mrpc.std"], ada["mrpc.n"]) == pytest.approx((86.5, math.sqrt(0.5), 2))
    assert ada["mrpc.missing_seeds"] == "42" and sora["mrpc.missing_seeds"] == ""
    assert math.isnan(sora["mrpc.paper"])  # SoRA's published row is empty (not retrieved): never invented
    assert math.isnan(sora["sst2.mean"]) and sora["sst2.n"] == 0


def test_markdown_shows_ours_beside_the_paper(records):
    md = render_table1_markdown(table1(records, expected_seeds=[0, 21, 42]), significance(records))
    row = next(line for line in md.splitlines() if line.startswith("| LoRA (r=8)"))
    assert "87.50 ± 0.50 (n=3) · paper 89.95 · Δ -2.45" in row
    ada = next(line for line in md.splitlines() if line.startswith("| AdaLoRA"))
    assert "missing seed 42" in ada
    assert "| — · paper 90.76 |" in ada  # MNLI: no run, shown as missing beside the paper's number


def test_welch_p_value_by_hand(records):
    sig = significance(records)
    row = sig[(sig.task == "mrpc") & (sig.baseline == "AdaLoRA (12->8)")].iloc[0]
    # SoRA 88,89,90 (var 1, n 3) vs AdaLoRA 86,87 (var 0.5, n 2)
    se2 = 1 / 3 + 0.5 / 2
    t_stat = (89 - 86.5) / math.sqrt(se2)
    dof = se2 ** 2 / ((1 / 3) ** 2 / 2 + (0.5 / 2) ** 2 / 1)
    assert row["p_welch"] == pytest.approx(2 * student_t.sf(t_stat, dof), rel=1e-9)
    assert row["diff"] == pytest.approx(2.5)


def test_cost_table_time_fraction(records):
    cost = cost_table(records).set_index(["task", "method"])
    # wall time = base + seed / 21: SoRA cola (70 + 71 + 72) / 3 = 71, AdaLoRA cola 101 -> 71 / 101
    assert cost.loc[("cola", "sora"), "time_vs_adalora"] == pytest.approx(71 / 101)
    assert cost.loc[("cola", "lora"), "rank_kept_frac"] == 1.0


def test_rank_frame_and_plots(records, tmp_path):
    ranks = rank_frame(records)
    assert len(ranks) == 19 * 72 and set(ranks["matrix"]) == {"Q", "K", "V", "AO", "I", "O"}
    heat = plot_rank_heatmaps(records, "mrpc", tmp_path)
    curves = curve_frame(records)
    assert sorted(curves["mode"].unique()) == ["retrain", "shrink_only"] and len(curves) == 10
    heat += plot_sparsify_curves(records, "mrpc", tmp_path)
    curve = plot_rank_over_training(records, "mrpc", tmp_path)
    for path in heat + curve:
        assert path.stat().st_size > 1000
    assert heat[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_write_tables_and_cli(records, tmp_path):
    paths = write_tables(records, tmp_path / "tables")
    assert "problems.txt" in paths and "corrupt0000" in paths["problems.txt"].read_text()
    assert "\\begin{tabular}" in paths["table1.tex"].read_text()
    res = script_process.run([sys.executable, str(ROOT / "scripts" / "aggregate.py"), "--results", str(RESULTS),
                          "--out", str(tmp_path / "cli")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-1500:]
    assert "not counted:" in res.stdout and (tmp_path / "cli" / "plots" / "ranks_mrpc.png").exists()
