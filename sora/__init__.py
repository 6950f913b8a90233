"""SoRA (Sparse Low-rank Adaptation) on peft's LoRA: the public API for your own training scripts.

    from sora import SoraCallback, SoraConfig, get_sora_model, sora_optimizer
"""

from sora.tuners.sora.config import SoraConfig
from sora.tuners.sora.export import export_pruned_adapter
from sora.tuners.sora.model import get_sora_model

__all__ = ["SoraConfig", "get_sora_model", "SoraCallback", "sora_optimizer", "export_pruned_adapter"]


def __getattr__(name):  # the Trainer integration imports transformers' Trainer machinery: load it on use
    if name in ("SoraCallback", "sora_optimizer"):
        from sora import hf_trainer

        return getattr(hf_trainer, name)
    raise AttributeError(name)
