"""The sparsifying scheduler: ξ lists by formula, lr 0 in shrink_only, fresh schedules in retrain, 100% refs."""

import math

import numpy as np
import pytest

from sora.config import load_config
from sora.errors import UserError
from sora.train.loop import train
from sora.train.sparsify import normalise_curve, xi_list


def test_xi_lists_match_the_released_formulas():
    # linspace(0, 7e-4, 7): steps of 7e-4 / 6
    assert xi_list(0.0, 7e-4, 7, "linear") == pytest.approx([i * 7e-4 / 6 for i in range(7)])
    # log(linspace(e^0, e^1, 3)) = [0, log((1 + e) / 2), 1]
    assert xi_list(0.0, 1.0, 3, "log_linear") == pytest.approx([0.0, math.log((1 + math.e) / 2), 1.0])
    # exp(linspace(log 1e-4, log 1e-2, 3)) = [1e-4, 1e-3, 1e-2]
    assert xi_list(1e-4, 1e-2, 3, "exp_linear") == pytest.approx([1e-4, 1e-3, 1e-2])


def test_exp_linear_rejects_xi0_zero():
    with pytest.raises(UserError, match="exp_linear takes log"):
        xi_list(0.0, 1e-3, 4, "exp_linear")
    with pytest.raises(UserError, match="schedule must be one of"):
        xi_list(0.0, 1e-3, 4, "cosine")


def test_normalise_curve_divides_by_the_dense_best():
    curve = normalise_curve([{"dev": 0.45, "train": 0.8}, {"dev": 0.5, "train": None}], ref_dev=0.5, ref_train=0.8)
    assert curve[0]["generalization"] == pytest.approx(90.0) and curve[0]["memorization"] == pytest.approx(100.0)
    assert math.isnan(curve[1]["memorization"])


def _run(tmp_path, mode, extra=(), method=("method=sora", "method.variant=code")):
    overrides = [f"results_dir={tmp_path}/{mode}", "task=mrpc", *method, "model=tiny", "scheduler=sparsify",
                 f"scheduler.mode={mode}", "scheduler.xi_max=0.3", "scheduler.n_stages=4",
                 "scheduler.stage_max_steps=8", "train.max_steps=12", "train.eval_steps=4", "train.batch_size=8",
                 "data.max_len=64", "progress=false", f"data.dir={_fixture()}",
                 "train.schedule=standard",  # a schedule over these few steps (the release's follows the epochs)
                 *extra]
    return train(load_config(overrides))


def _fixture():
    from tests.conftest import GLUE_FIXTURE

    return GLUE_FIXTURE


@pytest.mark.slow
def test_shrink_only_runs_stages_at_lr_zero_and_never_regrows(tmp_path):
    rec = _run(tmp_path, "shrink_only")
    curve = rec["curve"]
    stages = [p["stage"] for p in curve]
    assert stages == [0, 0, 0] + [1] * 3 + [2] * 2 + [3] * 2  # dense evals, stage-1 start point, 2 evals/stage
    later = [p for p in curve if p["stage"] > 0]
    assert all(p["lr"] == 0.0 for p in later)
    nonzero = [p["nonzero_params"] for p in later]
    assert all(b <= a for a, b in zip(nonzero, nonzero[1:])) and nonzero[-1] < nonzero[0]
    assert [p["xi"] for p in curve if p["stage"] == 3][0] == pytest.approx(0.3)
    # stage 1 starts from the dense best checkpoint itself: exactly the references
    start = later[0]
    assert start["generalization"] == pytest.approx(100.0) and start["memorization"] == pytest.approx(100.0)
    assert rec["scheduler"]["mode"] == "shrink_only" and rec["scheduler"]["stage_steps"] == [12, 8, 8, 8]
    for key in ("stage", "step", "xi", "lr", "nonzero_params", "memorization", "generalization", "ranks"):
        assert key in curve[-1]


@pytest.mark.slow
def test_shrink_only_is_at_lr_zero_with_the_release_schedule_cut_by_max_steps(tmp_path):
    """train.max_steps=12 with train.schedule=sora_release: the release's schedule over its epochs would be
    thousands of steps long and leave the stages at lr > 0; cut with the run, it ends at 0 where the run does."""
    rec = _run(tmp_path, "shrink_only", extra=("train.schedule=sora_release",))
    assert rec["formulas"]["schedule"] == "sora_release" and rec["formulas"]["schedule_length"] == 12
    assert all(p["lr"] == 0.0 for p in rec["curve"] if p["stage"] > 0)


@pytest.mark.slow
def test_retrain_trains_every_stage_with_a_fresh_schedule(tmp_path):
    rec = _run(tmp_path, "retrain")
    later = [p for p in rec["curve"] if p["stage"] > 0]
    # every point after a stage step trains (the stage-1 start point, before any step, sits at warmup's lr 0)
    assert all(p["lr"] > 0 for p in later[1:]) and later[0]["step"] == 12
    # a fresh warmup + decay: the lr at each stage's first eval (step 4 of 8) is the same in every stage
    first = [next(p["lr"] for p in later if p["stage"] == k and p["step"] > 12 + 8 * (k - 1)) for k in (1, 2, 3)]
    assert np.allclose(first, first[0])


def test_scheduler_refuses_combinations_that_cannot_work(tmp_path):
    with pytest.raises(UserError, match="needs a method with a threshold to raise, e.g. method=sora"):
        _run(tmp_path, "shrink_only", method=("method=lora",))
    with pytest.raises(UserError, match="paper variant's threshold"):
        _run(tmp_path, "shrink_only", method=("method=sora", "method.variant=paper"))
