"""Issue 26, item 5: ``train.compile=reduce-overhead`` captures the optimizer tail (clip -> optimizer step -> the
method's after-step), so nothing in it may be a Python number that changes from step to step.

Run on the CPU with dynamo's eager backend (the graph capture without a C++ build): the capturable optimizer (lrs
in device tensors the scheduler fills, step counts on the device) and the compiled tail give the eager path's
weights and gates to float32 round-off and the same exact zeros, the same lrs, and ONE graph for every step while
the lr changes every step (a Python lr would recompile or bake in step 1's value).
"""

from __future__ import annotations

import contextlib

import pytest
import torch

import sora.train.compiled as compiled
from sora.config import load_config
from sora.models import load_model
from sora.optim import LegacyAdamW, group_lrs, schedule_plan
from sora.train.compiled import capturable_tail, tail_captured
from sora.train.step import make_optimizer_and_schedule, optimizer_tail, train_step
from sora.tuners.methods import build_method
from sora.tuners.sora.layer import soft_threshold_
from sora.tuners.sora.model import gate_parameters
from tests.conftest import tiny_base

STEPS = 8
CASES = {  # each method with the optimizer its runs use; a large xi so gates reach exact 0 within the run
    "lora": ["method=lora"],
    "sora_paper": ["method=sora", "method.variant=paper", "method.gate_init=randn", "method.xi=20",
                   "train.optimizer=adamw"],
    "sora_code": ["method=sora", "method.variant=code", "method.xi=0.05"],
}


def _batches(n, bsz=4, length=12):
    g = torch.Generator().manual_seed(7)
    return [{"input_ids": torch.randint(5, 1000, (bsz, length), generator=g),
             "attention_mask": torch.ones(bsz, length, dtype=torch.long),
             "labels": torch.randint(0, 2, (bsz,), generator=g)} for _ in range(n)]


def _graphs() -> tuple[int, dict]:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"]), dict(counters["graph_break"])


def _train(overrides: list[str], captured: bool):
    """STEPS steps through ``train_step``; the graphs compiled so far after each step."""
    cfg = load_config(["task=mrpc", "model=tiny", "train.lr=5e-3", "train.warmup=3", *overrides])
    torch.manual_seed(0)
    method = build_method(load_model(cfg.model, 2, seed=0), cfg.method, STEPS)
    plan = schedule_plan("standard", cfg.train.warmup, STEPS, 0, 1, 1)
    optimizer, scheduler = make_optimizer_and_schedule(method, cfg.train, torch.device("cpu"), plan, cfg.method,
                                                       capturable=captured)
    trainable = [p for p in method.model.parameters() if p.requires_grad]
    tail = capturable_tail(optimizer_tail) if captured else None
    lrs, graphs = [], []
    for step, batch in enumerate(_batches(STEPS)):
        _, used = train_step(method.model, batch, method, optimizer, scheduler, step, trainable,
                             cfg.train.max_grad_norm, contextlib.nullcontext, tail)
        lrs.append(used)
        graphs.append(_graphs()[0])
    return method, optimizer, lrs, graphs


# torch.optim's own optimizers break the graph around step() on purpose (torch/optim/optimizer.py,
# ``_use_grad_for_differentiable``: no_grad for AOT); any other break would be ours
TORCH_OPTIM_BREAK = "Call to `torch._dynamo.graph_break()`"


@pytest.mark.parametrize("case", CASES)
def test_captured_tail_is_the_eager_tail_with_the_same_graphs_every_step(case, monkeypatch):
    monkeypatch.setattr(compiled, "BACKEND", "eager")
    torch._dynamo.reset()
    eager, eager_opt, eager_lrs, _ = _train(CASES[case], captured=False)
    start, breaks_before = _graphs()
    fast, fast_opt, fast_lrs, graphs = _train(CASES[case], captured=True)
    breaks = {k: v - breaks_before.get(k, 0) for k, v in _graphs()[1].items() if v > breaks_before.get(k, 0)}

    assert all(isinstance(g["lr"], torch.Tensor) and g["lr"].dim() == 0 for g in fast_opt.param_groups)
    assert all(isinstance(g["lr"], float) for g in eager_opt.param_groups)
    assert fast_lrs == eager_lrs and len({round(v["adapter"], 12) for v in eager_lrs}) > 3  # the lr moved
    # compiled by step 3 (the step int turns dynamic after its first change), then nothing new while the lr and
    # the step change: a Python lr would recompile (or, captured, replay step 1's value)
    assert graphs[-1] - start <= 4 and graphs[2] == graphs[-1], graphs
    assert all(reason.startswith(TORCH_OPTIM_BREAK) for reason in breaks), breaks
    ref = dict(eager.model.named_parameters())
    for name, p in fast.model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p, ref[name], rtol=1e-5, atol=1e-6, msg=name)
    if case.startswith("sora"):
        zeros = [g.detach().eq(0) for g in gate_parameters(eager.model)]
        assert sum(int(z.sum()) for z in zeros) > 0, "the prox zeroed nothing: the case tests too little"
        assert all(torch.equal(a, g.detach().eq(0)) for a, g in zip(zeros, gate_parameters(fast.model)))


@pytest.mark.parametrize("case", CASES)
def test_what_the_captured_tail_mutates_is_static_for_cuda_graphs(case, monkeypatch):
    """A CUDA graph tree may mutate a static input (a parameter, an optimizer's state, marked) or a tensor of an
    earlier CUDA graph's pool (the gradients, from the compiled backward), nothing else: one other mutated input and
    inductor skips CUDA graphs for the whole tail. Observed here through dynamo's own placeholder metadata (what
    inductor reads as ``static_input_idxs``): torch AdamW's state dynamo marks itself; LegacyAdamW's was made
    inside the first captured step and unmarked (the code variant's tail would have run without a CUDA graph)."""
    from torch._dynamo.utils import get_static_address_type

    mutated = []

    def backend(gm, example_inputs):
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]

        def run(*args):
            versions = [a._version if isinstance(a, torch.Tensor) else None for a in args]
            out = gm.forward(*args)
            for node, arg, version in zip(placeholders, args, versions, strict=True):
                if isinstance(arg, torch.Tensor) and arg._version != version:
                    static = node.meta.get("tensor_dict", {}).get("_dynamo_static_input_type")
                    mutated.append((node._dynamo_source.name, static or get_static_address_type(arg)))
            return out

        return run

    monkeypatch.setattr(compiled, "BACKEND", backend)
    torch._dynamo.reset()
    _, optimizer, _, graphs = _train(CASES[case], captured=True)
    names = {name for name, _ in mutated}
    assert any(name.endswith(".grad") for name in names), "the clip's gradients: the check saw the tail"
    if isinstance(optimizer, LegacyAdamW):  # its whole step is one graph: params and state are its inputs
        assert any("exp_avg_sq" in name for name in names) and any("['step']" in name for name in names)
    bad = sorted({name for name, static in mutated if not static and not name.endswith(".grad")})
    assert not bad, bad


def test_tensor_threshold_is_the_float_threshold():
    g = torch.tensor([-0.5, -0.2, -0.1, 0.0, 0.05, 0.1, 0.3, 2.0])
    by_float, by_tensor = [g.clone()], [g.clone()]
    soft_threshold_(by_float, 0.1)
    soft_threshold_(by_tensor, torch.tensor(0.1))
    assert torch.equal(by_float[0], by_tensor[0])
    assert by_tensor[0].tolist() == pytest.approx([-0.4, -0.1, 0.0, 0.0, 0.0, 0.0, 0.2, 1.9])


def test_lrs_read_back_without_the_device_are_the_scheduler_s_values():
    from sora.optim import build_optimizer, linear_schedule, schedule_plan

    p = torch.nn.Parameter(torch.ones(3))
    plan = schedule_plan("standard", 2, 6, 0, 1, 1)
    floats = build_optimizer([{"params": [p], "lr": 0.1, "name": "adapter"}], (0.9, 0.999), torch.device("cpu"))
    tensors = build_optimizer([{"params": [p], "lr": 0.1, "name": "adapter"}], (0.9, 0.999), torch.device("cpu"),
                              capturable=True)
    s_float, s_tensor = linear_schedule(floats, plan), linear_schedule(tensors, plan)
    for _ in range(6):
        assert group_lrs(tensors, s_tensor) == group_lrs(floats)  # the scheduler's host value, exactly
        assert group_lrs(floats)["adapter"] == pytest.approx(float(tensors.param_groups[0]["lr"]), rel=1e-7)
        s_float.step()
        s_tensor.step()


def test_only_reduce_overhead_with_a_capturable_after_step_captures_the_tail():
    class Host:
        capturable_after_step = False

    class Device:
        capturable_after_step = True

    assert tail_captured("reduce-overhead", Device) and not tail_captured("reduce-overhead", Host)
    assert not tail_captured("default", Device) and not tail_captured(False, Device)
    base = tiny_base()
    adalora = build_method(base, load_config(["task=mrpc", "method=adalora", "model=tiny"]).method, 100)
    assert not tail_captured("reduce-overhead", adalora)  # its budget update is host logic


def test_capturable_legacy_adamw_resumes_from_its_state_dict(tmp_path):
    """A checkpoint of the capturable optimizer, loaded into a fresh one, continues the same trajectory (step counts
    come back as device tensors)."""
    from sora.optim import LegacyAdamW, device_lr

    def grads(params, k):
        gen = torch.Generator().manual_seed(k)
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)

    def fresh():
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
        groups = [device_lr({"params": [params[0]], "lr": 1e-2, "weight_decay": 0.1}, torch.device("cpu")),
                  device_lr({"params": [params[1]], "lr": 1e-2, "weight_decay": 0.0}, torch.device("cpu"))]
        return params, LegacyAdamW(groups, capturable=True)

    straight, opt = fresh()
    for k in range(5):
        grads(straight, k)
        opt.step()
    first, opt1 = fresh()
    for k in range(3):
        grads(first, k)
        opt1.step()
    torch.save({"opt": opt1.state_dict(), "params": [p.detach() for p in first]}, tmp_path / "ckpt.pt")
    saved = torch.load(tmp_path / "ckpt.pt", map_location="cpu")
    resumed, opt2 = fresh()
    with torch.no_grad():
        for p, q in zip(resumed, saved["params"]):
            p.copy_(q)
    opt2.load_state_dict(saved["opt"])
    assert all(isinstance(s["step"], torch.Tensor) and float(s["step"]) == 3 for s in opt2.state.values())
    for k in range(3, 5):
        grads(resumed, k)
        opt2.step()
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)


def test_capturable_legacy_adamw_is_the_host_formula():
    """Device step sizes (float32) against the host's float64 ones, 6 steps with decay: round-off apart."""
    from sora.optim import LegacyAdamW, device_lr

    torch.manual_seed(1)
    start = torch.randn(5, 4)
    host_p, dev_p = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    host = LegacyAdamW([{"params": [host_p], "lr": 3e-2, "weight_decay": 0.01}])
    dev = LegacyAdamW([device_lr({"params": [dev_p], "lr": 3e-2, "weight_decay": 0.01}, torch.device("cpu"))],
                      capturable=True)
    gen = torch.Generator().manual_seed(2)
    for _ in range(6):
        g = torch.randn(5, 4, generator=gen)
        host_p.grad, dev_p.grad = g.clone(), g.clone()
        host.step()
        dev.step()
    assert not torch.equal(host_p, start)
    torch.testing.assert_close(dev_p, host_p, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_a_reduce_overhead_run_captures_its_tail_and_keeps_the_metrics(tiny_overrides, monkeypatch):
    """The loop: ``reduce-overhead`` (buckets, the capturable optimizer, the compiled tail) against ``default`` (the
    same buckets, the eager tail): the same metrics and ranks at every evaluation; the record says the tail was
    captured; graphs stay a handful with no break."""
    from sora.train.loop import train

    monkeypatch.setattr(compiled, "BACKEND", "eager")
    torch._dynamo.reset()  # graphs counted from scratch: an earlier test's cache would make them 0
    common = ["task=stsb", "method=sora", *tiny_overrides, "train.max_steps=12", "train.eval_steps=6",
              "data.pad_buckets=4", "method.xi=0.02"]
    default = train(load_config([*common, "train.compile=default"]))
    captured = train(load_config([*common, "train.compile=reduce-overhead"]))
    for a, b in zip(default["evals"], captured["evals"], strict=True):
        assert b["report"]["validation"]["pearson"] == pytest.approx(a["report"]["validation"]["pearson"], abs=1e-4)
        assert b["total_rank"] == a["total_rank"]
    assert default["runtime"]["compile"]["optimizer_tail"] == "eager"
    rt = captured["runtime"]["compile"]
    assert rt["mode"] == "reduce-overhead" and rt["optimizer_tail"] == "captured"
    # the code variant's LegacyAdamW traces whole: no break at all; graphs: a forward per bucket (+ the last
    # batch's), the tail (+ its step turning dynamic)
    assert rt["graph_breaks"] == 0 and 1 <= rt["graphs"] <= 2 * 4 + 2
