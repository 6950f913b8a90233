"""Injection of SoRA into a model: a peft LoRA of rank r_max, then a gate on every LoRA linear."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from peft.tuners.lora.layer import Linear as LoraLinear

from sora.errors import UserError
from sora.tuners.heads import apply_head_policy, head_modules_to_save
from sora.tuners.sora.config import SoraConfig
from sora.tuners.sora.gate_bank import GateBank
from sora.tuners.sora.layer import GATE_ATTR, SoraLinearVariant
from sora.tuners.targets import matrix_type, target_regex


def get_sora_model(
    base_model: torch.nn.Module,
    config: SoraConfig,
    targets: str | list[str] = "auto",
    head: str | None = None,
    lora_dropout: float = 0.0,
    adapter_name: str = "default",
    task_type: str | None = None,
) -> PeftModel:
    """Wrap any model peft's LoRA supports in a LoRA of rank r_max, alpha, and gate every injected linear map.

    ``targets``: ``"auto"`` (every linear map of the transformer blocks: never a pooler, a classifier or an LM
    head), ``"all"`` / ``"qv"`` (the six / two encoder matrices of the GLUE experiments), or explicit module names.
    ``task_type`` and ``head`` default to what the model is: a sequence classifier trains its classifier and
    pooler, a causal LM nothing but the adapters. GPT-2's fused ``Conv1D`` maps get ``fan_in_fan_out``.
    """
    task_type = task_type or infer_task_type(base_model)
    if head is None:
        head = "trainable" if task_type == TaskType.SEQ_CLS else "none"
    lora_config = LoraConfig(
        task_type=task_type,
        r=config.r_max,
        lora_alpha=config.lora_alpha,
        lora_dropout=lora_dropout,
        modules_to_save=head_modules_to_save(head),
        **peft_targets(base_model, targets),
    )
    model = get_peft_model(base_model, lora_config, adapter_name=adapter_name)
    for _, module in lora_linears(model):
        module.lora_variant[adapter_name] = SoraLinearVariant()
        SoraLinearVariant.init(module, adapter_name, gate_init=config.gate_init)
    bank_gates(model, adapter_name, config.l1_coef)
    apply_head_policy(model, head)
    model.sora_config = config  # what sora_optimizer / SoraCallback read when not given one
    return model


HEAD_NAMES = ("pooler", "classifier", "score", "lm_head", "qa_outputs", "embed_out", "output_projection")


def block_linears(model: torch.nn.Module) -> list[str]:
    """Every linear (or GPT-2 ``Conv1D``) map inside a numbered block (``layers.3.``, ``h.3.``, ``layer.3.``):
    attention and MLP projections, never a pooler, a classifier or an LM head (peft's ``"all-linear"`` would adapt
    an encoder's ``pooler.dense``). BERT/DeBERTa encoders get their six matrices (Q K V AO I O), as in SoRA's
    GLUE experiments; DeBERTa's relative-position projections are not among them."""
    six = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and matrix_type(n)]
    if six:
        return six
    out = []
    for name, module in model.named_modules():
        parts = name.split(".")
        if not (isinstance(module, torch.nn.Linear) or _is_conv1d(module)):
            continue
        if any(p.isdigit() for p in parts) and not any(p in HEAD_NAMES for p in parts):
            out.append(name)
    return out


def peft_targets(model: torch.nn.Module, targets) -> dict:
    """``target_modules`` (and ``fan_in_fan_out``) for any peft LoRA-family config: ``"all"`` / ``"qv"`` the
    encoder regex of the GLUE experiments; ``"auto"`` every linear map of the blocks; a list, those of them named
    (a name or a dotted tail, as peft matches). GPT-2's fused ``Conv1D`` maps get ``fan_in_fan_out``."""
    if isinstance(targets, str) and targets != "auto":
        return {"target_modules": target_regex(targets)}
    names = block_linears(model)
    if targets != "auto":
        wanted = list(targets)
        names = [n for n in names if any(n == t or n.endswith("." + t) for t in wanted)]
        if not names:
            raise UserError(f"method.targets={wanted} matches no linear map of the blocks; e.g. method.targets=auto")
    return {"target_modules": sorted(names),
            "fan_in_fan_out": any(_is_conv1d(model.get_submodule(n)) for n in names)}


def infer_task_type(model: torch.nn.Module) -> str | None:
    cls = type(model).__name__
    if cls.endswith("ForSequenceClassification"):
        return TaskType.SEQ_CLS
    if cls.endswith("ForCausalLM") or cls.endswith("LMHeadModel"):
        return TaskType.CAUSAL_LM
    return None


def _is_conv1d(module) -> bool:
    return type(module).__name__ == "Conv1D"


def lora_linears(model: torch.nn.Module) -> Iterator[tuple[str, LoraLinear]]:
    """(path relative to the backbone, peft LoRA Linear) for every adapted linear map."""
    for name, module in model.named_modules():
        if isinstance(module, LoraLinear):
            yield _relative_name(name), module


def _relative_name(name: str) -> str:
    prefix = "base_model.model."
    return name[len(prefix):] if name.startswith(prefix) else name


def gated_modules(model: torch.nn.Module, adapter_name: str = "default") -> Iterator[tuple[str, LoraLinear]]:
    for name, module in lora_linears(model):
        if adapter_name in getattr(module, GATE_ATTR, {}):
            yield name, module


BANK_ATTR = "lora_gate_bank"  # on peft's LoraModel; "lora_" keeps it trainable under peft's adapter marking


def bank_gates(model: PeftModel, adapter_name: str = "default", l1_coef: float = 0.0) -> GateBank:
    """Move every gate of ``adapter_name`` into one :class:`GateBank` (rows in module order) on the LoRA model,
    whose pre-hook makes the effective gates once per forward."""
    layers = [m for _, m in gated_modules(model, adapter_name)]
    gates = [m.lora_gate[adapter_name] for m in layers]
    bank = GateBank([g.weight for g in gates], l1_coef)
    lora_model = model.base_model
    if not hasattr(lora_model, BANK_ATTR):
        setattr(lora_model, BANK_ATTR, torch.nn.ModuleDict())
    getattr(lora_model, BANK_ATTR)[adapter_name] = bank
    for i, gate in enumerate(gates):
        gate.attach(bank, i)
    lora_model.register_forward_pre_hook(bank.refresh)
    return bank


def gate_bank(model: torch.nn.Module, adapter_name: str = "default") -> GateBank | None:
    """The adapter's bank on peft's LoRA model, found through any wrapper (DDP, a Trainer's); None for a model
    get_sora_model did not build."""
    for module in model.modules():
        banks = module._modules.get(BANK_ATTR)
        if banks is not None and adapter_name in banks:
            return banks[adapter_name]
    return None


def gate_parameters(model: torch.nn.Module, adapter_name: str = "default") -> list[torch.nn.Parameter]:
    """The trainable gate tensors: the one bank (modules x r_max) of a SoRA model."""
    bank = gate_bank(model, adapter_name)
    if bank is not None:
        return [bank.weight]
    return [m.lora_gate[adapter_name].weight for _, m in gated_modules(model, adapter_name)]


def gate_l1(gates: list[torch.Tensor], coef: float = 1.0) -> torch.Tensor:
    """coef * sum |g| / numel over all gates: the released code's extra loss term (``coef``: its ``l1_coef``),
    with coef / numel folded into one host scalar. One bank: sum |g| is one ``vector_norm`` (ord 1), whose
    gradient is sgn(g), as abs's."""
    if len(gates) == 1:
        total = torch.linalg.vector_norm(gates[0], ord=1)
    else:
        total = torch.stack([g.abs().sum() for g in gates]).sum()
    return total * (coef / sum(g.numel() for g in gates))


@torch.no_grad()
def sora_ranks(model: torch.nn.Module, adapter_name: str = "default") -> dict[str, int]:
    """Non-zero gate entries per module (one host sync per call: use at evaluation time only)."""
    names = [name for name, _ in gated_modules(model, adapter_name)]
    values = torch.count_nonzero(torch.stack(gate_parameters(model, adapter_name)).reshape(len(names), -1), dim=1)
    return dict(zip(names, (int(v) for v in values.tolist())))
