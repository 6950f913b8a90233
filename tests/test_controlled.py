"""experiment=controlled_table1: one recipe per task for every method, plus the two controls."""

import pytest

from sora.config import load_config
from sora.errors import UserError
from sora.results import load_records
from sora.results.tables import table1
from sora.train.loop import train
from tests.conftest import GLUE_FIXTURE

TINY = ["experiment=controlled_table1", "task=mrpc", "model=tiny", f"data.dir={GLUE_FIXTURE}", "train.max_steps=12",
        "train.eval_steps=6", "progress=false", "data.max_len=64", "method.ref_steps=null"]


def _cfg(tmp_path, *extra):
    overrides = [*TINY, f"results_dir={tmp_path}", *extra]
    if any(x == "method=adalora" for x in extra):
        overrides += ["method.tinit=2", "method.tfinal=4", "method.deltaT=1"]
    else:
        overrides.remove("method.ref_steps=null")
    return load_config(overrides)


def test_every_method_shares_the_recipe():
    cfgs = {m: load_config(["experiment=controlled_table1", "task=cola", f"method={m}"])
            for m in ("sora", "lora", "adalora")}
    recipes = [(dict(c.train), dict(c.data)) for c in cfgs.values()]
    assert recipes[0] == recipes[1] == recipes[2]
    assert cfgs["sora"].train.optimizer == "adamw" and cfgs["sora"].train.schedule == "standard"
    assert {c.method.head for c in cfgs.values()} == {"trainable"}
    assert cfgs["sora"].method.variant == "code" and cfgs["sora"].method.xi == 3e-4
    # the scale alpha / r is 2 for all three (peft's AdaLoRA divides by init_r)
    assert cfgs["lora"].method.lora_alpha / cfgs["lora"].method.r == 2 == cfgs["sora"].method.lora_alpha / 8
    assert cfgs["adalora"].method.lora_alpha / cfgs["adalora"].method.init_r == 2


@pytest.mark.slow
def test_the_controls_run_and_get_their_own_rows(tmp_path):
    with pytest.raises(UserError, match="needs exactly one finished SoRA run"):
        train(_cfg(tmp_path, "method=lora", "method.rank_pattern_from=sora"))
    sora = train(_cfg(tmp_path, "method=sora", "method.xi=0.3"))  # a xi that prunes within 12 tiny steps
    assert 0 < sum(sora["ranks"].values()) < 96
    train(_cfg(tmp_path, "method=sora", "method.xi=0"))
    lora = train(_cfg(tmp_path, "method=lora"))
    pattern = train(_cfg(tmp_path, "method=lora", "method.rank_pattern_from=sora"))
    kept = {n: r for n, r in sora["ranks"].items() if r > 0}
    assert pattern["ranks"] == kept  # the ranks SoRA kept, module by module; pruned modules left out
    assert pattern["params"]["retained"] == sora["params"]["retained"]
    assert lora["params"]["total_rank"] == 96
    labels = set(table1(load_records(tmp_path))["method"])
    assert {"SoRA (r_max=8, code) · tiny [method.xi=0]", "SoRA (r_max=8, code) · tiny [method.xi=0.3]"} <= labels
    assert "LoRA (sora pattern) · tiny" in labels and len(labels) == 4
