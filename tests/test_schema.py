"""The typed config schema (sora.schema, sora.run_schema, each method module): its rules on hand-made
values, the shipped yaml files held to its defaults, every shipped composition accepted, the SFT entry point."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

import pytest
from omegaconf import OmegaConf

from sora.config import CONF_DIR, load_config
from sora.errors import UserError
from sora.run_schema import (
    LOGGER_SCHEMAS,
    SCHEDULER_SCHEMAS,
    RunSchema,
    SftSchema,
    SparsifySchema,
    TrainSchema,
    check_run_schema,
)
from sora.schema import check_node, positive, schema_defaults, spec
from sora.tuners.methods import METHODS
from tests import script_process


@dataclass
class _Inner:
    k: int = spec(1, what="a positive integer", ok=positive, example=1)


@dataclass
class _Toy:
    n: int = 1
    x: float = 0.5
    flag: bool = False
    mode: Literal["a", "b"] = "a"
    maybe: float | None = spec(None, what="null or > 0", ok=positive)
    xs: list[float] = spec(default_factory=lambda: [1.0])
    inner: _Inner = spec(default_factory=_Inner)


@pytest.mark.parametrize("values,message", [
    ({"n": 2.5}, "n must be an integer, got 2.5"),
    ({"n": True}, "n must be an integer, got True"),         # a bool is not a number
    ({"x": math.nan}, "x must be a finite number, got nan"),
    ({"x": math.inf}, "x must be a finite number, got inf"),
    ({"x": "0.1"}, "x must be a finite number, got '0.1'"),
    ({"flag": "yes"}, "flag must be true or false, got 'yes'"),
    ({"mode": "c"}, "mode must be one of a, b, got 'c'"),
    ({"maybe": 0}, "maybe must be null or > 0, got 0"),
    ({"xs": [1.0, "a"]}, "xs must be a list of a finite number, got [1.0, 'a']"),
    ({"xs": "1.0"}, "xs must be a list of a finite number"),
    ({"inner": {"k": 0}}, "inner.k must be a positive integer, got 0; e.g. inner.k=1"),
    ({"inner": {"j": 0}}, "unknown key inner.j; inner has k"),
    ({"typo": 1}, "unknown key typo; the config has n, x, flag"),
])
def test_rules_on_hand_made_values(values, message):
    with pytest.raises(UserError) as err:
        check_node(values, _Toy)
    assert str(err.value).startswith(message), str(err.value)


def test_valid_values_pass_and_foreign_keys_are_left_to_their_owner():
    check_node({"n": 3, "x": 2, "maybe": None, "xs": [], "mode": "b", "inner": {"k": 4}}, _Toy)  # int for float
    check_node({"n": 1, "xi": 1e-4}, _Toy, foreign=frozenset({"xi"}))
    with pytest.raises(UserError, match="unknown key xi"):
        check_node({"n": 1, "xi": 1e-4}, _Toy)


def _raw(path: Path) -> dict:
    node = OmegaConf.load(path)
    return {k: v for k, v in OmegaConf.to_container(node, resolve=False).items() if k != "defaults"}


def _assert_defaults(yaml_values: dict, schema, where: str):
    defaults = schema_defaults(schema)
    for key, value in yaml_values.items():
        assert key in defaults, f"{where}: {key} is not in {schema.__name__}"
        nested = isinstance(value, dict) and key not in ("overrides", "config")
        for sub, v in (value.items() if nested else [(None, value)]):
            want = defaults[key].get(sub) if nested else defaults[key]
            assert want == v, f"{where}: {key}.{sub or ''} yaml {v!r} != schema {want!r}"


def test_shipped_group_files_say_the_schema_defaults():
    """The yaml files are what users read and edit: they must say exactly the dataclasses' defaults."""
    for name, cls in METHODS.items():
        schema = cls.schema
        values = _raw(CONF_DIR / "method" / f"{name}.yaml")
        assert set(values) == {f.name for f in fields(schema)}, name
        _assert_defaults(values, schema, f"method/{name}.yaml")
    for group, schemas in (("scheduler", SCHEDULER_SCHEMAS), ("logger", LOGGER_SCHEMAS)):
        for name, schema in schemas.items():
            values = _raw(CONF_DIR / group / f"{name}.yaml")
            assert set(values) == {f.name for f in fields(schema)}, (group, name)
            _assert_defaults(values, schema, f"{group}/{name}.yaml")
    train = {k: v for k, v in _raw(CONF_DIR / "train.yaml").items() if k != "hydra"}
    _assert_defaults(train, RunSchema, "train.yaml")
    assert set(train["train"]) == {f.name for f in fields(TrainSchema)}
    sft = {k: v for k, v in _raw(CONF_DIR / "sft.yaml").items() if k not in ("hydra", "method")}
    _assert_defaults(sft, SftSchema, "sft.yaml")


def test_choices_are_the_code_s_own():
    """The Literal choices must be the lists the code dispatches on, not a copy that can drift."""
    from typing import get_args, get_type_hints

    from sora.attention import CHOICES
    from sora.optim import OPTIMIZERS, SCHEDULES
    from sora.train import sparsify

    hints = get_type_hints(TrainSchema)
    assert get_args(hints["optimizer"]) == ("auto", *OPTIMIZERS)
    assert get_args(hints["schedule"]) == SCHEDULES
    assert get_args(hints["attention"]) == CHOICES
    assert get_args(get_type_hints(SparsifySchema)["schedule"]) == sparsify.SCHEDULES


def test_every_shipped_composition_passes():
    experiments = [None] + sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
    checked = 0
    for exp in experiments:
        for method in METHODS:
            overrides = [f"method={method}"] + ([f"experiment={exp}"] if exp else [])
            try:
                cfg = load_config(overrides)
            except Exception:  # e.g. the verdict recipe has no AdaLoRA hparams file: not a shipped combination
                continue
            check_run_schema(cfg)
            checked += 1
    for lm in sorted(p.stem for p in (CONF_DIR / "lm").glob("*.yaml")):
        check_run_schema(load_config([f"lm={lm}"], config_name="sft"), SftSchema)
    assert checked >= 3 * len(experiments) - 1  # all but verdict x AdaLoRA


@pytest.mark.parametrize("override,message", [
    ("seed=abc", "seed must be an integer in [0, 2**32)"),
    ("train.grad_accum=0", "train.grad_accum must be a positive integer"),
    ("train.warmup=-1", "train.warmup must be >= 0"),
    ("method.xi=nan", "method.xi must be a finite number >= 0"),
    ("+data.paht=x.jsonl", "unknown key data.paht"),
    ("lm=qwen2_5_0_5b,lm.dtype=float8", "lm.dtype must be one of float32"),
])
def test_sft_refuses_bad_values_before_writing(override, message, tmp_path):
    from sora.sft.run import run_sft

    cfg = load_config([f"results_dir={tmp_path}/res", *override.split(",")], config_name="sft")
    with pytest.raises(UserError, match=re.escape(message)):
        run_sft(cfg)
    assert not (tmp_path / "res").exists()


def test_the_real_cli_refuses_before_any_folder(tmp_path):
    """Through Hydra's own entry point (which creates hydra.run.dir before our code runs): exit 2, one line, and
    not even the results folder exists."""
    import sys

    from tests.conftest import GLUE_FIXTURE, ROOT

    res = script_process.run([sys.executable, str(ROOT / "scripts" / "train.py"), "task=cola", "model=tiny",
                          f"data.dir={GLUE_FIXTURE}", f"results_dir={tmp_path}/res", "seed=abc"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines() == ["error: seed must be an integer in [0, 2**32), got 'abc'; e.g. seed=0"]
    assert list(tmp_path.iterdir()) == []
