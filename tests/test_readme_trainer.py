"""The README's "SoRA in your own Trainer" example, executed as written (not a second copy of it)."""

import re

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tests.conftest import ROOT


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## SoRA in your own Trainer", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_trains_prunes_and_exports(tmp_path):
    namespace = {}
    exec(compile(_readme_example(), "README.md", "exec"), namespace)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    ids = torch.randint(3, 100, (64, 8), generator=torch.Generator().manual_seed(1))
    rows = [{"input_ids": r, "attention_mask": torch.ones(8, dtype=torch.long), "labels": r.clone()} for r in ids]
    trainer = namespace["train_with_sora"](model, rows, output_dir=str(tmp_path), max_steps=20)
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and "sora/total_rank" in logged[-1]
    assert (tmp_path / "sora_pruned" / "adapter_config.json").exists()
