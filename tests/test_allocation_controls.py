"""Allocation controls at SoRA's budget: LoRA on a random pattern with SoRA's per-type totals, the SoRA run picked by
its xi, the nearest uniform rank, and run ids unchanged by the new keys at their null default."""

import json
from collections import Counter
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from sora import controls
from sora.config import load_config
from sora.errors import UserError
from sora.rank_patterns import (
    matrix_kind,
    nearest_uniform_rank,
    random_pattern,
    sora_rank_pattern,
    type_totals,
)
from sora.records import identity, run_id, write_record
from sora.train.loop import train
from tests.conftest import GLUE_FIXTURE, ROOT

NAMES = {  # the tiny DeBERTa-v2's 12 adapted modules, by type
    "Q": "attention.self.query_proj", "K": "attention.self.key_proj", "V": "attention.self.value_proj",
    "AO": "attention.output.dense", "I": "intermediate.dense", "O": "output.dense"}


def _module(layer: int, kind: str) -> str:
    return f"deberta.encoder.layer.{layer}.{NAMES[kind]}"


# 2 layers x 6 types, r_max 8: Q 8 (any split), K 16 (forced 8 + 8), V 0 (forced 0 + 0), AO 1, I 5, O 9
SORA_RANKS = {_module(0, "Q"): 8, _module(1, "Q"): 0, _module(0, "K"): 8, _module(1, "K"): 8,
              _module(0, "V"): 0, _module(1, "V"): 0, _module(0, "AO"): 0, _module(1, "AO"): 1,
              _module(0, "I"): 2, _module(1, "I"): 3, _module(0, "O"): 4, _module(1, "O"): 5}
TOTALS = {"Q": 8, "K": 16, "V": 0, "AO": 1, "I": 5, "O": 9}

TINY = ["experiment=controlled_table1", "task=mrpc", "model=tiny", f"data.dir={GLUE_FIXTURE}", "train.max_steps=12",
        "train.eval_steps=6", "progress=false", "data.max_len=64"]


# (1) the random pattern


def test_random_pattern_keeps_per_type_totals_and_the_cap():
    assert type_totals(SORA_RANKS) == TOTALS
    for seed in range(20):
        pattern = random_pattern(SORA_RANKS, 8, seed)
        assert set(pattern) == set(SORA_RANKS)
        assert type_totals(pattern) == TOTALS
        assert all(0 <= r <= 8 for r in pattern.values())
        assert pattern[_module(0, "K")] == pattern[_module(1, "K")] == 8  # full: no room to move
        assert pattern[_module(0, "V")] == pattern[_module(1, "V")] == 0
        assert sorted(pattern[_module(i, "AO")] for i in (0, 1)) == [0, 1]


def test_random_pattern_is_deterministic_per_seed_and_differs_across_seeds():
    assert random_pattern(SORA_RANKS, 8, 3) == random_pattern(SORA_RANKS, 8, 3)
    patterns = {json.dumps(random_pattern(SORA_RANKS, 8, s), sort_keys=True) for s in range(10)}
    assert len(patterns) > 5  # Q, AO, I, O have room to move
    # the input's dict order does not matter, only the seed
    assert random_pattern(dict(reversed(list(SORA_RANKS.items()))), 8, 3) == random_pattern(SORA_RANKS, 8, 3)


def test_random_pattern_is_uniform_over_slots_not_over_rank_vectors():
    # 2 modules, r_max 2, total 2: of the C(4, 2) = 6 slot subsets, 4 give (1, 1) and one each (2, 0), (0, 2)
    ranks = {"a.q": 2, "b.q": 0}
    counts = Counter(tuple(random_pattern(ranks, 2, s).values()) for s in range(3000))
    assert set(counts) == {(1, 1), (2, 0), (0, 2)}
    assert 0.63 < counts[(1, 1)] / 3000 < 0.70
    assert 0.13 < counts[(2, 0)] / 3000 < 0.20 and 0.13 < counts[(0, 2)] / 3000 < 0.20


def test_unrecognised_modules_are_typed_by_their_last_name_component():
    ranks = {"model.layers.0.self_attn.q_proj": 3, "model.layers.1.self_attn.q_proj": 1,
             "model.layers.0.mlp.up_proj": 0, "model.layers.1.mlp.up_proj": 4}
    assert matrix_kind("model.layers.0.self_attn.q_proj") == "q_proj"
    assert matrix_kind(_module(1, "O")) == "O" and matrix_kind(_module(1, "AO")) == "AO"
    for seed in range(10):
        pattern = random_pattern(ranks, 4, seed)
        assert type_totals(pattern) == {"q_proj": 4, "up_proj": 4}
        assert all(0 <= r <= 4 for r in pattern.values())


def test_random_pattern_rejects_a_budget_over_the_cap():
    with pytest.raises(UserError, match="rank 9 > r_max 4"):
        random_pattern({"a.q": 5, "b.q": 4, "c.k": 0}, 4, 0)


# (2) picking the SoRA run among a xi grid


def _cfg(results_dir, *extra):
    return load_config([*TINY, f"results_dir={results_dir}", *extra])


def _fake_sora(results_dir, xi: float, ranks: dict, seed: int = 0) -> Path:
    """A finished SoRA record of the tiny recipe as the harness files it (identity, run id, checksum)."""
    cfg = _cfg(results_dir, "method=sora", f"method.xi={xi}", f"seed={seed}")
    rid = run_id(cfg)
    path = Path(results_dir) / "records" / rid / "record.json"
    write_record(path, {"run_id": rid, "status": "finished", "method": "sora", "seed": seed,
                        "identity": identity(cfg), "ranks": ranks,
                        "params": {"total_rank": sum(ranks.values()), "max_rank": 8 * len(ranks)}})
    return path


def test_pattern_xi_selects_among_a_xi_grid(tmp_path):
    small = {**{n: 1 for n in SORA_RANKS}, _module(0, "Q"): 4}  # total 15
    _fake_sora(tmp_path, 0.3, SORA_RANKS)
    _fake_sora(tmp_path, 0.01, small)
    _fake_sora(tmp_path, 0.3, small, seed=1)  # another seed: never picked for seed 0
    lora = ["method=lora", "method.rank_pattern_from=sora"]
    assert sora_rank_pattern(_cfg(tmp_path, *lora, "method.pattern_xi=0.3"), None) == SORA_RANKS
    assert sora_rank_pattern(_cfg(tmp_path, *lora, "method.pattern_xi=1e-2"), None) == small
    assert sora_rank_pattern(_cfg(tmp_path, *lora, "method.pattern_xi=0.3", "seed=1"), None) == small
    with pytest.raises(UserError, match="needs exactly one finished SoRA run") as err:
        sora_rank_pattern(_cfg(tmp_path, *lora), None)
    assert "found 2 SoRA runs" in str(err.value) and "method.pattern_xi=<xi>" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"pattern_xi=0.02 matches no finished SoRA run .*xi 0.01, 0.3") as err:
        sora_rank_pattern(_cfg(tmp_path, *lora, "method.pattern_xi=0.02"), None)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="pattern_xi must be null or the xi > 0"):
        sora_rank_pattern(_cfg(tmp_path, *lora, "method.pattern_xi=0"), None)
    # a random pattern is drawn from the chosen run, seeded by the run's seed unless pattern_seed says otherwise
    rand = ["method=lora", "method.rank_pattern_from=random", "method.pattern_xi=0.3"]
    assert sora_rank_pattern(_cfg(tmp_path, *rand), None) == random_pattern(SORA_RANKS, 8, 0)
    assert sora_rank_pattern(_cfg(tmp_path, *rand, "method.pattern_seed=7"), None) == random_pattern(SORA_RANKS, 8, 7)


def test_one_sora_run_needs_no_pattern_xi(tmp_path):
    with pytest.raises(UserError, match="found no finished SoRA run; run method=sora"):
        sora_rank_pattern(_cfg(tmp_path, "method=lora", "method.rank_pattern_from=random"), None)
    _fake_sora(tmp_path, 0.3, SORA_RANKS)
    assert sora_rank_pattern(_cfg(tmp_path, "method=lora", "method.rank_pattern_from=sora"), None) == SORA_RANKS
    with pytest.raises(UserError, match="must be null, 'sora' or 'random'"):
        sora_rank_pattern(_cfg(tmp_path, "method=lora", "method.rank_pattern_from=adalora"), None)


# (3) end to end


@pytest.mark.slow
def test_lora_on_a_random_pattern_runs_with_soras_type_totals(tmp_path):
    sora = train(_cfg(tmp_path, "method=sora", "method.xi=0.3"))  # a xi that prunes within 12 tiny steps
    assert 0 < sum(sora["ranks"].values()) < 96
    rand = train(_cfg(tmp_path, "method=lora", "method.rank_pattern_from=random", "method.pattern_xi=0.3"))
    assert rand["status"] == "finished"
    expected = random_pattern(sora["ranks"], 8, 0)
    assert rand["ranks"] == {n: r for n, r in expected.items() if r > 0}  # rank-0 modules are left out
    assert type_totals(rand["ranks"]) == {k: v for k, v in type_totals(sora["ranks"]).items() if v > 0}
    assert rand["params"]["total_rank"] == sora["params"]["total_rank"]
    assert rand["identity"]["method"]["pattern_xi"] == 0.3
    # (c) from the same folder: the nearest uniform rank of that SoRA run, through the experiment's composition
    extra = [*TINY[2:], f"results_dir={tmp_path}"]
    assert controls.uniform_ranks("controlled_table1", "mrpc", "0.3", [0], extra) == {0: nearest_uniform_rank(sora)}


# (4) the nearest uniform rank


def _rec(total: int, modules: int = 36) -> dict:
    ranks = {f"m{i}": 0 for i in range(modules)}
    for i in range(total):
        ranks[f"m{i % modules}"] += 1
    return {"run_id": "x", "ranks": ranks}


def test_nearest_uniform_rank():
    assert nearest_uniform_rank(_rec(100)) == 3  # 2.78
    assert nearest_uniform_rank(_rec(10)) == 1  # 0.28 -> 0 -> at least 1
    assert nearest_uniform_rank(_rec(0)) == 1
    assert nearest_uniform_rank(_rec(90)) == 3  # 2.5 rounds half up
    assert nearest_uniform_rank(_rec(89)) == 2  # 2.47
    assert nearest_uniform_rank(_rec(288)) == 8
    assert nearest_uniform_rank(_rec(17, modules=12)) == 1  # 1.42
    with pytest.raises(UserError, match="has no ranks"):
        nearest_uniform_rank({"run_id": "x", "ranks": {}})


def test_uniform_arms_group_seeds_by_rank(tmp_path):
    extra = [*TINY[2:], f"results_dir={tmp_path}"]  # the overrides after experiment and task
    _fake_sora(tmp_path, 0.3, SORA_RANKS)  # 39 / 12 -> 3
    _fake_sora(tmp_path, 0.3, {n: 1 for n in SORA_RANKS}, seed=1)  # 1
    _fake_sora(tmp_path, 0.3, {n: 3 for n in SORA_RANKS}, seed=2)  # 3
    _fake_sora(tmp_path, 0.01, {n: 8 for n in SORA_RANKS}, seed=2)  # another xi: ignored
    ranks = controls.uniform_ranks("controlled_table1", "mrpc", "0.3", [0, 1, 2], extra)
    assert ranks == {0: 3, 1: 1, 2: 3}
    assert controls.uniform_arms("controlled_table1", "mrpc", ranks, ["x=1"]) == [
        ["experiment=controlled_table1", "task=mrpc", "seed=1", "method=lora", "method.r=1", "x=1"],
        ["experiment=controlled_table1", "task=mrpc", "seed=0,2", "method=lora", "method.r=3", "x=1"]]
    with pytest.raises(UserError, match="uniform LoRA for seed 5: method.pattern_xi=0.3 matches no finished SoRA"):
        controls.uniform_ranks("controlled_table1", "mrpc", "0.3", [0, 5], extra)


def test_controls_script_dry_run_prints_the_sweeps_in_order(capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("controls_script", ROOT / "scripts" / "controls.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--experiment", "frontier_minilm", "--task", "stsb", "--xi", "4e-3", "--dry-run",
                        "data.dir=x"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("+ ")]
    assert [ln.split("scripts/train.py -m ", 1)[1] for ln in lines] == [
        "experiment=frontier_minilm task=stsb seed=0,1,2 method=sora method.xi=4e-3 data.dir=x",
        "experiment=frontier_minilm task=stsb seed=0,1,2 method=sora method.xi=0 data.dir=x",
        "experiment=frontier_minilm task=stsb seed=0,1,2 method=lora method.rank_pattern_from=sora "
        "method.pattern_xi=4e-3 data.dir=x",
        "experiment=frontier_minilm task=stsb seed=0,1,2 method=lora method.rank_pattern_from=random "
        "method.pattern_xi=4e-3 data.dir=x"]
    assert script.main(["--experiment", "frontier_minilm", "--task", "stsb", "--xi", "0"]) == 2
    assert "XI must be the xi > 0" in capsys.readouterr().err
    assert script.main(["--experiment", "frontier_minilm", "--task", "stsb", "--xi", "1", "--print-results-dir"]) == 0
    assert capsys.readouterr().out.strip() == "results/minilm_frontier"


# (5) run ids


def test_new_keys_at_null_keep_run_ids():
    cfg = load_config(["experiment=frontier_minilm", "task=mrpc", "method=lora", "method.r=2"])
    assert cfg.method.pattern_xi is None and cfg.method.pattern_seed is None
    old = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(old):
        del old.method["pattern_xi"], old.method["pattern_seed"]
    assert run_id(old, "fp") == run_id(cfg, "fp")
    assert "pattern_xi" not in identity(cfg, "fp")["method"]
    with open_dict(cfg):
        cfg.method.pattern_xi = 0.3
    assert run_id(cfg, "fp") != run_id(old, "fp")


def test_committed_lora_records_keep_their_ids():
    paths = sorted((ROOT / "results" / "minilm_frontier" / "records").glob("*-lora-*/record.json"))
    if not paths:
        pytest.skip("results/minilm_frontier holds no LoRA record")
    for path in paths:
        rec = json.loads(path.read_text())
        cfg = OmegaConf.create(rec["config"])
        assert "pattern_xi" not in cfg.method  # written before the keys existed
        with open_dict(cfg):
            cfg.method.pattern_xi = cfg.method.pattern_seed = None  # as today's lora.yaml composes them
        assert run_id(cfg, rec["identity"]["data"]["fingerprint"]) == rec["run_id"] == path.parent.name
