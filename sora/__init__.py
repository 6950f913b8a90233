"""SoRA (Sparse Low-rank Adaptation) on peft's LoRA: the public API for your own training scripts.

    from sora import SoraCallback, SoraConfig, get_sora_model, sora_optimizer

The names load on first use (PEP 562): ``import sora.cli`` or ``sora.config`` must not pay for peft and
transformers (~5 s on 2 cores), so a bad command line is refused in about a second.
"""

from importlib import import_module

_PUBLIC = {"SoraConfig": "sora.tuners.sora.config", "get_sora_model": "sora.tuners.sora.model",
           "export_pruned_adapter": "sora.tuners.sora.export", "SoraCallback": "sora.hf_trainer",
           "sora_optimizer": "sora.hf_trainer"}

__all__ = list(_PUBLIC)


def __getattr__(name):
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'sora' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_PUBLIC])
