"""Which attention implementation a DeBERTa backbone trains with: eager (transformers) or disentangled-flash."""

from __future__ import annotations

import torch

from sora.errors import UserError

CHOICES = ("eager", "disentangled_flash")


def set_attention(model: torch.nn.Module, choice: str, device: torch.device) -> torch.nn.Module:
    """Applied to the bare backbone, before any adapter wraps it."""
    if choice == "eager":
        return model
    if choice not in CHOICES:
        raise UserError(f"train.attention must be one of {', '.join(CHOICES)}, got {choice!r}")
    raise UserError("train.attention=disentangled_flash is not implemented yet")
