"""SoRA's gate diagnostics: the null model (gates with no task gradient) against a scalar transcription of the
formulas and a closed form, the verdict rule on hand-made records, and the diagnostics in real runs' records,
in a stock Trainer, and on the committed MiniLM frontier."""

import json
import math
from pathlib import Path

import pytest
import torch
from scipy.stats import norm

from sora.diagnostics.null import GateRecipe, expected_kept, simulate
from sora.diagnostics.verdict import DATA, NO_PRUNING, NULL, growth_warning, record_diagnostics
from sora.optim import SchedulePlan
from sora.tuners.sora.config import SoraConfig

ROOT = Path(__file__).resolve().parents[1]


def _recipe(xi, l1=1.0, lr=0.01, steps=10, n=2, optimizer="adamw_hf_legacy", warmup=0):
    config = SoraConfig(r_max=n, xi=xi, variant="code", l1_coef=l1)
    return GateRecipe(config=config, optimizer=optimizer, lr=lr, adam_betas=(0.9, 0.999), adam_eps=1e-8,
                      plan=SchedulePlan(steps, warmup, warmup), steps=steps, n_gates=n)


def _by_hand(g, lr, xi, l1, steps):
    """Two gates, scalar arithmetic: the release's L1 gradient l1 * sign(g) / n, transformers 4.x AdamW with the
    gate group's eps 1e-6 (denom sqrt(v) + eps, both bias corrections in the step size), then the release's three
    masks in sequence (p > xi: -= xi; p < -xi: += xi; |p| < xi: = 0)."""
    n, b1, b2, eps = len(g), 0.9, 0.999, 1e-6
    m, v, out = [0.0] * n, [0.0] * n, []
    for t in range(1, steps + 1):
        for i in range(n):
            grad = l1 * ((g[i] > 0) - (g[i] < 0)) / n
            m[i] = b1 * m[i] + (1 - b1) * grad
            v[i] = b2 * v[i] + (1 - b2) * grad * grad
            size = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
            g[i] -= size * m[i] / (math.sqrt(v[i]) + eps)
            if g[i] > xi:
                g[i] -= xi
            elif g[i] < -xi:
                g[i] += xi
            if abs(g[i]) < xi:
                g[i] = 0.0
        out.append(list(g))
    return out


def test_null_model_equals_a_hand_computed_two_gate_trajectory():
    recipe = _recipe(xi=0.02, lr=0.01, steps=12)
    lrs = [0.01] * 12
    got = simulate(torch.tensor([0.5, 0.06]), recipe, range(13), lrs=lrs)
    want = _by_hand([0.5, 0.06], 0.01, 0.02, 1.0, 12)
    for t in range(1, 13):
        assert got[t].tolist() == pytest.approx(want[t - 1], abs=1e-6)
    # by hand: step 1 moves each gate ~lr toward 0, then the prox takes xi: 0.5 -> 0.47, 0.06 -> 0.03
    assert got[1].tolist() == pytest.approx([0.47, 0.03], abs=1e-4)
    # step 2: 0.03 - 0.01 = 0.02 (+ a hair: Adam's eps) -> 0.02 - xi < xi -> exactly 0; Adam's momentum never
    # carries it past 2 xi again
    assert got[2][1].item() == 0.0 and all(got[t][1].item() == 0.0 for t in range(2, 13))
    assert got[12][0].item() == pytest.approx(0.5 - 12 * 0.03, abs=1e-3)


def test_expected_kept_matches_the_closed_form_of_a_prox_only_run():
    """No L1 term: only the release prox moves a gate: |g| > 2 xi -> |g| - xi, else 0. After t steps a gate lives
    iff |g0| > (t + 1) xi, so with g0 ~ N(0, 1) the kept share is 2 (1 - Phi((t + 1) xi))."""
    xi, n = 0.01, 288
    recipe = _recipe(xi=xi, l1=0.0, steps=100, n=n)
    got = expected_kept(recipe, [10, 50, 100])
    for t in (10, 50, 100):
        p = 2 * (1 - norm.cdf((t + 1) * xi))
        assert got[t][0] == pytest.approx(n * p, abs=0.01 * n)
        assert got[t][1] == pytest.approx(math.sqrt(n * p * (1 - p)), rel=0.05)


def test_growth_warning_fires_exactly_when_xi_reaches_the_gate_lr():
    assert growth_warning("code", 1e-3, 1e-3) and growth_warning("code", 8e-3, 1e-3)
    assert growth_warning("code", 3e-4, 8e-4) is None and growth_warning("code", 0.0, 1e-3) is None
    assert growth_warning("paper", 1e-4, 1e-3) is None and growth_warning("paper", 2.0, 1e-3)


def _record(observed, xi=3e-4, lr=1e-3, steps=300, n=96, gates=None):
    """A finished SoRA record with just what the diagnostics read (as a run of the loop writes it)."""
    rec = {"method": "sora", "total_steps": steps, "best": {"step": observed[-1][0]},
           "config": {"method": {"r_max": 8, "lora_alpha": 16, "xi": xi, "variant": "code", "gate_init": None,
                                 "l1_coef": 10, "gate_lr": None, "prox": None},
                      "train": {"lr": lr, "adam_betas": [0.9, 0.999], "adam_eps": 1e-8, "warmup": 0.06,
                                "batch_size": 32, "epochs": 3, "schedule": "standard"}},
           "formulas": {"optimizer": "adamw", "schedule_length": steps, "schedule_warmup": 18,
                        "schedule_gate_warmup": 18},
           "params": {"max_rank": n}, "evals": [{"step": s, "total_rank": k, "stage": 0} for s, k in observed]}
    if gates:
        rec["gates"] = gates
    return rec


def test_verdict_rule_on_hand_made_records():
    base = _record([(100, 0), (200, 0), (300, 0)])
    null = {e["step"]: e["null"] for e in record_diagnostics(base)["evals"]}
    assert 0 < null[300] < null[100] < 96  # the null prunes on its own timetable
    follows = record_diagnostics(_record([(s, round(k)) for s, k in null.items()]))
    assert follows["verdict"] == NULL and follows["init"].startswith("expected")
    assert all(e["within"] for e in follows["evals"])
    keeps_more = record_diagnostics(_record([(100, 96), (200, 96), (300, 90)]))
    assert keeps_more["verdict"] == DATA and not keeps_more["evals"][-1]["within"]
    # xi = 0: the prox never zeroes a gate, and the run kept everything: nothing to judge
    assert record_diagnostics(_record([(100, 96), (300, 96)], xi=0.0))["verdict"] == NO_PRUNING
    # records of other methods get none
    assert record_diagnostics({"method": "lora", "evals": [{"step": 1}]}) is None


def test_stored_gates_judge_the_kept_set_not_only_its_size():
    """Same kept count as the null, but the data kept the *small* initial gates: data-dependent."""
    init = torch.linspace(-2, 2, 96)
    rec = _record([(300, 0)], gates={"init": init.tolist(), "trace": []})
    null_kept = int(record_diagnostics(rec)["evals"][0]["null"])
    assert 0 < null_kept < 96
    order = init.abs().argsort()  # smallest |g0| first
    same_set = torch.zeros(96)
    same_set[order[-null_kept:]] = 1.0  # the largest |g0| survive, as the null says
    other_set = torch.zeros(96)
    other_set[order[:null_kept]] = 1.0  # the smallest survive instead
    for values, verdict, auc in ((same_set, NULL, 1.0), (other_set, DATA, 0.0)):
        rec = _record([(300, null_kept)], gates={"init": init.tolist(),
                                                   "trace": [{"step": 300, "values": values.tolist()}]})
        diag = record_diagnostics(rec)
        assert diag["verdict"] == verdict and diag["init_rank_auc"] == pytest.approx(auc, abs=0.02)


@pytest.mark.slow
def test_a_run_records_its_gates_and_their_verdict(tmp_path):
    from sora.config import load_config
    from sora.train.loop import train
    from tests.conftest import GLUE_FIXTURE

    cfg = load_config(["experiment=controlled_table1", "task=mrpc", "model=tiny", f"data.dir={GLUE_FIXTURE}",
                       "train.max_steps=12", "train.eval_steps=6", "progress=false", "data.max_len=64",
                       f"results_dir={tmp_path}", "method=sora", "method.xi=0.3"])
    rec = train(cfg)
    gates, diag = rec["gates"], rec["gate_diagnostics"]
    assert len(gates["init"]) == 96 == len(gates["modules"]) * gates["r_max"]
    assert [t["step"] for t in gates["trace"]] == [6, 12]
    assert [sum(v != 0 for v in t["values"]) for t in gates["trace"]] == [e["total_rank"] for e in rec["evals"]]
    # xi = 0.3 >= lr 2.2e-3: the gates cannot grow, and the null from the stored init predicts every gate
    assert diag["warnings"] and diag["verdict"] == NULL and diag["null_set_agreement"] == 1.0
    assert json.loads(json.dumps(rec))["gate_diagnostics"]["verdict"] == NULL  # stored as plain JSON


def test_the_committed_frontier_is_flagged():
    """results/minilm_frontier (stores no gate values): every SoRA point of MRPC and STS-B, and CoLA at
    xi >= 1e-4, prune as the null model predicts; xi >= the lr (1e-3) also gets the growth warning."""
    from sora.results.frontier import frontier_frame
    from sora.results.load import load_records

    records = load_records(ROOT / "results" / "minilm_frontier", pool_code=True)
    for task in ("mrpc", "stsb", "cola"):
        frame = frontier_frame(records, task)
        sora = frame[frame.method == "sora"]
        assert len(sora) == 6
        for r in sora.itertuples():
            xi = float(r.label.split("method.xi=")[1].rstrip("]"))
            assert r.gate_null == ("3/3" if task != "cola" or xi >= 1e-4 else "0/3"), (task, xi)
            assert r.gates_cannot_grow == (xi >= 1e-3), (task, xi)
        assert set(frame[frame.method != "sora"]["gate_null"]) == {""}


def test_a_stock_trainer_with_no_task_gradient_is_exactly_its_null_model(tmp_path):
    """The Trainer callback's diagnostics: with the task loss multiplied by 0 the gates see only the L1 term, so
    the null model (replaying the Trainer's own gate lrs and optimizer formula) must predict every gate."""
    from transformers import Trainer

    from sora import SoraCallback, sora_optimizer
    from tests.test_hf_trainer import _args, _bert, _rows, _sora

    model = _sora(_bert(), xi=1e-3, scale=0.5)
    args = _args(tmp_path, max_grad_norm=0.0, warmup_steps=5, eval_strategy="steps", eval_steps=20)
    trainer = Trainer(model=model, args=args, train_dataset=_rows(200), eval_dataset=_rows(8),
                      optimizers=(sora_optimizer(model, args), None),
                      compute_loss_func=lambda outputs, labels, num_items_in_batch=None: outputs.logits.sum() * 0)
    SoraCallback.attach(trainer)
    trainer.train()
    diag = json.loads((tmp_path / "sora_diagnostics.json").read_text())
    steps = [e["step"] for e in diag["evals"]]
    assert steps == sorted(steps) and steps[-1] == 50 and {20, 40} <= set(steps)
    assert diag["init"] == "stored" and diag["null_set_agreement"] == 1.0
    assert all(e["observed"] == e["null"] for e in diag["evals"]) and diag["evals"][-1]["observed"] < 48
    assert diag["verdict"] == NULL

