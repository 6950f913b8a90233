"""A table cell is n seeds of one configuration: no pooling, no double counting, failures and gaps shown."""

import math
import shutil
import sys

import pytest
from scipy.stats import t as student_t

from sora.errors import UserError
from sora.records import write_record
from sora.results import load_records
from sora.results.tables import render_table1_markdown, significance, table1
from tests import script_process
from tests.conftest import FIXTURES, ROOT
from tests.fixtures import make_results_fixture as fx


@pytest.fixture
def results(tmp_path):
    out = tmp_path / "results"
    shutil.copytree(FIXTURES / "results", out)
    return out


def _write(results, rec):
    write_record(results / "records" / rec["run_id"] / "record.json", rec)


def _sora_mrpc(seed, value, run_id, **config):
    rec = fx.record("mrpc", "sora", seed, value)
    rec["run_id"] = run_id
    for dotted, v in config.items():
        node = rec["config"]
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return rec


def test_other_configs_get_their_own_rows_never_pooled(results):
    """The issue's case: xi = 1e-3 and protocol sora_split beside the fixture turned 89.0 (n=3) into 86.4 (n=5)."""
    _write(results, _sora_mrpc(0, 0.80, "mrpc-sora-x-s0-xi", method__xi=1e-3))
    _write(results, _sora_mrpc(0, 0.82, "mrpc-sora-x-s0-split", eval__protocol="sora_split"))
    t1 = table1(load_records(results)).set_index("method")
    base = "SoRA (r_max=8, code) [eval.protocol=best_on_dev, method.xi=0.0003]"
    assert (t1.loc[base, "mrpc.mean"], t1.loc[base, "mrpc.n"]) == pytest.approx((89.0, 3))
    assert t1.loc["SoRA (r_max=8, code) [eval.protocol=best_on_dev, method.xi=0.001]", "mrpc.mean"] == 80.0
    assert t1.loc["SoRA (r_max=8, code) [eval.protocol=sora_split, method.xi=0.0003]", "mrpc.mean"] == 82.0
    assert t1.loc["LoRA (r=8)", "mrpc.n"] == 3  # rows of other methods keep their plain labels


def test_a_duplicate_config_and_seed_is_an_error(results):
    _write(results, _sora_mrpc(0, 0.70, "mrpc-sora-copy-s0"))  # same configuration and seed as the fixture's
    with pytest.raises(UserError, match="two finished runs of one configuration and seed"):
        load_records(results)
    res = script_process.run([sys.executable, str(ROOT / "scripts" / "aggregate.py"), "--results", str(results)],
                         capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "mrpc-sora-copy-s0" in res.stderr
    assert "Traceback" not in res.stderr


def test_missing_seeds_come_from_the_sweep_and_failures_show_in_the_cell(results):
    records = load_records(results)
    t1 = table1(records).set_index("method")  # no expected seeds passed: the sweep's [0, 21, 42] are used
    sora = t1.loc["SoRA (r_max=8, code)"]
    assert t1.loc["AdaLoRA (12->8)", "mrpc.missing_seeds"] == "42"
    assert sora["mrpc.failed"] == 1 and sora["mrpc.n"] == 3  # seed 81 failed: counted as failed, not averaged in
    md = render_table1_markdown(table1(records), significance(records))
    row = next(line for line in md.splitlines() if line.startswith("| SoRA"))
    assert "89.00 ± 1.00 (n=3, 1 failed)" in row
    ada = next(line for line in md.splitlines() if line.startswith("| AdaLoRA"))
    assert "(n=2, missing seed 42)" in ada


def test_runs_of_other_code_are_not_pooled_unless_asked(results):
    rec = _sora_mrpc(81, 0.95, "mrpc-sora-newcode-s81")
    rec["git"] = {"commit": "0123456789abcdef", "dirty": False}
    _write(results, rec)
    t1 = table1(load_records(results)).set_index("method")
    assert t1.loc["SoRA (r_max=8, code) [code.commit=01234567]", "mrpc.n"] == 1
    assert t1.loc["SoRA (r_max=8, code) [code.commit=—]", "mrpc.n"] == 3
    pooled = table1(load_records(results, pool_code=True)).set_index("method")
    assert pooled.loc["SoRA (r_max=8, code)", "mrpc.n"] == 4


def test_paired_tests_over_shared_seeds_by_hand(tmp_path):
    for seed, (s, b) in zip((0, 21, 42), ((0.60, 0.58), (0.62, 0.61), (0.65, 0.62))):
        for method, value in (("sora", s), ("lora", b)):
            rec = fx.record("cola", method, seed, value)
            write_record(tmp_path / "records" / rec["run_id"] / "record.json", rec)
    row = significance(load_records(tmp_path)).iloc[0]
    # differences 2, 1, 3: mean 2, sd 1 -> t = 2 / (1 / sqrt 3) with 2 dof; Wilcoxon, 3 positive pairs: 2 / 8
    t_stat = 2 / (1 / math.sqrt(3))
    assert row["test"] == "paired" and row["n_pairs"] == 3
    assert row["p_paired_t"] == pytest.approx(2 * student_t.sf(t_stat, 2), rel=1e-9)
    assert row["p_wilcoxon"] == pytest.approx(0.25)
    assert row["p"] == row["p_paired_t"] and math.isnan(row["p_welch"])


def test_a_diverged_seed_is_named_and_not_averaged_in(results):
    """MRPC's majority class is 68.38 % of dev (279 / 408): a finished run at 68.63 learned nothing."""
    _write(results, _sora_mrpc(63, 0.6863, "mrpc-sora-diverged-s63"))
    records = load_records(results)
    sora = table1(records).set_index("method").loc["SoRA (r_max=8, code)"]
    assert (sora["mrpc.mean"], sora["mrpc.n"], sora["mrpc.diverged"], sora["mrpc.failed"]) == (
        pytest.approx(89.0), 3, 1, 1)
    row = next(line for line in render_table1_markdown(table1(records)).splitlines() if line.startswith("| SoRA"))
    assert "89.00 ± 1.00 (n=3, 1 failed, 1 diverged" in row
    sig = significance(records)
    assert set(sig[sig.task == "mrpc"]["n_sora"]) == {3}  # nor does it enter a test
