"""SoRA with g = 1 and xi = 0 is plain peft LoRA: same forward, same gradients."""

import copy

import torch
from peft import LoraConfig, TaskType, get_peft_model

from sora.tuners.sora.config import SoraConfig
from sora.tuners.sora.layer import GATE_ATTR
from sora.tuners.sora.model import get_sora_model, lora_linears
from sora.tuners.targets import target_regex
from tests.conftest import tiny_base


def test_gate_one_equals_plain_lora_forward_and_grads():
    base = tiny_base()
    torch.manual_seed(7)
    sora = get_sora_model(copy.deepcopy(base), SoraConfig(r_max=4, lora_alpha=8, xi=0.0, gate_init="ones"))
    torch.manual_seed(7)
    lora = get_peft_model(copy.deepcopy(base), LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8,
                                                          target_modules=target_regex("all"),
                                                          modules_to_save=["classifier", "pooler"]))
    # B starts at 0 in both; give both the same non-zero B so gradients flow into A too
    torch.manual_seed(8)
    lora_params = dict(lora.named_parameters())
    for name, p in sora.named_parameters():
        if "lora_B" in name:
            with torch.no_grad():
                p.normal_()
                lora_params[name].copy_(p)
    assert all(torch.equal(p, lora_params[n]) for n, p in sora.named_parameters() if GATE_ATTR not in n)

    x = torch.randint(5, 1000, (4, 12))
    labels = torch.tensor([0, 1, 1, 0])
    out_s, out_l = sora(input_ids=x, labels=labels), lora(input_ids=x, labels=labels)
    assert torch.allclose(out_s.logits, out_l.logits, atol=1e-6)
    out_s.loss.backward()
    out_l.loss.backward()
    compared = 0
    for name, p in sora.named_parameters():
        if p.requires_grad and GATE_ATTR not in name:
            assert torch.allclose(p.grad, lora_params[name].grad, atol=1e-6), name
            compared += 1
    assert compared == 12 * 2 + 4  # A and B of 12 modules + classifier and pooler weights/biases


def test_targets_skip_the_pooler_and_qv_keeps_two():
    model = get_sora_model(tiny_base(), SoraConfig(r_max=2))
    names = [n for n, _ in lora_linears(model)]
    assert len(names) == 12 and not any("pooler" in n for n in names)
    qv = get_sora_model(tiny_base(), SoraConfig(r_max=2), targets="qv")
    assert sorted({n.split(".")[-1] for n, _ in lora_linears(qv)}) == ["query_proj", "value_proj"]


def test_merge_keeps_the_gated_output():
    model = get_sora_model(tiny_base(), SoraConfig(r_max=4, gate_init="randn"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p)
    model.eval()
    x = torch.randint(5, 1000, (2, 9))
    with torch.no_grad():
        before = model(input_ids=x).logits
        model.merge_adapter()
        merged = model(input_ids=x).logits
        model.unmerge_adapter()
        after = model(input_ids=x).logits
    assert torch.allclose(before, merged, atol=1e-5) and torch.allclose(before, after, atol=1e-5)
