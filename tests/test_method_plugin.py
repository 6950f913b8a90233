"""A method is one registered class: a throwaway fifth method, defined only in this file, trains through the
GLUE loop and appears in Table 1 and the frontier with its own label and colour, with no other file touched."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from sora.config import load_config
from sora.records import read_record
from sora.train.loop import train
from sora.tuners import methods
from sora.tuners.method_schemas import LoraMethodSchema

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class HalfLoraSchema(LoraMethodSchema):
    name: Literal["half_lora"] = "half_lora"


class HalfLora(methods.LoraMethod):
    """LoRA at half the configured rank: different enough that a label or a count taken from LoRA would show."""

    name = "half_lora"
    schema = HalfLoraSchema
    color = "tab:purple"

    def __init__(self, base_model, cfg, total_steps, **extra):
        cfg = cfg.copy()
        cfg.r = max(1, cfg.r // 2)
        super().__init__(base_model, cfg, total_steps, **extra)

    @classmethod
    def label(cls, m):
        return f"Half-LoRA (r={m['r']}/2)"

    @classmethod
    def paper_key(cls, m):
        return "Half-LoRA"


@pytest.fixture
def half_lora():
    methods.register(HalfLora)
    try:
        yield HalfLora
    finally:
        methods.METHODS.pop(HalfLora.name)


def test_a_fifth_method_trains_and_is_tabled(half_lora, tmp_path, tiny_overrides):
    from omegaconf import open_dict

    cfg = load_config(["task=cola", "method=lora", "method.r=4", *tiny_overrides])
    with open_dict(cfg):
        cfg.method.name = "half_lora"
    record = train(cfg)
    assert record["status"] == "finished" and record["method"] == "half_lora"
    assert set(record["ranks"].values()) == {2}  # its own build ran: r 4 halved
    sys.path.insert(0, str(ROOT / "scripts"))
    import aggregate

    results = tmp_path / "results"
    assert aggregate.main(["--results", str(results), "--tasks", "cola"]) == 0
    table = (results / "tables" / "table1.md").read_text()
    assert "Half-LoRA (r=4/2)" in table
    frontier = (results / "tables" / "frontier_cola.csv").read_text()
    assert "Half-LoRA (r=4/2)" in frontier
    assert read_record(next(results.glob("records/*/record.json")))["run_id"].startswith("cola-half_lora-")


def test_an_unregistered_method_in_a_record_still_gets_a_label():
    from sora.results.load import method_label, paper_key

    rec = {"method": "gone", "config": {"method": {"name": "gone"}}}
    assert method_label(rec) == "gone" and paper_key(rec) == "gone"


def test_schema_unknown_method_is_one_line():
    from sora.errors import UserError
    from sora.tuners.methods import check_method_config

    cfg = load_config(["method=lora"])
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.method.name = "half_lora"
    with pytest.raises(UserError, match="unknown method 'half_lora'; valid: sora, lora, adalora"):
        check_method_config(cfg.method)


def test_the_trainer_bridge_is_found_by_class_and_a_loss_term_needs_one(half_lora):
    """SoRA's wiring is registered for its class (subclasses inherit it); a method whose loss has an extra term
    and no bridge is refused in one line instead of silently training without the term."""
    from sora.errors import UserError
    from sora.sft import adapters

    class Trainer:
        callbacks: list = []

        def add_callback(self, cb):
            self.callbacks.append(cb)

    lora = HalfLora.__new__(HalfLora)
    lora.name = "half_lora"
    trainer = Trainer()
    adapters.attach_method(trainer, lora, None)
    assert isinstance(trainer.callbacks[-1], adapters.MethodCallback)

    class WithLoss(HalfLora):
        def extra_loss(self):
            return None

    with pytest.raises(UserError, match="adds a loss term.*bridge\\(WithLoss\\)"):
        adapters.attach_method(trainer, WithLoss.__new__(WithLoss), None)
    seen = []
    adapters.BRIDGES[WithLoss] = lambda t, m, r: seen.append(m)
    try:
        adapters.attach_method(trainer, WithLoss.__new__(WithLoss), None)
    finally:
        adapters.BRIDGES.pop(WithLoss)
    assert len(seen) == 1
    assert adapters.BRIDGES[methods.SoraMethod] is adapters._sora_bridge
