"""Precision choices the run warns about before it is slow."""

import torch


def test_bf16_on_a_cpu_without_native_bf16_is_warned():
    from sora.device import slow_bf16

    cpu = torch.device("cpu")
    assert "emulated" in slow_bf16("bf16", cpu, "flags: fpu avx2 fma")
    assert slow_bf16("bf16", cpu, "flags: avx512f avx512_bf16") is None
    assert slow_bf16("fp32", cpu, "flags: avx2") is None and slow_bf16("bf16", torch.device("meta"), "") is None
