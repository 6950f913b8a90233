"""The evidence table: selected vs final checkpoint, selection protocol named, seed-paired intervals and the
minimum detectable difference, checked against numbers worked out by hand."""

import pandas as pd
import pytest

from sora.records import write_record
from sora.results import load_records
from sora.results.evidence import (
    evidence_frame,
    evidence_pairs,
    final_point,
    paired_stats,
    verdict,
    write_evidence,
)
from tests.fixtures import make_results_fixture as fx

# MRPC accuracy per seed: (selected, final, selected step, final nonzero params)
SORA = {0: (0.80, 0.70, 100, 1000), 1: (0.82, 0.71, 100, 2000), 2: (0.84, 0.72, 100, 3000), 3: (0.82, 0.71, 100, 2000)}
LORA = {0: 0.79, 1: 0.80, 2: 0.81, 3: 0.68}  # seed 3 = the majority-class share: diverged


def _record(method: str, seed: int, sel: float, final: float, best_step: int, final_params: int,
            protocol: str = "best_on_dev") -> dict:
    """A finished MRPC run evaluated at steps 100, 200, 300 (stage 0), selected at ``best_step``."""
    rec = fx.record("mrpc", method, seed, sel)
    rec["run_id"] = f"mrpc-{method}-{protocol}-s{seed}"
    rec["protocol"] = protocol
    rec["config"]["eval"] = {"protocol": protocol}
    retained = 50_000 if method == "sora" else 41_472
    scores = {100: sel if best_step == 100 else sel - 0.05, 200: (sel + final) / 2, 300: final}
    params = {100: retained, 200: (retained + final_params) // 2, 300: final_params}
    rec["evals"] = [{"step": s, "epoch": s / 100, "stage": 0, "select": {"accuracy": v},
                     "report": {"validation": {"accuracy": v}}, "total_rank": 1, "nonzero_params": params[s]}
                    for s, v in scores.items()]
    rec["best"] = {"step": best_step, "rule": "test", "select": {"accuracy": sel},
                   "metrics": {"validation": {"accuracy": sel}}, "main_metric": "accuracy", "main": sel}
    rec["params"]["retained"] = retained
    rec["total_steps"] = 300
    return rec


@pytest.fixture
def records(tmp_path):
    root = tmp_path / "results" / "records"
    for seed, (sel, final, step, n) in SORA.items():
        rec = _record("sora", seed, sel, final, step, n)
        write_record(root / rec["run_id"] / "record.json", rec)
    for seed, v in LORA.items():
        rec = _record("lora", seed, v, v, 300, 41_472)
        write_record(root / rec["run_id"] / "record.json", rec)
    rec = _record("lora", 0, 0.79, 0.79, 300, 41_472, protocol="sora_split")  # selection on held-out rows
    write_record(root / rec["run_id"] / "record.json", rec)
    # a sparsifying-scheduler run is a different experiment: never in the table
    sched = _record("sora", 0, 0.99, 0.99, 300, 1) | {"run_id": "mrpc-sora-sparsify-s0", "scheduler": {"mode": "x"}}
    sched["config"] = {**sched["config"], "scheduler": {"name": "sparsify", "mode": "x"}}
    write_record(root / sched["run_id"] / "record.json", sched)
    return load_records(tmp_path / "results")


def test_paired_interval_and_mdd_by_hand():
    # differences 1, 2, 3: mean 2, sd 1; t_{0.975,2} = 4.303, t_{0.8,2} = 1.061
    s = paired_stats([1.0, 2.0, 3.0])
    assert (s["n_pairs"], s["mean_diff"], s["sd_diff"]) == (3, pytest.approx(2.0), pytest.approx(1.0))
    assert s["ci_low"] == pytest.approx(2 - 4.3027 / 3**0.5, abs=1e-3) == pytest.approx(-0.484, abs=1e-3)
    assert s["ci_high"] == pytest.approx(4.484, abs=1e-3)
    assert s["mdd"] == pytest.approx((4.3027 + 1.0607) / 3**0.5, abs=1e-3) == pytest.approx(3.097, abs=1e-3)
    assert verdict(s) == "unresolved; |Δ| < MDD"  # the interval holds 0, and 2 < 3.097
    tight = paired_stats([0.9, 1.0, 1.1])  # 1 ± 4.303 · 0.1 / √3: resolved, and 1 > MDD 0.31
    assert tight["ci_low"] > 0 and verdict(tight, "SoRA", "LoRA") == "SoRA higher"
    assert verdict(paired_stats([-1.3, -1.0, -1.2]), "SoRA", "LoRA") == "LoRA higher"
    assert verdict(paired_stats([5.0])) == "too few pairs (n=1)"


def test_selected_vs_final_and_protocol(records):
    frame = evidence_frame(records, "mrpc").set_index("label")
    sora = frame.loc[next(lab for lab in frame.index if lab.startswith("SoRA"))]
    # selected: 80, 82, 84, 82 at step 100 with 50,000 params; final (step 300): 70, 71, 72, 71 with the last
    # evaluation's own nonzero params 1000, 2000, 3000, 2000
    assert sora["selected"] == pytest.approx(82.0) and sora["selected_std"] == pytest.approx((8 / 3) ** 0.5)
    assert sora["selected_params"] == 50_000 and sora["final_params"] == pytest.approx(2000)
    assert sora["final"] == pytest.approx(71.0) and sora["optimism"] == pytest.approx(11.0)
    assert sora["selected_early"] == 4
    assert sora["selection_note"] == "selected before the end in 4/4 seeds (step 100 of 300)"
    assert sora["selection_rows"] == "same rows (optimistic)" and sora["n"] == 4
    lora = frame.loc[[lab for lab in frame.index if "best_on_dev" in lab and lab.startswith("LoRA")][0]]
    # the diverged seed 3 (68.0 <= 68.38 + 1) is named and in neither mean
    assert lora["diverged"] == "3" and lora["n"] == 3 and lora["seeds"] == "0 1 2 3"
    assert lora["selected"] == pytest.approx(80.0) and lora["final"] == pytest.approx(80.0)
    assert lora["selection_note"] == "at the end in 3/3 seeds" and lora["optimism"] == pytest.approx(0.0)
    held = frame.loc[[lab for lab in frame.index if "sora_split" in lab][0]]
    assert held["selection_rows"] == "held-out"
    assert not any("sparsify" in lab for lab in frame.index)


def test_pairs_use_shared_non_diverged_seeds(records):
    pairs = evidence_pairs(records, "mrpc")
    lora = next(lab for lab in records.frame["label"] if "best_on_dev" in lab and lab.startswith("LoRA"))
    sel = pairs[(pairs.b == lora) & (pairs.checkpoint == "selected")].iloc[0]
    # SoRA − LoRA on seeds 0, 1, 2 (LoRA's seed 3 diverged): 80−79, 82−80, 84−81 = 1, 2, 3, the hand example
    assert sel["seeds"] == "0 1 2" and sel["n_pairs"] == 3
    assert (sel["mean_diff"], sel["ci_low"], sel["mdd"]) == (pytest.approx(2.0), pytest.approx(-0.484, abs=1e-3),
                                                             pytest.approx(3.097, abs=1e-3))
    assert sel["verdict"] == "unresolved; |Δ| < MDD"
    fin = pairs[(pairs.b == lora) & (pairs.checkpoint == "final")].iloc[0]
    assert fin["mean_diff"] == pytest.approx(-9.0) and fin["verdict"] == "b higher"  # 70−79, 71−80, 72−81
    held = pairs[pairs.b.str.contains("sora_split")]
    assert set(held["verdict"]) == {"too few pairs (n=1)"}  # only seed 0 in common
    assert set(pairs["a"]) == {next(lab for lab in records.frame["label"] if lab.startswith("SoRA"))}
    explicit = evidence_pairs(records, "mrpc", pairs=[(lora, sel["a"])])
    assert len(explicit) == 2 and explicit.iloc[0]["mean_diff"] == pytest.approx(-2.0)


def test_no_gate_column_without_verdicts(records):
    records.frame = records.frame.drop(columns=["gate_verdict", "gate_warning"], errors="ignore")
    assert "gate_null" not in evidence_frame(records, "mrpc").columns


def test_gate_verdict_counted_when_present(records):
    verdicts = {0: "indistinguishable from the null", 1: "data-dependent", 2: "indistinguishable from the null",
                3: "data-dependent"}
    records.frame["gate_verdict"] = [verdicts[s] if m == "sora" else float("nan")
                                     for m, s in zip(records.frame["method"], records.frame["seed"])]
    frame = evidence_frame(records, "mrpc").set_index("method")
    assert frame.loc["sora", "gate_null"] == "null 2/4"
    assert set(frame.loc["lora", "gate_null"]) == {""}


def test_undefined_final_counts_as_constant():
    rec = _record("sora", 0, 0.8, 0.7, 100, 0)
    rec["evals"][-1]["report"] = {"validation": {"pearson": None}}
    point = final_point(rec, "stsb")  # Pearson of a constant prediction: 0, named, never dropped
    assert point["final_undefined"] and point["final_score"] == 0.0 and point["end_step"] == 300


def test_write_evidence(records, tmp_path):
    paths = write_evidence(records, "mrpc", tmp_path / "tables")
    assert [p.name for p in paths] == ["evidence_mrpc.md", "evidence_mrpc.csv", "evidence_pairs_mrpc.csv"]
    md = paths[0].read_text()
    assert "same rows (optimistic)" in md and "held-out" in md and "(step 100 of 300)" in md
    assert "MDD = (t_{1-α/2, n-1} + t_{power, n-1}) · sd_d / √n" in md
    assert "unresolved; \\|Δ\\| < MDD" in md  # pipes escaped inside the Markdown table
    sora_line = next(line for line in md.splitlines() if line.startswith("| SoRA"))
    assert "| 82.00 ± 1.63 | 50,000 |" in sora_line and "| 71.00 ± 0.82 | 2,000 | +11.00 |" in sora_line
    rows, pairs = pd.read_csv(paths[1]), pd.read_csv(paths[2])
    assert len(rows) == 3 and set(pairs["checkpoint"]) == {"selected", "final"}
