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
    # SoRA's gate multiply in each module's forward, and its gradient in the backward: at least 2 muls per module
    assert sora["aten.mul"] - lora["aten.mul"] >= 2 * modules
    assert sora["aten._fused_adamw_"] == lora["aten._fused_adamw_"] + 1 == 3  # one fused call per group: + the gates
