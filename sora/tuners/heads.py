"""What happens to the classification head, the same for every method so comparisons are fair.

DeBERTa's ``pooler.dense`` is newly initialised on load and peft's SEQ_CLS default trains only
``classifier``, leaving a random pooler frozen (peft #2171, SoRA issue #13).
"""

from __future__ import annotations

import torch

from sora.errors import UserError

HEAD_POLICIES = {
    "trainable": ["classifier", "pooler"],  # default: the whole head learns
    "classifier": ["classifier"],  # peft's SEQ_CLS default; a DeBERTa pooler stays random
    # the release: opendelta's freeze_module leaves classifier, pooler and LayerNorms at their init; listed here
    # (untrained) so an export carries the very random head the adapter was trained against
    "frozen": ["classifier", "pooler"],
    "none": [],  # a causal LM: only the adapters train (peft's CAUSAL_LM default)
}


def head_modules_to_save(head: str) -> list[str] | None:
    if head not in HEAD_POLICIES:
        raise UserError(f"method.head must be one of {sorted(HEAD_POLICIES)}, got {head!r}")
    return list(HEAD_POLICIES[head]) or None


def apply_head_policy(model: torch.nn.Module, head: str) -> None:
    """``frozen``: keep the head in modules_to_save (so exports carry it) but train none of it."""
    if head != "frozen":
        return
    for name, param in model.named_parameters():
        if "modules_to_save" in name:
            param.requires_grad_(False)


def method_head(cfg) -> str:
    """The method node's head policy; a causal LM (no ``head`` key in its config) trains only the adapters."""
    return cfg.get("head") or "none"
