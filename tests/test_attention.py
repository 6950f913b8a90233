"""train.attention=disentangled_flash gives eager's logits and gradients with adapters on all six matrices.

disentangled-flash 1.1's own training path fuses Q/K/V over the *base* weights and so drops the adapters
peft puts on query_proj/key_proj/value_proj (``test_the_package_alone_drops_qkv_adapters`` shows that this
check catches it); ``sora.attention`` routes Q/K/V through the adapted modules.

Set-up: the tiny random DeBERTa-v2 of conf/model/tiny.yaml, in train mode with every dropout at p = 0
(asserted), so both paths are deterministic and differ only by float summation order. Adapters start as a
no-op (B = 0, AdaLoRA's E = 0, SoRA's gate = 1) and a random head gives logits ~ 0.01, so the adapters and
the head are set to random values first, and the adapters' own effect on the logits is asserted to be large.
"""

from __future__ import annotations

import importlib.util
import math
import sys

import pytest
import torch
from omegaconf import OmegaConf

from sora.attention import CHOICES, RoutedQKV, set_attention
from sora.errors import UserError
from sora.models import load_model
from sora.tuners.methods import build_method
from tests.conftest import ROOT

METHODS = ("lora", "sora", "adalora")
LOGIT_TOL = 1e-5     # fp32, max |Δ logits|
GRAD_TOL = 1e-4      # fp32, per trainable tensor: max |Δ grad| / max |grad|
EFFECT_MIN = 0.1     # the adapters move the logits by at least this (1e4 x LOGIT_TOL)
CPU = torch.device("cpu")
# the package is an extra (pip install -e ".[flash]"): without it, the tests that run it skip and say why, while the
# tests of its absence (a one-line error naming the extra) still run
needs_flash = pytest.mark.skipif(importlib.util.find_spec("disentangled_flash") is None,
                                 reason='disentangled-flash not installed: pip install -e ".[flash]"')


def tiny_cfg(**arch):
    cfg = OmegaConf.load(ROOT / "conf" / "model" / "tiny.yaml")
    cfg.config = OmegaConf.merge(cfg.config, arch)
    return cfg


def build(method: str, attention: str, *, naive: bool = False, device=CPU, **arch) -> torch.nn.Module:
    """seed -> backbone -> attention -> adapters (targets: all six), as sora.train.loop does; then perturbed."""
    base = load_model(tiny_cfg(**arch), 2, seed=0)
    if naive:  # the package alone: what a caller of its documented API gets
        from disentangled_flash import optimize_deberta_training

        optimize_deberta_training(base.deberta, backend="torch")
    else:
        base = set_attention(base, attention, device)
    cfg = OmegaConf.load(ROOT / "conf" / "method" / f"{method}.yaml")
    assert cfg.targets == "all"
    model = build_method(base, cfg, total_steps=2000).model
    perturb(model)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            assert module.p == 0.0, "a dropout with p > 0 makes the two paths draw different masks"
    return model.to(device).train()


@torch.no_grad()
def perturb(model: torch.nn.Module) -> None:
    """Random adapters (unit-scale A x, B small, E ~ N(0,1), gates +-[0.5, 1.5]) and an O(1) head, seeded."""
    gen = torch.Generator().manual_seed(1)
    for name, p in model.named_parameters():
        if not p.requires_grad or (name.endswith(".bias") and "lora_" not in name):
            continue
        noise = torch.randn(p.shape, generator=gen)
        if "lora_A" in name:
            p.copy_(noise / math.sqrt(p.shape[-1]))
        elif "lora_B" in name:
            p.copy_(noise * 0.3 / math.sqrt(p.shape[-1]))
        elif "lora_E" in name:
            p.copy_(noise)
        elif "lora_gate" in name:
            p.copy_(noise.sign() * (0.5 + torch.rand(p.shape, generator=gen)))
        elif "modules_to_save" in name:  # pooler + classifier
            p.copy_(noise * 2 / math.sqrt(p.shape[-1]))


def batch(device=CPU) -> dict:
    """Four rows, two of them padded, 40 tokens: past tiny's 16 position buckets, so log-bucketed deltas too."""
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(100, 30000, (4, 40), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 29:] = 0
    mask[3, 11:] = 0
    return {k: v.to(device) for k, v in
            {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 1, 0])}.items()}


def forward_backward(model, inputs, autocast_dtype=None):
    model.zero_grad(set_to_none=True)
    device = inputs["input_ids"].device.type
    with torch.autocast(device, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        out = model(**inputs)
    out.loss.backward()
    return out.logits.detach().float(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def grad_errors(grads: dict, ref: dict) -> dict[str, float]:
    """Per tensor max |Δ| / max |ref|; a missing gradient counts as inf (eager must have every one)."""
    assert grads.keys() == ref.keys()
    errors = {}
    for name, g in ref.items():
        assert g is not None and g.abs().max() > 0, f"eager has no gradient for {name}"
        other = grads[name]
        errors[name] = math.inf if other is None else ((other.float() - g.float()).abs().max() / g.abs().max()).item()
    return errors


def adapter_effect(model, inputs, logits) -> float:
    with torch.no_grad(), model.disable_adapter():
        plain = model(**inputs).logits.float()
    return (logits - plain).abs().max().item()


@needs_flash
@pytest.mark.parametrize("share_att_key", [False, True], ids=["tiny", "share_att_key(v3-base)"])
@pytest.mark.parametrize("method", METHODS)
def test_flash_matches_eager_with_adapters_on_all_six(method, share_att_key):
    eager = build(method, "eager", share_att_key=share_att_key)
    flash = build(method, "disentangled_flash", share_att_key=share_att_key)
    # same names: checkpoints load either way (values: perturb() overwrote the trainable ones from one seed)
    ref_state, state = eager.state_dict(), flash.state_dict()
    assert list(state) == list(ref_state)
    assert all(torch.equal(state[k], ref_state[k]) for k in ref_state)
    layers = flash.base_model.model.deberta.encoder.layer
    assert all(isinstance(layer.attention.self, RoutedQKV) for layer in layers)

    inputs = batch()
    ref_logits, ref_grads = forward_backward(eager, inputs)
    logits, grads = forward_backward(flash, inputs)
    effect = adapter_effect(eager, inputs, ref_logits)
    assert effect >= EFFECT_MIN, f"adapters barely matter ({effect:.3g}): the comparison would prove little"
    delta = (logits - ref_logits).abs().max().item()
    errors = grad_errors(grads, ref_grads)
    worst = max(errors, key=errors.get)
    print(f"{method} share_att_key={share_att_key}: effect {effect:.3f}, max|Δlogits| {delta:.2e}, "
          f"max rel grad err {errors[worst]:.2e} ({worst}), {len(errors)} tensors")
    assert delta <= LOGIT_TOL
    assert errors[worst] <= GRAD_TOL, worst
    with torch.no_grad():  # evaluation's path: eval mode, no autograd
        eval_delta = (flash.eval()(**inputs).logits - eager.eval()(**inputs).logits).abs().max().item()
    assert eval_delta <= LOGIT_TOL


@needs_flash
def test_same_seed_same_adapter_init_as_eager():
    """The swap builds (then overwrites) fresh Linears; drawing them from the run's RNG would change every
    adapter's init, and so the run, against eager with the same seed."""
    states, cfg = [], OmegaConf.load(ROOT / "conf" / "method" / "sora.yaml")
    for attention in CHOICES:  # load_model seeds; set_attention; then the adapters draw their init
        base = set_attention(load_model(tiny_cfg(), 2, seed=0), attention, CPU)
        states.append(build_method(base, cfg, total_steps=100).model.state_dict())
    assert list(states[0]) == list(states[1])
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@needs_flash
@pytest.mark.parametrize("method", METHODS)
def test_the_package_alone_drops_qkv_adapters(method):
    """The check above fails on v1.1.1's fused-QKV training path: it reads base q/k/v weights only."""
    eager, naive = build(method, "eager"), build(method, "disentangled_flash", naive=True)
    inputs = batch()
    ref_logits, ref_grads = forward_backward(eager, inputs)
    logits, grads = forward_backward(naive, inputs)
    delta = (logits - ref_logits).abs().max().item()
    errors = grad_errors(grads, ref_grads)
    print(f"{method} naive: effect {adapter_effect(eager, inputs, ref_logits):.3f}, max|Δlogits| {delta:.3f}")
    assert delta > 1e3 * LOGIT_TOL
    qkv = [n for n in errors if any(f".{m}.lora_" in n for m in ("query_proj", "key_proj", "value_proj"))]
    assert qkv and all(errors[n] > GRAD_TOL for n in qkv)


def test_non_deberta_model_is_a_user_error():
    from transformers import BertConfig, BertForSequenceClassification

    bert = BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=64))
    with pytest.raises(UserError, match="needs a DeBERTa-v2/v3 model.*'bert'.*train.attention=eager"):
        set_attention(bert, "disentangled_flash", CPU)
    with pytest.raises(UserError, match="must be one of eager, disentangled_flash"):
        set_attention(bert, "flash", CPU)


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "disentangled_flash", None)  # import -> ImportError
    with pytest.raises(UserError, match=r'pip install -e "\.\[flash\]"'):
        set_attention(load_model(tiny_cfg(), 2, seed=0), "disentangled_flash", CPU)


@needs_flash
def test_cuda_without_triton_support_is_a_user_error_not_silent_eager(monkeypatch):
    """The package keeps eager attention without a word when Triton can't run; the user asked for flash."""
    from disentangled_flash import kernel

    model = load_model(tiny_cfg(), 2, seed=0)
    monkeypatch.setattr(kernel, "triton", None)
    with pytest.raises(UserError, match="needs Triton"):
        set_attention(model, "disentangled_flash", torch.device("cuda"))
    monkeypatch.setattr(kernel, "triton", object())  # Triton "present": tiny's head size 16 is still unsupported
    with pytest.raises(UserError, match=r"head size in \(32, 64, 128\), this model has 16"):
        set_attention(model, "disentangled_flash", torch.device("cuda"))
    assert type(model.deberta.encoder).__name__ == "DebertaV2Encoder"


@needs_flash
def test_package_is_imported_only_when_chosen(monkeypatch):
    """A fresh copy of sora/attention.py, loaded and used for eager while any import of the package fails."""
    monkeypatch.setitem(sys.modules, "disentangled_flash", None)
    spec = importlib.util.spec_from_file_location("attention_copy", ROOT / "sora" / "attention.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = torch.nn.Linear(1, 1)
    assert module.set_attention(model, "eager", CPU) is model


def _triton_ready() -> bool:
    if not torch.cuda.is_available():
        return False
    from disentangled_flash import kernel

    return kernel.triton is not None


@pytest.fixture
def no_tf32():
    """Strict fp32 on both paths (set_attention picks the package's strict mode when TF32 is off)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@needs_flash
@pytest.mark.skipif(not _triton_ready(), reason="needs a CUDA GPU with Triton (the Triton backend)")
@pytest.mark.parametrize("method", METHODS)
def test_triton_matches_eager_on_cuda(method, no_tf32):
    """fp32 (TF32 off, the package's strict mode): the CPU tolerances. bf16 autocast: against fp32 eager, the
    flash error may be at most twice eager's own bf16 error (+1e-3), FlashAttention's criterion: bf16 keeps 8
    mantissa bits, so a fixed bound would be loose or flaky; "no worse than what it replaces" is not. Dropped
    adapters would still fail it: their effect (>= 0.1) is far above bf16's ~1e-2 on O(1) logits."""
    cuda = torch.device("cuda")
    arch = {"hidden_size": 64, "intermediate_size": 128}  # head size 32: the kernels take 32, 64, 128
    eager, flash = build(method, "eager", device=cuda, **arch), build(method, "disentangled_flash", device=cuda, **arch)
    assert flash.base_model.model.deberta.encoder.backend == "triton"
    inputs = batch(cuda)
    ref_logits, ref_grads = forward_backward(eager, inputs)
    assert adapter_effect(eager, inputs, ref_logits) >= EFFECT_MIN
    logits, grads = forward_backward(flash, inputs)
    assert (logits - ref_logits).abs().max().item() <= LOGIT_TOL
    assert max(grad_errors(grads, ref_grads).values()) <= GRAD_TOL

    bf16_eager_logits, bf16_eager_grads = forward_backward(eager, inputs, torch.bfloat16)
    bf16_logits, bf16_grads = forward_backward(flash, inputs, torch.bfloat16)
    eager_err = (bf16_eager_logits - ref_logits).abs().max().item()
    assert (bf16_logits - ref_logits).abs().max().item() <= 2 * eager_err + 1e-3
    eager_grad_err, flash_grad_err = grad_errors(bf16_eager_grads, ref_grads), grad_errors(bf16_grads, ref_grads)
    assert all(flash_grad_err[n] <= 2 * eager_grad_err[n] + 1e-3 for n in ref_grads)


@needs_flash
@pytest.mark.slow
def test_a_training_run_uses_the_routed_attention(tiny_overrides, monkeypatch):
    """The real loop: set_attention before peft, the model moved after, 3 steps and an eval through it."""
    from sora.config import load_config
    from sora.train.loop import train

    calls = []
    routed = RoutedQKV._project_qkv
    monkeypatch.setattr(RoutedQKV, "_project_qkv", lambda self, h: calls.append(1) or routed(self, h))
    cfg = load_config(["task=mrpc", "method=sora", *tiny_overrides, "train.attention=disentangled_flash",
                       "train.max_steps=3", "train.eval_steps=3"])
    record = train(cfg)
    assert record["status"] == "finished" and record["config"]["train"]["attention"] == "disentangled_flash"
    assert len(calls) >= 3 * 2  # 3 training steps x 2 layers, plus the evaluation
