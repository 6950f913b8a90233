"""Prune zero ranks and write a standard peft LoRA adapter that loads without importing ``sora``.

Every rank i with g_i == 0 is cut; g and the scale s are folded into B (B' = s * B[:, keep] * g[keep])
and alpha_k = r_k so peft's own scaling is 1. Modules whose every gate is 0 are left out entirely.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from peft import LoraConfig
from safetensors.torch import save_file

from sora.tuners.sora.model import gated_modules

PREFIX = "base_model.model."


@torch.no_grad()
def pruned_lora_state(model, adapter_name: str = "default") -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """(peft-format state dict of the pruned LoRA weights, kept rank per module name)."""
    state, ranks = {}, {}
    for name, module in gated_modules(model, adapter_name):
        gate = module.lora_gate[adapter_name].weight
        keep = gate != 0
        r = int(keep.sum())
        ranks[name] = r
        if r == 0:
            continue
        a = module.lora_A[adapter_name].weight[keep]
        b = module.lora_B[adapter_name].weight[:, keep] * gate[keep] * module.scaling[adapter_name]
        state[f"{PREFIX}{name}.lora_A.weight"] = a.detach().float().cpu().contiguous()
        state[f"{PREFIX}{name}.lora_B.weight"] = b.detach().float().cpu().contiguous()
    return state, ranks


@torch.no_grad()
def head_state(model, adapter_name: str = "default") -> tuple[dict[str, torch.Tensor], list[str]]:
    """Trained copies of ``modules_to_save`` in peft's saved-key format, and their module names."""
    state, names = {}, set()
    marker = f".modules_to_save.{adapter_name}."
    for key, value in model.state_dict().items():
        if marker in key:
            module, param = key.split(marker)
            short = module[len(PREFIX):] if module.startswith(PREFIX) else module
            names.add(short.split(".")[-1])
            state[f"{PREFIX}{short}.{param}"] = value.detach().float().cpu().contiguous()
    return state, sorted(names)


def export_pruned_adapter(model, out_dir: str | Path, base_model_name_or_path: str | None = None,
                          adapter_name: str = "default") -> dict[str, int]:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors``; return kept ranks per module."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lora_state, ranks = pruned_lora_state(model, adapter_name)
    heads, head_names = head_state(model, adapter_name)
    kept = {n: r for n, r in ranks.items() if r > 0}
    trained = model.peft_config[adapter_name]
    config = LoraConfig(
        task_type=trained.task_type,
        fan_in_fan_out=trained.fan_in_fan_out,  # GPT-2's Conv1D maps
        # exact paths: peft matches list entries as whole names or dotted suffixes
        target_modules=sorted(kept) or None,
        r=max(kept.values(), default=1),
        lora_alpha=max(kept.values(), default=1),
        # peft matches pattern keys with re.match(r"(.*\.)?(KEY)$"): escape so layer.1 never hits layer.11
        rank_pattern={re.escape(n): r for n, r in kept.items()},
        alpha_pattern={re.escape(n): r for n, r in kept.items()},
        modules_to_save=head_names or None,
        base_model_name_or_path=base_model_name_or_path,
        inference_mode=True,
    )
    if not kept:
        # peft needs >= 1 target; an adapter with every rank pruned is the bare model plus its head
        config.target_modules = []
    config.save_pretrained(str(out))
    save_file({**lora_state, **heads}, str(out / "adapter_model.safetensors"))
    return ranks
