"""Issue 26, items 1-2: the gates in one bank and the gated product as one autograd node change no number.

Independent truth: the plain autograd formula ``result + lora_B(lora_A(x) * g) * s`` (what SoRA's forward was, and
what the release computes), the literal three masks of the released prox, the transcribed transformers-4.x AdamW
(tests/release_sora.py), and the same model with per-module gate parameters (built without the bank).
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from peft import get_peft_model_state_dict
from transformers import LlamaConfig, LlamaForCausalLM

from sora.optim import LegacyAdamW
from sora.train.step import train_step
from sora.tuners.methods import Method
from sora.tuners.sora import step as sora_step
from sora.tuners.sora.config import SoraConfig
from sora.tuners.sora.layer import SoraGate, release_prox_, soft_threshold_
from sora.tuners.sora.model import gate_bank, gate_parameters, gated_modules, get_sora_model, lora_linears
from tests import release_sora as rel
from tests.conftest import tiny_base

BF16 = dict(rtol=3e-2, atol=3e-2)  # bf16 rounding of the operands (8 bits of mantissa)


def _randomized(model, seed=3):
    """Non-zero B, gates of both signs with some exact zeros: every gradient path is exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        for g in gate_parameters(model):
            g.copy_(torch.randn(g.shape, generator=gen))
            g.view(-1)[::5] = 0.0
    return model


def _unbanked(model):
    """The same model with a parameter per gate (the pre-bank layout): forward by plain autograd."""
    out = copy.deepcopy(model)
    for _, module in gated_modules(out):
        gate = module.lora_gate["default"]
        fresh = SoraGate(gate.weight.numel())
        with torch.no_grad():
            fresh.weight.copy_(gate.weight)
        module.lora_gate["default"] = fresh
    del out.base_model.lora_gate_bank
    out.base_model._forward_pre_hooks.clear()
    return out


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_gated_product_equals_the_autograd_formula(precision):
    model = _randomized(get_sora_model(tiny_base(), SoraConfig(r_max=4, lora_alpha=8, gate_init="randn")))
    name, module = next((n, m) for n, m in gated_modules(model) if n.endswith("intermediate.dense"))
    gate = module.lora_gate["default"]
    a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
    x = torch.randn(3, 7, a.shape[1], requires_grad=True)
    # the reference: independent leaves, the formula by autograd
    xr, ar, br = (t.detach().clone().requires_grad_() for t in (x, a, b))
    gr = gate.weight.detach().clone().requires_grad_()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    with autocast:
        out = module(x)
        ref = module.base_layer(xr) + torch.nn.functional.linear(
            torch.nn.functional.linear(xr, ar) * gr, br) * module.scaling["default"]
    assert out.dtype == ref.dtype
    weights = torch.randn(out.shape)
    (out.float() * weights).sum().backward()
    (ref.float() * weights).sum().backward()
    bank = gate_bank(model)
    pairs = [(out, ref), (x.grad, xr.grad), (a.grad, ar.grad), (b.grad, br.grad),
             (bank.weight.grad[gate.index], gr.grad)]
    for ours, theirs in pairs:
        assert ours.dtype == theirs.dtype
        if precision == "fp32":
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
        else:
            torch.testing.assert_close(ours.float(), theirs.float(), **BF16)
    # rows of other modules got no gradient from this module
    others = [i for i in range(bank.weight.shape[0]) if i != gate.index]
    assert not bank.weight.grad[others].any()


class _Step(Method):
    def __init__(self, model, config, gates, bank=None):
        super().__init__(model)
        self.config, self.gates, self.bank = config, gates, bank

    def extra_loss(self):
        return sora_step.l1_loss(self.gates, self.config, self.bank)

    def after_optimizer_step(self, step, optimizer):
        sora_step.prox_(self.gates, self.config, sora_step.gate_lr(optimizer))


def _run(model, config, gates, bank, precision, steps=4):
    groups = sora_step.param_groups(model, config, 2e-2, 0.1, 1e-8, gates)
    opt = LegacyAdamW(groups) if config.variant == "code" else torch.optim.AdamW(groups, foreach=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    trainable = [p for p in model.parameters() if p.requires_grad]
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else \
        contextlib.nullcontext
    gen = torch.Generator().manual_seed(11)
    losses = []
    for step in range(steps):
        batch = {"input_ids": torch.randint(5, 1000, (4, 10), generator=gen), "labels": torch.tensor([0, 1, 1, 0])}
        loss, _ = train_step(model, batch, _Step(model, config, gates, bank), opt, sched, step, trainable, 1.0,
                             autocast)
        losses.append(loss.item())
    return losses


def _config(variant):
    return SoraConfig(r_max=4, lora_alpha=8, variant=variant, gate_init="randn",
                      xi=0.05 if variant == "code" else 2.0, l1_coef=10.0 if variant == "code" else 0.0)


def _pair(variant):
    config = _config(variant)
    banked = _randomized(get_sora_model(tiny_base(), config))
    plain = _unbanked(banked)
    plain_gates = [m.lora_gate["default"].weight for _, m in gated_modules(plain)]
    assert len(plain_gates) == 12 and all(g.is_leaf for g in plain_gates)
    return config, banked, plain, plain_gates


@pytest.mark.parametrize("variant", ["paper", "code"])
def test_training_steps_equal_the_per_module_layout(variant):
    """Forward, L1 term, clip, optimizer and prox, four fp32 steps from the same weights: the bank and the fused
    product against per-module gate parameters run by plain autograd, to round-off, the same ranks zeroed."""
    config, banked, plain, plain_gates = _pair(variant)
    ours = _run(banked, config, gate_parameters(banked), gate_bank(banked), "fp32")
    theirs = _run(plain, config, plain_gates, None, "fp32")
    tol = dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor(ours), torch.tensor(theirs), **tol)
    plain_params = dict(plain.named_parameters())
    for name, p in banked.named_parameters():
        if p.requires_grad and "lora_gate" not in name:
            torch.testing.assert_close(p, plain_params[name], **tol)
    gates = torch.stack(plain_gates).detach()
    torch.testing.assert_close(gate_parameters(banked)[0].detach(), gates, **tol)
    assert torch.equal(gate_parameters(banked)[0] == 0, gates == 0) and (gates == 0).any()


@pytest.mark.parametrize("variant", ["paper", "code"])
def test_bf16_loss_and_gradients_equal_the_per_module_layout(variant):
    """Under bf16 autocast (the gate cast once per step to bf16, the product in bf16): the loss with its L1 term and
    every gradient match the per-module autograd path to bf16's rounding."""
    config, banked, plain, plain_gates = _pair(variant)
    batch = {"input_ids": torch.randint(5, 1000, (4, 10), generator=torch.Generator().manual_seed(2)),
             "labels": torch.tensor([0, 1, 1, 0])}
    losses = []
    for model, gates, bank in ((banked, gate_parameters(banked), gate_bank(banked)), (plain, plain_gates, None)):
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch).loss
            extra = sora_step.l1_loss(gates, config, bank)
            loss = loss + extra if extra is not None else loss
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1], **BF16)
    plain_params = dict(plain.named_parameters())
    for name, p in banked.named_parameters():
        if p.grad is not None and "lora_gate" not in name:
            torch.testing.assert_close(p.grad, plain_params[name].grad, **BF16)
    torch.testing.assert_close(gate_parameters(banked)[0].grad, torch.stack([g.grad for g in plain_gates]), **BF16)


def test_state_dict_keys_and_loads_are_the_per_module_ones():
    config = SoraConfig(r_max=4, gate_init="randn")
    banked = _randomized(get_sora_model(tiny_base(), config))
    plain = _unbanked(banked)
    assert list(banked.state_dict()) == list(plain.state_dict())  # no bank key; every lora_gate key in place
    keys = [k for k in get_peft_model_state_dict(banked) if "lora_gate" in k]
    assert len(keys) == 12 and all(k.endswith("lora_gate.weight") for k in keys)
    fresh = get_sora_model(tiny_base(), config)  # other random gates
    assert not torch.equal(gate_parameters(fresh)[0], gate_parameters(banked)[0])
    result = fresh.load_state_dict(plain.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(gate_parameters(fresh)[0], torch.stack([m.lora_gate["default"].weight
                                                                for _, m in gated_modules(plain)]))
    missing = fresh.load_state_dict({k: v for k, v in plain.state_dict().items() if "lora_gate" not in k},
                                    strict=False).missing_keys
    assert sum("lora_gate" in k for k in missing) == 12


def test_a_deep_copy_runs_on_its_own_bank():
    model = _randomized(get_sora_model(tiny_base(), SoraConfig(r_max=4, gate_init="randn"))).eval()
    twin = copy.deepcopy(model)
    x = torch.randint(5, 1000, (2, 9))
    with torch.no_grad():
        before = twin(input_ids=x).logits
        gate_parameters(model)[0].zero_()
        assert torch.equal(twin(input_ids=x).logits, before)
        assert not torch.equal(model(input_ids=x).logits, before)
    name, module = next(iter(gated_modules(twin)))
    assert module.lora_gate["default"].bank is gate_bank(twin)


def _llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))


@pytest.mark.parametrize("reentrant", [False, True], ids=["non_reentrant", "reentrant"])
def test_activation_checkpointing_gives_the_same_gradients(reentrant):
    """The bank's rows are made once per forward and reused when a checkpointed block recomputes in backward."""
    config = SoraConfig(r_max=4, variant="code", xi=1e-3, l1_coef=10.0, gate_init="randn")
    model = _randomized(get_sora_model(_llama(), config))
    twin = copy.deepcopy(model)
    twin.base_model.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    twin.enable_input_require_grads()
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(1))
    for m in (model, twin):
        m.train()
        loss = m(input_ids=ids, labels=ids).loss + sora_step.l1_loss(gate_parameters(m), config, gate_bank(m))
        loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    twin_grads = {n: p.grad for n, p in twin.named_parameters() if p.grad is not None}
    assert set(grads) == set(twin_grads) and any("lora_gate" in n for n in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(twin_grads[name], grad, rtol=1e-5, atol=1e-6)


def test_the_banks_l1_term_is_the_autograd_one():
    config = SoraConfig(r_max=4, variant="code", xi=1e-3, l1_coef=10.0, gate_init="randn")
    model = _randomized(get_sora_model(tiny_base(), config))
    gates, bank = gate_parameters(model), gate_bank(model)
    x = torch.randint(5, 1000, (2, 9))
    model(input_ids=x)  # the pre-hook makes the rows and the L1 value
    made = sora_step.l1_loss(gates, config, bank)
    assert made is not None and made is bank.l1(10.0)
    assert bank.l1(5.0) is None  # another coefficient: not this forward's term
    by_hand = 10.0 * gates[0].detach().abs().sum() / gates[0].numel()
    torch.testing.assert_close(made.detach(), by_hand)
    made.backward()
    assert torch.equal(gates[0].grad, torch.sign(gates[0].detach()) * (10.0 / gates[0].numel()))
    with torch.no_grad():
        gates[0].mul_(0.5)  # an in-place update: the forward's term is stale, so it is computed afresh
    assert bank.l1(10.0) is None


def test_one_bank_prox_equals_the_literal_release_masks():
    gen = torch.Generator().manual_seed(0)
    for lam in (0.25, 3e-4, 0.006):
        values = torch.randn(4000, generator=gen) * 2 * lam
        values[:9] = torch.tensor([0.0, lam, -lam, 2 * lam, -2 * lam, 3 * lam, -3 * lam, lam * 1.5, 1.0])
        ours, literal = values.clone(), values.clone()
        release_prox_([ours], lam)
        literal[literal > lam] -= lam
        literal[literal < -lam] += lam
        literal[abs(literal) < lam] = 0.0
        assert torch.equal(ours, literal)
        textbook, foreach = values.clone(), [values[:1000].clone(), values[1000:].clone()]
        soft_threshold_([textbook], lam)  # one tensor: softshrink
        soft_threshold_(foreach, lam)  # a list: the multi-tensor sign * max(|g| - tau, 0)
        assert torch.equal(textbook, torch.cat(foreach))


def test_legacy_adamw_over_groups_equals_the_transcribed_release():
    """One set of multi-tensor calls for every group (per-tensor eps and step sizes) is the release's per-parameter
    loop, float for float, with groups of their own lr, eps, decay and a parameter that skips a step."""
    gen = torch.Generator().manual_seed(5)
    shapes = [(6, 4), (4,), (3, 8), (8,)]
    init = [torch.randn(s, generator=gen) for s in shapes]
    ours = [torch.nn.Parameter(t.clone()) for t in init]
    theirs = [torch.nn.Parameter(t.clone()) for t in init]

    def groups(ps):
        return [{"params": [ps[0], ps[2]], "lr": 1e-2, "weight_decay": 0.1, "eps": 1e-8},
                {"params": [ps[1]], "lr": 1e-2, "weight_decay": 0.0, "eps": 1e-8},
                {"params": [ps[3]], "lr": 3e-3, "weight_decay": 0.0, "eps": 1e-6}]

    opt, ref = LegacyAdamW(groups(ours)), rel.HFAdamW(groups(theirs))
    for step in range(5):
        grads = [torch.randn(s, generator=gen) for s in shapes]
        for ps in (ours, theirs):
            for i, (p, g) in enumerate(zip(ps, grads)):
                p.grad = None if (step == 2 and i == 3) else g.clone()
        opt.step()
        ref.step()
        for a, b in zip(ours, theirs):
            assert torch.equal(a, b)


def test_lora_linears_see_the_fused_path():
    model = get_sora_model(tiny_base(), SoraConfig(r_max=4))
    assert all(m.lora_gate["default"].bank is gate_bank(model) for _, m in lora_linears(model))


def test_a_checkpoint_from_the_per_module_layout_stops_in_one_line(tmp_path):
    """A run checkpointed before the gate bank (a parameter per gate) and resumed with it: the error names the fix."""
    from sora.errors import UserError
    from sora.train.checkpoint import read_checkpoint, restore_checkpoint, save_checkpoint

    config = SoraConfig(r_max=4, gate_init="randn")
    banked = get_sora_model(tiny_base(), config)
    old = _unbanked(banked)

    class _Plain(Method):
        pass

    def optimizer(model):
        groups = sora_step.param_groups(model, config, 1e-3, 0.0, 1e-8, gate_parameters(model))
        opt = torch.optim.AdamW(groups)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)

    opt, sched = optimizer(old)
    save_checkpoint(tmp_path, old, opt, sched, _Plain(old), {"step": 3}, "rid", 1.0)
    payload = read_checkpoint(tmp_path, "rid")
    new_opt, new_sched = optimizer(banked)
    with pytest.raises(UserError) as err:
        restore_checkpoint(payload, banked, new_opt, new_sched, _Plain(banked), tmp_path)
    message = str(err.value)
    assert "\n" not in message and "another parameter layout" in message and "delete it" in message
    assert "lora_gate.default.weight" in message
