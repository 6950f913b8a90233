"""EVA, the fourth method (sora/tuners/eva.py, conf/method/eva.yaml): peft's own init against stock peft on the
same batches, its real rank pattern in the record and the parameter count, the exported adapter re-evaluated by
stock peft in another process, SFT on a tiny Llama, and its place in the frontier and the controlled table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from peft import EvaConfig, LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import initialize_lora_eva_weights

from sora.config import load_config
from sora.tuners.methods import Batches, build_method, count_params
from tests.conftest import ROOT, stock_peft_scores, tiny_base


def _batches(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        mask = torch.ones(8, 24, dtype=torch.long)
        mask[:4, 16:] = 0  # padding the SVD must not see
        out.append({"input_ids": torch.randint(5, 1000, (8, 24), generator=g), "attention_mask": mask})
    return out


def _eva(*overrides):
    cfg = load_config(["method=eva", "model=tiny", *overrides])
    return cfg, build_method(tiny_base(seed=5), cfg.method, total_steps=100)


def test_the_init_is_stock_peft_s_eva_on_the_same_batches():
    """Independent truth: peft's documented recipe (LoraConfig(init_lora_weights="eva"), get_peft_model,
    initialize_lora_eva_weights) on the same base and batches gives the same ranks, scales and A."""
    cfg, method = _eva("method.rho=2", "method.r=4")
    method.init_from_data(Batches(_batches(), "cpu", 16))
    from sora.tuners.sora.model import peft_targets

    base = tiny_base(seed=5)
    stock = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, init_lora_weights="eva",
                                            eva_config=EvaConfig(rho=2.0),
                                            modules_to_save=["classifier", "pooler"], **peft_targets(base, "all")))
    initialize_lora_eva_weights(stock, _batches(), show_progress_bar=False)
    ours = dict(method.model.named_parameters())
    for name, p in stock.named_parameters():
        if "lora_A" in name:
            assert torch.equal(p, ours[name]), name
    assert method.model.peft_config["default"].rank_pattern == stock.peft_config["default"].rank_pattern
    ranks = method.ranks()
    assert len(ranks) == 12 and sum(ranks.values()) == 4 * 12  # the budget: r per module on average
    assert max(ranks.values()) <= 8 and len(set(ranks.values())) > 1  # redistributed, capped at round(r * rho)
    for module in method.model.modules():  # peft keeps alpha / r per module (adjust_scaling_factors)
        if hasattr(module, "scaling") and "default" in getattr(module, "scaling", {}):
            assert module.scaling["default"] == pytest.approx(2.0)


def test_rho_one_keeps_every_module_at_r_and_counts_hold():
    _, method = _eva("method.rho=1", "method.r=4")
    method.init_from_data(Batches(_batches(), "cpu", 16))
    assert set(method.ranks().values()) == {4}
    params = count_params(method, hidden_size=32)
    # tiny DeBERTa (hidden 32, intermediate 64): 2 layers x (4 maps 32->32, 32->64, 64->32), r x (in + out) each
    assert params["retained"] == 4 * 2 * (4 * (32 + 32) + (32 + 64) + (64 + 32))
    assert params["max_rank"] == 12 * 4


def test_the_padding_and_labels_are_not_in_the_svd():
    """Batches hands EVA model inputs only: a GLUE run drops class labels (peft would read them as a token mask)."""
    b = Batches([{**_batches(1)[0], "labels": torch.zeros(8, dtype=torch.long)}], "cpu", 4, drop=("labels",))
    assert len(b) == 1 and set(next(iter(b))) == {"input_ids", "attention_mask"}
    assert len(Batches(_batches(10), "cpu", 3)) == 3


def test_a_glue_run_records_its_real_ranks_and_stock_peft_reproduces_its_best(tiny_overrides, tmp_path):
    from sora.train.loop import train

    cfg = load_config(["task=stsb", "method=eva", "method.r=4", *tiny_overrides, "train.max_steps=12"])
    record = train(cfg)
    assert record["status"] == "finished" and record["method"] == "eva"
    ranks = record["ranks"]
    assert sum(ranks.values()) == 4 * len(ranks) == 48 and len(set(ranks.values())) > 1
    shapes = {"attention": (32, 32), "intermediate": (32, 64), "output.dense": (64, 32)}

    def shape(name):
        return shapes["attention"] if ".attention." in name else shapes[
            "intermediate" if "intermediate" in name else "output.dense"]

    assert record["params"]["retained"] == sum(r * sum(shape(n)) for n, r in ranks.items())
    adapter = next(Path(cfg.results_dir).glob("records/*/adapter"))
    saved = json.loads((adapter / "adapter_config.json").read_text())
    assert saved["init_lora_weights"] == "eva" and saved["rank_pattern"]
    independent = stock_peft_scores(cfg, adapter, "stsb", 1, tmp_path)
    assert independent["pearson"] == pytest.approx(record["best"]["metrics"]["validation"]["pearson"], abs=1e-6)
    sys.path.insert(0, str(ROOT / "scripts"))
    import aggregate

    assert aggregate.main(["--results", cfg.results_dir, "--tasks", "stsb"]) == 0
    assert "EVA (r=4, rho=2)" in (Path(cfg.results_dir) / "tables" / "table1.md").read_text()


def test_an_exported_adapter_with_a_removed_module_reloads_with_identical_logits(tmp_path):
    """EVA may give a module rank 0 (peft then removes its LoRA layer); force one and reload in stock peft."""
    _, method = _eva("method.rho=1", "method.r=4")
    batches = Batches(_batches(), "cpu", 16)
    from peft.tuners.lora.eva import get_eva_state_dict

    state = get_eva_state_dict(method.model, batches, show_progress_bar=False)
    gone = sorted(state)[0]
    state[gone] = state[gone][:0]  # rank 0 for one module
    initialize_lora_eva_weights(method.model, eva_state_dict=state, show_progress_bar=False)
    assert method.ranks()[gone.removeprefix("base_model.model.")] == 0
    torch.manual_seed(3)
    for name, p in method.model.named_parameters():
        if "lora_B" in name or "modules_to_save" in name:
            torch.nn.init.normal_(p, std=0.5)  # trained-like: a missing B or head would show
    model = method.model.eval()
    x = torch.randint(5, 1000, (3, 11))
    with torch.no_grad():
        ref = model(input_ids=x).logits
    method.export(tmp_path / "adapter", None)
    reloaded = PeftModel.from_pretrained(tiny_base(seed=5), str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=x).logits, ref, atol=1e-6)
    params = count_params(method, hidden_size=32)
    assert params["total_rank"] == 4 * 11


@pytest.mark.slow
def test_sft_on_a_tiny_llama(tmp_path):
    from sora.sft.run import run_sft

    cfg = load_config([f"results_dir={tmp_path}/sft", "method=eva", "method.r=4", "train.max_steps=4",
                       "train.eval_steps=2", "data.eval_rows=16", "data.eval_path=null", "train.save_steps=4",
                       "train.log_steps=2"], config_name="sft")
    record = run_sft(cfg)
    assert record["status"] == "finished" and record["method"] == "eva"
    assert sum(record["ranks"].values()) == 4 * len(record["ranks"]) and len(set(record["ranks"].values())) > 1


def test_eva_is_in_the_frontier_and_the_controlled_table():
    from sora.cost import expand_sweep
    from sora.sweep_plan import frontier_sweeps

    sweeps = frontier_sweeps(["experiment=frontier_minilm", "task=mrpc"])
    eva = [s for s in sweeps if "method=eva" in s]
    assert eva == [["experiment=frontier_minilm", "task=mrpc", "method=eva", "method.r=2,4,8", "method.rho=1,2"]]
    assert len(expand_sweep(eva[0])) == 3 * 2 * 3  # r x rho x the experiment's 3 seeds
    controlled = expand_sweep(["experiment=controlled_table1", "task=rte", "seed=0"])
    assert ["task=rte", "method=eva", "seed=0", "experiment=controlled_table1"] in controlled
    cfg = load_config(["experiment=controlled_table1", "task=rte", "method=eva"])
    recipe = load_config(["experiment=controlled_table1", "task=rte", "method=lora"])
    assert cfg.train == recipe.train and cfg.data == recipe.data  # the shared recipe, through the fallback
    assert cfg.method.head == "trainable"
