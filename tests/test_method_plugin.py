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
from sora.tuners.lora import LoraMethod, LoraMethodSchema
from sora.tuners.sora.method import SoraMethod

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class HalfLoraSchema(LoraMethodSchema):
    name: Literal["half_lora"] = "half_lora"


class HalfLora(LoraMethod):
    """LoRA at half the configured rank: different enough that a label or a count taken from LoRA would show."""

    name = "half_lora"
    schema = HalfLoraSchema
    color = "tab:purple"
    frontier_budget = "method.r=2,8"

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
    """Registered in this process only: the class, its ``method`` node in Hydra's ConfigStore (what
    ``conf/method/half_lora.yaml`` would say) and, through the fallback, each hparams set's recipe."""
    from dataclasses import asdict

    from hydra.core.config_store import ConfigStore

    repo = ConfigStore.instance().repo
    methods.register(HalfLora)
    ConfigStore.instance().store(group="method", name="half_lora", node=asdict(HalfLoraSchema()))
    try:
        yield HalfLora
    finally:
        methods.METHODS.pop(HalfLora.name)
        _drop_stored(repo, "half_lora.yaml")


def _drop_stored(node: dict, name: str) -> None:
    node.pop(name, None)
    for child in node.values():
        if isinstance(child, dict):
            _drop_stored(child, name)


def test_a_fifth_method_runs_the_smoke_sweep_the_frontier_and_the_tables(half_lora, tmp_path):
    """Through the real composition: ``method=half_lora`` joins the smoke sweep (``${methods:}``) and the frontier
    plan (its ``frontier_budget``) with no hparams file of its own, trains with its own build, and is tabled."""
    from sora.cost import compose_jobs, expand_sweep
    from sora.sweep_plan import frontier_sweeps

    results = tmp_path / "results"
    smoke = [job for job in expand_sweep(["experiment=smoke", f"results_dir={results}"]) if "method=half_lora" in job]
    assert sorted(job[0] for job in smoke) == ["task=cola", "task=mrpc"]
    others = {name: "" for name in methods.METHODS if name != "half_lora"}  # an empty budget skips a method
    frontier = frontier_sweeps(["experiment=smoke", "task=cola", f"results_dir={results}"], others)
    assert frontier == [["experiment=smoke", "task=cola", f"results_dir={results}", "method=half_lora",
                         "method.r=2,8"]]
    jobs = smoke + [job for sweep in frontier for job in expand_sweep(sweep)]
    records = [train(cfg) for cfg in compose_jobs(jobs)]
    assert {r["status"] for r in records} == {"finished"} and {r["method"] for r in records} == {"half_lora"}
    assert sorted({tuple(set(r["ranks"].values())) for r in records}) == [(1,), (4,)]  # its own build: r halved
    # no hparams file of its own: the set's recipe for the task stands in (AdaLoRA scripts' CoLA: lr 8e-4, dropout 0.1)
    cola = next(r for r in records if r["task"] == "cola")
    assert (cola["config"]["train"]["lr"], cola["config"]["train"]["cls_dropout"]) == (8e-4, 0.1)
    sys.path.insert(0, str(ROOT / "scripts"))
    import aggregate

    assert aggregate.main(["--results", str(results), "--tasks", "cola"]) == 0
    table = (results / "tables" / "table1.md").read_text()
    assert "Half-LoRA (r=8/2)" in table and "Half-LoRA (r=2/2)" in table
    frontier_csv = (results / "tables" / "frontier_cola.csv").read_text()
    assert "Half-LoRA (r=8/2)" in frontier_csv and "Half-LoRA (r=2/2)" in frontier_csv
    assert read_record(next(results.glob("records/cola-half_lora-*/record.json")))["method"] == "half_lora"


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
    valid = ", ".join(sorted(methods.METHODS))
    assert {"sora", "lora", "adalora"} <= set(methods.METHODS)
    with pytest.raises(UserError, match=f"unknown method 'half_lora'; valid: {valid}$"):
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
    assert adapters.BRIDGES[SoraMethod] is adapters._sora_bridge
