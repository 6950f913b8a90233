"""The op counter of scripts/bench_ops.py: it sees forward and backward aten ops, and its fit splits SoRA's extra
ops into a per-module and a per-step part exactly."""

import importlib.util

import pytest
import torch

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_ops", ROOT / "scripts" / "bench_ops.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_counter_sees_forward_and_backward(bench):
    x, w = torch.randn(3, 4), torch.randn(4, 2, requires_grad=True)
    with bench.OpCounter() as counter:
        (x @ w).sum().backward()
    # forward: one mm and one sum; backward: sum's grad is expanded, then one mm for dL/dw (x needs no grad)
    assert counter.counts["aten.mm"] == 2 and counter.counts["aten.sum"] == 1
    assert counter.total >= 4


def test_fit_splits_per_module_and_per_step(bench):
    # 12 modules: 3 x 12 + 20 = 56 extra ops; 72 modules: 3 x 72 + 20 = 236
    assert bench.fit(56, 12, 236, 72) == pytest.approx((3.0, 20.0))


@pytest.mark.slow
def test_one_step_counts_sora_beyond_lora_on_a_tiny_model(bench):
    lora, modules = bench.count_step(bench.LORA, 2, "fp32", "adamw_fused")
    sora, _ = bench.count_step(bench.SORA["paper"], 2, "fp32", "adamw_fused")
    assert modules == 12
    # SoRA's gate multiply in each module's forward, and its two products in the backward (dA's input, dg), where
    # LoRA multiplies by the scale once each way: one mul more per module; the scale rides on addmm's alpha
    assert sora["aten.mul"] - lora["aten.mul"] == modules
    assert sora["aten.addmm"] - lora["aten.addmm"] == 3 * modules  # forward (+ the residual) and s*go*B, s*go^T*gated
    assert sora["aten._fused_adamw_"] == lora["aten._fused_adamw_"] + 1 == 3  # one fused call per group: + the gates


@pytest.mark.parametrize("variant", ["paper", "code"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_sora_step_meets_the_op_target(bench, variant, precision):
    """Issue 26's target: SoRA's aten ops beyond LoRA's (same optimizer, a full train_step) are <= 2 per gated
    module and <= 20 per step, fitted over 1 and 2 layers (6 and 12 gated modules) of the tiny DeBERTa."""
    extra, modules = [], []
    for layers in (1, 2):
        lora, n = bench.count_step(bench.LORA, layers, precision, bench.OPTIMIZER[variant])
        sora, _ = bench.count_step(bench.SORA[variant], layers, precision, bench.OPTIMIZER[variant])
        extra.append(sum(sora.values()) - sum(lora.values()))
        modules.append(n)
    per_module, per_step = bench.fit(extra[0], modules[0], extra[1], modules[1])
    assert modules == [6, 12]
    assert per_module <= bench.TARGET_PER_MODULE and per_step <= bench.TARGET_PER_STEP, (per_module, per_step)
