"""The ``method`` node's schema, per method (``conf/method/<name>.yaml`` holds these defaults, tested).

SoRA's is its ``SoraConfig`` (the gate's keys, the dataclass users construct in their own Trainer) plus the keys
every method's node has; LoRA's and AdaLoRA's are their peft configs' keys as the GLUE loop and SFT set them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sora.schema import nonneg, positive, spec, unit_interval
from sora.tuners.sora.config import SoraConfig

_TARGETS = "all | qv (GLUE), auto or a list of module names (SFT)"


@dataclass
class SoraMethodSchema(SoraConfig):
    name: Literal["sora"] = "sora"
    targets: str | list[str] = spec("all", what=_TARGETS)
    head: str | None = "trainable"
    lora_dropout: float = spec(0.0, what="in [0, 1)", ok=unit_interval, example=0.0)


@dataclass
class LoraMethodSchema:
    name: Literal["lora"] = "lora"
    r: int = spec(8, what="a positive integer", ok=positive, example=8)
    lora_alpha: float = spec(16, what="> 0", ok=positive, example=16)
    targets: str | list[str] = spec("all", what=_TARGETS)
    head: str | None = "trainable"
    lora_dropout: float = spec(0.0, what="in [0, 1)", ok=unit_interval, example=0.0)
    rank_pattern_from: Literal["sora", "random"] | None = None
    pattern_xi: float | None = spec(None, what="null or the xi > 0 of a finished SoRA run", ok=positive)
    pattern_seed: int | None = spec(None, what="null or an integer >= 0", ok=nonneg, example=0)


@dataclass
class AdaLoraMethodSchema:
    name: Literal["adalora"] = "adalora"
    init_r: int = spec(12, what="a positive integer", ok=positive, example=12)
    target_r: int = spec(8, what="a positive integer", ok=positive, example=8)
    lora_alpha: float = spec(32, what="> 0", ok=positive, example=32)
    tinit: int = spec(200, what="an integer >= 0", ok=nonneg, example=200)
    tfinal: int = spec(1000, what="an integer >= 0", ok=nonneg, example=1000)
    deltaT: int = spec(10, what="a positive integer", ok=positive, example=10)  # noqa: N815 (peft's name)
    beta1: float = spec(0.85, what="in [0, 1)", ok=unit_interval, example=0.85)
    beta2: float = spec(0.85, what="in [0, 1)", ok=unit_interval, example=0.85)
    orth_reg_weight: float = spec(0.1, what=">= 0", ok=nonneg, example=0.1)
    ref_steps: int | None = spec(None, what="null or a positive integer", ok=positive, example="null")
    targets: str | list[str] = spec("all", what=_TARGETS)
    head: str | None = "trainable"
    lora_dropout: float = spec(0.0, what="in [0, 1)", ok=unit_interval, example=0.0)

