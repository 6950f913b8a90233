"""Which attention implementation a DeBERTa backbone trains with: eager (transformers) or disentangled-flash.

disentangled-flash 1.1 computes Q, K and V with one GEMM over the concatenated *base* weights
(``_project_qkv``). Once peft wraps ``query_proj``/``key_proj``/``value_proj``, that GEMM reads the wrapped
layers' base weights and silently drops the adapters. Here the swapped-in attention calls the three projection
modules instead, so whatever peft puts there later (LoRA, SoRA, AdaLoRA) is in the forward and backward.
Module and parameter names are the package's, i.e. transformers' own: checkpoints load either way.
"""

from __future__ import annotations

import torch

from sora.errors import UserError

CHOICES = ("eager", "disentangled_flash")
TRITON_HEAD_DIMS = (32, 64, 128)  # the package's training kernels
INSTALL = 'pip install -e ".[flash]"'


def set_attention(model: torch.nn.Module, choice: str, device: torch.device) -> torch.nn.Module:
    """Applied to the bare backbone, before any adapter wraps it (the routing below relies on that order)."""
    if choice == "eager":
        return model
    if choice not in CHOICES:
        raise UserError(f"train.attention must be one of {', '.join(CHOICES)}, got {choice!r}")
    backbone = _deberta_backbone(model)
    flash = _import_flash()
    backend = "triton" if torch.device(device).type == "cuda" else "torch"
    if backend == "triton":
        _check_triton(backbone.config)
    # TF32 only where the run already allows it for every other matmul (train.tf32, set before this call)
    precision = "fast" if backend == "triton" and torch.backends.cuda.matmul.allow_tf32 else "strict"
    # the swap builds fresh Linears (then loads the old weights): keep the CPU RNG, so adapters init as in eager
    with torch.random.fork_rng(devices=[]):
        flash.optimize_deberta_training(backbone, backend=backend, fp32_precision=precision)
    encoder = backbone.encoder
    if not isinstance(encoder, flash.DebertaV2OptimizedEncoder) or encoder.backend != backend:
        raise UserError(f"disentangled-flash did not enable its {backend} backend on this model "
                        f"(Triton missing or unsupported?); use train.attention=eager")
    for layer in encoder.layer:
        attention = layer.attention.self
        attention.__class__ = routed_class(type(attention))
    return model


class RoutedQKV:
    """Mixin over the package's training attention: Q, K, V through the modules, so adapters are applied.

    Three GEMMs instead of one fused GEMM, exactly what eager attention does; the attention core (the part
    the package makes fast) is unchanged.
    """

    def _project_qkv(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.query_proj(hidden_states), self.key_proj(hidden_states), self.value_proj(hidden_states)


_ROUTED: dict[type, type] = {}


def routed_class(cls: type) -> type:
    """``cls`` with ``RoutedQKV`` first in its MRO (one class per package class, so isinstance checks hold)."""
    if issubclass(cls, RoutedQKV):
        return cls
    if not callable(getattr(cls, "_project_qkv", None)):
        import disentangled_flash

        raise UserError(f"disentangled-flash {disentangled_flash.__version__} has no {cls.__name__}._project_qkv, "
                        f"so adapters on Q/K/V cannot be routed; install the tested 1.1.x: {INSTALL}")
    if cls not in _ROUTED:
        _ROUTED[cls] = type(f"Routed{cls.__name__}", (RoutedQKV, cls), {"__module__": __name__})
    return _ROUTED[cls]


def _deberta_backbone(model: torch.nn.Module) -> torch.nn.Module:
    """The DeBERTa-v2/v3 encoder stack the package patches; anything else is a config mistake."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    backbone = getattr(model, "deberta", None)
    if model_type != "deberta-v2" or backbone is None:
        raise UserError(f"train.attention=disentangled_flash needs a DeBERTa-v2/v3 model (model=deberta_v3_base "
                        f"or model=tiny), got {model_type or type(model).__name__!r}; use train.attention=eager")
    return backbone


def _import_flash():
    """Imported only when chosen: the package (and Triton with it) is an optional extra."""
    try:
        import disentangled_flash
    except ImportError:
        raise UserError(f"train.attention=disentangled_flash needs the disentangled-flash package: {INSTALL}") from None
    return disentangled_flash


def _check_triton(config) -> None:
    """The package would otherwise keep eager attention without a word; say why instead."""
    from disentangled_flash import kernel

    if kernel.triton is None:
        raise UserError("train.attention=disentangled_flash on CUDA needs Triton (pip install triton); "
                        "or use train.attention=eager")
    head_dim = getattr(config, "attention_head_size", None) or config.hidden_size // config.num_attention_heads
    if head_dim not in TRITON_HEAD_DIMS:
        raise UserError(f"disentangled-flash's Triton kernels need an attention head size in {TRITON_HEAD_DIMS}, "
                        f"this model has {head_dim}; use train.attention=eager")
