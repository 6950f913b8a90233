"""Pruned export: stock peft, in a process that never imports sora, gives the gated model's logits."""

import json
import subprocess
import sys
import textwrap

import torch
from safetensors.torch import load_file

from sora.tuners.sora.config import SoraConfig
from sora.tuners.sora.export import export_pruned_adapter
from sora.tuners.sora.layer import soft_threshold_
from sora.tuners.sora.model import gate_parameters, get_sora_model, sora_ranks
from tests.conftest import tiny_base

ZEROED = "deberta.encoder.layer.1.output.dense"


def _trained_like_model():
    torch.manual_seed(3)
    model = get_sora_model(tiny_base(seed=5), SoraConfig(r_max=6, gate_init="randn"))
    for name, p in model.named_parameters():
        if "lora_B" in name or "modules_to_save" in name:
            torch.nn.init.normal_(p, std=0.5)  # a head unlike the base model's, so a missing head would show
    gates = gate_parameters(model)
    soft_threshold_(gates, 0.6)  # some ranks exactly 0
    for name, module in model.named_modules():
        if name.endswith(ZEROED):
            module.lora_gate["default"].weight.data.zero_()  # one module loses every rank
    return model.eval()


def test_pruned_adapter_reloads_in_stock_peft_with_identical_logits(tmp_path):
    model = _trained_like_model()
    ranks = sora_ranks(model)
    assert ranks[ZEROED] == 0 and 0 < sum(ranks.values()) < 12 * 6
    export_pruned_adapter(model, tmp_path / "adapter")
    x = torch.randint(5, 1000, (3, 11))
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(model(input_ids=x).logits, tmp_path / "ref.pt")
    torch.save(tiny_base(seed=5).state_dict(), tmp_path / "base.pt")

    script = textwrap.dedent(f"""
        import sys, torch
        from omegaconf import OmegaConf
        from transformers import DebertaV2Config, DebertaV2ForSequenceClassification
        from peft import PeftModel
        cfg = OmegaConf.to_container(OmegaConf.load({str(tiny_yaml())!r}).config)
        base = DebertaV2ForSequenceClassification(DebertaV2Config(**cfg, num_labels=2))
        base.load_state_dict(torch.load({str(tmp_path / 'base.pt')!r}))
        model = PeftModel.from_pretrained(base, {str(tmp_path / 'adapter')!r}).eval()
        x = torch.load({str(tmp_path / 'x.pt')!r})
        with torch.no_grad():
            out = model(input_ids=x).logits
            merged = model.merge_and_unload()(input_ids=x).logits
        ref = torch.load({str(tmp_path / 'ref.pt')!r})
        assert not any(m == "sora" or m.startswith("sora.") for m in sys.modules), "sora was imported"
        print((out - ref).abs().max().item(), (merged - ref).abs().max().item())
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    diff, merged_diff = map(float, res.stdout.split())
    assert diff < 1e-5 and merged_diff < 1e-5


def test_rank_zero_modules_vanish_and_ranks_are_recorded(tmp_path):
    model = _trained_like_model()
    ranks = export_pruned_adapter(model, tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    keys = load_file(tmp_path / "adapter_model.safetensors").keys()
    assert ZEROED not in cfg["target_modules"]
    assert not any(ZEROED in k for k in keys)
    for name, r in ranks.items():
        if r:
            a = load_file(tmp_path / "adapter_model.safetensors")[f"base_model.model.{name}.lora_A.weight"]
            assert a.shape[0] == r
    assert cfg["modules_to_save"] == ["classifier", "pooler"]
    assert cfg["peft_type"] == "LORA" and cfg["use_rslora"] is False


def tiny_yaml():
    from tests.conftest import ROOT

    return ROOT / "conf" / "model" / "tiny.yaml"


def test_adalora_module_cut_to_rank_zero_reloads_in_stock_peft_with_identical_logits(tmp_path):
    """A budget that takes every rank from a module (the CoLA frontier's AdaLoRA 12->4 runs cut 4 modules) is saved
    by peft as zero-size tensors (peft warns they look unsharded; the export silences that one) and reloads with a
    warning about unmatched rank_pattern keys: stock peft still rebuilds the masked model exactly, head included."""
    import warnings

    from peft import PeftModel

    from sora.config import load_config
    from sora.tuners.methods import build_method

    cfg = load_config(["method=adalora", "model=tiny", "method.init_r=4", "method.target_r=2"])
    method = build_method(tiny_base(seed=5), cfg.method, total_steps=100)
    torch.manual_seed(3)
    for name, p in method.model.named_parameters():
        if any(k in name for k in ("lora_A", "lora_B", "lora_E", "modules_to_save")):
            torch.nn.init.normal_(p, std=0.5)  # E starts at 0 in peft: random, so every kept rank shows
    keys = sorted(n.replace(".default", "") for n, _ in method.model.base_model.model.named_parameters()
                  if "lora_E.default" in n)
    pattern = {k: [bool((i + j) % 2) for j in range(4)] for i, k in enumerate(keys)}
    pattern[keys[0]], pattern[keys[1]] = [False] * 4, [True] * 4  # one module loses every rank, one keeps all
    method.restore_snapshot(pattern)
    assert method.ranks()[keys[0].removesuffix(".lora_E")] == 0
    x = torch.randint(5, 1000, (3, 11))
    model = method.model.eval()
    with torch.no_grad():
        ref = model(input_ids=x).logits
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        method.export(tmp_path / "adapter", None)
    assert not [w for w in caught if "invalid shape" in str(w.message)]  # the misleading ZeRO-3 hint is not logged
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft's own, about rank_pattern keys its AdaLoRA loader does use
        reloaded = PeftModel.from_pretrained(tiny_base(seed=5), str(tmp_path / "adapter")).eval()
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert any(0 in t.shape for t in saved.values())  # the empty module really is saved empty
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=x).logits, ref, atol=1e-5)
