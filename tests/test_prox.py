"""The proximal gate step against numbers computed by hand, for both variants."""

import math

import pytest
import torch
from omegaconf import OmegaConf

from sora.optim import build_optimizer
from sora.tuners.sora.layer import soft_threshold_
from sora.tuners.sora.method import SoraMethod
from tests.conftest import tiny_base


def _method(variant, xi, l1_coef=0.0):
    cfg = OmegaConf.create(dict(name="sora", r_max=3, lora_alpha=3, xi=xi, variant=variant, gate_init="ones",
                                l1_coef=l1_coef, gate_lr=None, targets="all", head="trainable", lora_dropout=0.0))
    return SoraMethod(tiny_base(), cfg, total_steps=10)


def test_soft_threshold_hand_values():
    g = torch.tensor([0.5, -0.02, 0.003, -0.9])
    soft_threshold_([g], 0.01)
    assert g.tolist() == pytest.approx([0.49, -0.01, 0.0, -0.89])
    assert g[2].item() == 0.0  # exactly zero, not small


@pytest.mark.parametrize("variant,xi,lr,tau", [("paper", 2.0, 0.01, 0.02), ("code", 0.006, 0.01, 0.006)])
def test_adamw_then_prox_on_a_three_element_gate(variant, xi, lr, tau):
    method = _method(variant, xi)
    bank = method.gates[0]  # every gate of the model, a module per row: the first module's gate is row 0
    gate = bank[0]
    start, grad = [0.5, -0.02, 0.001], [0.1, -0.3, 0.2]
    with torch.no_grad():
        gate.copy_(torch.tensor(start))
    opt = build_optimizer(method.param_groups(lr, weight_decay=0.1, eps=1e-8), (0.9, 0.999), torch.device("cpu"))
    bank.grad = torch.zeros_like(bank)  # the other rows' zero gradient moves nothing (m = v = 0); no other
    bank.grad[0] = torch.tensor(grad)  # parameter has a grad, so AdamW leaves it alone
    opt.step()
    method.after_optimizer_step(0, opt)
    eps = 1e-6 if variant == "code" else 1e-8
    expected = []
    for g0, d in zip(start, grad):
        # torch AdamW step 1, bias-corrected: m_hat = d, v_hat = d^2; no weight decay on gates
        g1 = g0 - lr * d / (abs(d) + eps)
        if variant == "paper":  # textbook soft threshold
            expected.append(math.copysign(max(abs(g1) - tau, 0.0), g1))
        else:  # the release's masks: |g| > 2 tau moves by tau, tau < |g| < 2 tau -> 0
            expected.append(math.copysign(abs(g1) - tau, g1) if abs(g1) > 2 * tau else 0.0)
    # by hand: g1 = [0.49, -0.01, -0.009]; paper tau=0.02 -> [0.47, 0, 0]; code tau=0.006 -> [0.484, 0, 0]
    # (the textbook threshold would leave the code case at [0.484, -0.004, -0.003])
    assert gate.tolist() == pytest.approx(expected, abs=1e-7)
    assert gate.tolist()[1:] == [0.0, 0.0]


def test_code_variant_l1_term_and_paper_has_none():
    method = _method("code", 0.0, l1_coef=10.0)
    with torch.no_grad():
        for g in method.gates:
            g.copy_(torch.tensor([1.0, -2.0, 0.0]))
    # sum |g| = 3 per gate, numel 3 per gate: mean |g| = 1 -> 10 * 1
    assert method.extra_loss().item() == pytest.approx(10.0)
    assert _method("paper", 0.0, l1_coef=10.0).extra_loss() is None


def test_gates_get_their_own_group_without_decay():
    method = _method("code", 1e-3)
    groups = method.param_groups(1e-3, 0.1, 1e-8)
    gate_group = [g for g in groups if g["name"] == "gate"][0]
    assert gate_group["weight_decay"] == 0.0 and gate_group["eps"] == 1e-6
    assert [tuple(p.shape) for p in gate_group["params"]] == [(12, 3)]  # one bank: 6 matrices x 2 layers, r_max 3
    others = {id(p) for g in groups if g["name"] != "gate" for p in g["params"]}
    assert not others & {id(p) for p in gate_group["params"]}
