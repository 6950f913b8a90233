"""``method.variant=code`` is the released SoRA step, to float round-off.

The project's real step (``sora.train.step.train_step`` with the optimizer, schedule and method the CLI
builds from the STS-B release config) runs beside ``tests/release_sora.py``, a transcription of the released
source, from the same weights on the same batches. Every step: gates, A and B agree to 1e-6 and the set of
zero gates is the same.
"""

import contextlib
import copy
import math

import pytest
import torch

from sora.config import load_config
from sora.models import load_model
from sora.train.plan import run_length, run_schedule
from sora.train.step import make_optimizer_and_schedule, train_step
from sora.tuners.methods import build_method
from sora.tuners.sora.model import lora_linears
from tests import release_sora as rel

N_TRAIN, EPOCHS = 100, 25  # bsz 8: 12.5 batches an epoch -> 325 loop steps, a 312-step schedule, warmups 19 and 18
TOL = 1e-6


def _batches(n_steps: int, bsz: int = 8, length: int = 12, vocab: int = 30522):
    g = torch.Generator().manual_seed(1234)
    for _ in range(n_steps):
        ids = torch.randint(5, vocab, (bsz, length), generator=g)
        mask = torch.ones(bsz, length, dtype=torch.long)
        mask[:, length // 2:] = (torch.rand(bsz, length - length // 2, generator=g) > 0.3).long().cummin(-1).values
        yield {"input_ids": ids, "attention_mask": mask, "labels": torch.rand(bsz, generator=g) * 5}


def _side_by_side(overrides: list[str], gate_scale: float = 1.0):
    """Run both for the whole loop; return per-step max diffs, zero-set equality, and gate histories."""
    cfg = load_config(["task=stsb", "method=sora", "model=tiny", f"train.epochs={EPOCHS}", *overrides])
    assert cfg.method.variant == "code" and cfg.train.optimizer == "adamw_hf_legacy"
    assert cfg.method.head == "frozen" and cfg.method.targets == "all"
    torch.manual_seed(0)
    base = load_model(cfg.model, 1, seed=0)
    released = copy.deepcopy(base)
    steps_per_epoch, total = run_length(cfg.train, N_TRAIN)
    method = build_method(base, cfg.method, total)
    ours = method.model
    with torch.no_grad():  # smaller gates reach 0 within the run (the same start in both: copied below)
        for g in method.gates:
            g.mul_(gate_scale)
    optimizer, scheduler = make_optimizer_and_schedule(method, cfg.train, torch.device("cpu"),
                                                       run_schedule(cfg.train, total, N_TRAIN), cfg.method)
    assert type(optimizer).__name__ == "LegacyAdamW"
    trainable = [p for p in ours.parameters() if p.requires_grad]

    # the release: the same backbone, everything frozen (opendelta freeze_module), LoRA modules in parallel
    released.requires_grad_(False)
    modules = dict(released.named_modules())
    pairs = []
    for name, lin in lora_linears(ours):
        delta = rel.ReleasedLoRA(lin.lora_A["default"].weight.detach(), lin.lora_B["default"].weight.detach(),
                                 lin.lora_gate["default"].weight.detach(), cfg.method.lora_alpha / cfg.method.r_max)
        rel.attach_parallel(modules[name], delta)
        pairs.append((lin, delta))
    gates = [d.gate for _, d in pairs]
    rel_opt = rel.HFAdamW(rel.main_param_groups(released, cfg.train.weight_decay), lr=cfg.train.lr,
                          betas=(0.9, 0.999), eps=1e-8)
    rel_sparse = rel.SparseAdamW(sparse_lambda=cfg.method.xi, params=gates, lr=cfg.train.lr)
    rel_sched, rel_sparse_sched = rel.released_schedules(rel_opt, rel_sparse, cfg.train.epochs, N_TRAIN,
                                                         cfg.train.batch_size, cfg.train.warmup)
    released.train()

    diffs, same_zeros, zero_history = [], [], []
    for step, batch in enumerate(_batches(total)):
        train_step(ours, batch, method, optimizer, scheduler, step, trainable, cfg.train.max_grad_norm,
                   contextlib.nullcontext)
        rel.released_step(released, batch, rel_opt, rel_sparse, rel_sched, rel_sparse_sched,
                          cfg.method.l1_coef, cfg.train.max_grad_norm)
        d = 0.0
        for lin, delta in pairs:
            d = max(d, (lin.lora_gate["default"].weight - delta.gate.reshape(-1)).abs().max().item(),
                    (lin.lora_A["default"].weight - delta.lora_A).abs().max().item(),
                    (lin.lora_B["default"].weight - delta.lora_B).abs().max().item())
        ours_zero = torch.cat([lin.lora_gate["default"].weight == 0 for lin, _ in pairs])
        rel_zero = torch.cat([delta.gate.reshape(-1) == 0 for _, delta in pairs])
        diffs.append(d)
        same_zeros.append(bool(torch.equal(ours_zero, rel_zero)))
        zero_history.append(rel_zero.clone())
    lrs_at_end = [g["lr"] for g in optimizer.param_groups]
    return dict(total=total, diffs=diffs, same_zeros=same_zeros, zeros=zero_history,
                lrs_at_end=lrs_at_end, rel_lrs_at_end=[rel_sched.get_last_lr()[0], rel_sparse_sched.get_last_lr()[0]])


def _revivals(zeros: list[torch.Tensor]) -> int:
    return sum(int((a & ~b).sum()) for a, b in zip(zeros, zeros[1:]))


@pytest.mark.slow
@pytest.mark.parametrize("overrides,gate_scale", [
    ([], 1.0),  # the released STS-B settings: xi 3e-4, l1 10, lr 8e-4, wd 0.1, clip 0.1, warmup 0.06, bsz 8
    (["method.xi=5e-4"], 0.05),  # a larger xi from smaller gates: every gate dies, and some come back first
], ids=["stsb_release", "larger_xi_all_die"])
def test_code_variant_follows_the_released_step(overrides, gate_scale):
    out = _side_by_side(overrides, gate_scale)
    assert out["total"] == 325 >= 300
    worst = max(out["diffs"])
    assert worst <= TOL, f"max |ours - release| {worst:.2e} at step {out['diffs'].index(worst)}"
    assert all(out["same_zeros"]), f"zero sets differ at steps {[i for i, s in enumerate(out['same_zeros']) if not s]}"
    # the tail past the 312-step schedule runs at lr 0 in both (and the prox still subtracts xi)
    assert out["lrs_at_end"] == [0.0] * len(out["lrs_at_end"]) and out["rel_lrs_at_end"] == [0.0, 0.0]
    # gates die and revive (a zero gate non-zero again one step later), so both paths are compared
    died = max(int(z.sum()) for z in out["zeros"])
    assert died > 0 and _revivals(out["zeros"]) > 0, (died, _revivals(out["zeros"]))


def test_release_prox_hand_example():
    """Issue example: one legacy-AdamW gate step (eps 1e-6, betas (0.9, 0.999), no decay), then lambda 0.006."""
    from sora.optim import LegacyAdamW
    from sora.tuners.sora.layer import release_prox_, soft_threshold_

    g0, grad, lr, lam = [0.5, -0.03, 0.001], [0.1, -0.3, 0.2], 0.01, 0.006
    gate = torch.nn.Parameter(torch.tensor(g0))
    gate.grad = torch.tensor(grad)
    LegacyAdamW([gate], lr=lr, eps=1e-6).step()
    # by hand, step 1: m = 0.1 d, sqrt(v) = sqrt(0.001) |d|, step size lr sqrt(0.001) / 0.1, so the update is
    # lr d / (|d| + eps / sqrt(0.001)): eps enters ~32x larger than torch's lr d / (|d| + eps)
    by_hand = [x - lr * d / (abs(d) + 1e-6 / math.sqrt(1 - 0.999)) for x, d in zip(g0, grad)]
    assert gate.tolist() == pytest.approx(by_hand, abs=1e-7)
    assert by_hand == pytest.approx([0.49, -0.02, -0.009], abs=1e-5)
    textbook, released = gate.detach().clone(), gate.detach().clone()
    soft_threshold_([textbook], lam)
    release_prox_([released], lam)
    assert textbook.tolist() == pytest.approx([0.484, -0.014, -0.003], abs=1e-5)
    assert released.tolist() == pytest.approx([0.484, -0.014, 0.0], abs=1e-5)
    assert released[2].item() == 0.0


def test_release_prox_equals_the_three_masks_at_the_edges():
    """|g| == lam stays, |g| == 2 lam ends at lam, |g| just under 2 lam ends at 0: the literal masks decide."""
    from sora.tuners.sora.layer import release_prox_

    lam = 0.25  # exact in binary, so the edges are exact
    values = [0.0, 0.1, -0.1, 0.25, -0.25, 0.3, -0.3, 0.49, 0.5, -0.5, 0.51, -0.75, 1.0]
    ours, literal = torch.tensor(values), torch.tensor(values)
    release_prox_([ours[:5], ours[5:]], lam)
    literal[literal > lam] -= lam
    literal[literal < -lam] += lam
    literal[abs(literal) < lam] = 0.0
    assert ours.tolist() == literal.tolist()
    expected = [0.0, 0.0, 0.0, 0.25, -0.25, 0.0, 0.0, 0.0, 0.25, -0.25, 0.51 - 0.25, -0.5, 0.75]
    assert ours.tolist() == pytest.approx(expected, abs=1e-7)
