"""The README's "One run" block, run as written: the offline line trains to a record (cut to 4 of its 60 steps and
one evaluation by appended overrides: Hydra's last value wins, the rest is the line itself); the hub line, with no
hub, stops at once with one line naming the fix (what a user on an offline node sees)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from tests import script_process
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def _one_run_block() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text.split("## One run", 1)[1], re.S).group(1)
    return [shlex.split(line.split("#")[0]) for line in block.strip().splitlines()]


def test_the_one_run_block_is_what_this_test_runs():
    lines = _one_run_block()
    assert [line[:2] for line in lines] == [["python", "scripts/train.py"]] * 2
    assert "data.dir=data/glue_sample" in lines[0] and "model=deberta_v3_base" in lines[1]


def _run(argv: list[str], results, env=None, extra=()) -> subprocess.CompletedProcess:
    return script_process.run([sys.executable, *argv[1:], f"results_dir={results}", "progress=false", *extra], cwd=ROOT,
                          capture_output=True, text=True, timeout=900, env=env)


def test_the_offline_line_trains_to_a_finished_record(tmp_path):
    from sora.config import load_config

    line = _one_run_block()[0]
    assert load_config(line[2:]).train.max_steps == 60  # the line as a user types it
    res = _run(line, tmp_path, extra=("train.max_steps=4", "train.eval_steps=4"))  # one evaluation: 408 dev rows
    assert res.returncode == 0, res.stderr[-2000:]
    record = json.loads(next(tmp_path.glob("records/*/record.json")).read_text())
    assert record["status"] == "finished" and record["method"] == "sora" and record["task"] == "mrpc"
    assert record["config"]["model"]["name"] == "minilm" and record["evals"][-1]["step"] == 4


def test_the_hub_line_without_the_hub_is_one_line_naming_the_fix(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    res = _run(_one_run_block()[1], tmp_path / "results", env)
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-2000:]
    assert "HF_HUB_OFFLINE=1" in lines[0] or "model.source" in lines[0], lines[0]
    assert not (tmp_path / "results" / "records").exists()


def test_make_demo_runs_its_three_methods_and_prints_the_table(tmp_path):
    """``make demo`` = ``scripts/demo.py``, here on the 120-row SST-2 fixture, 2 steps a method and fp32 (bf16 is
    emulated on some CPUs): the real MiniLM weights, the three methods, the table and the heatmap it prints."""
    from tests.conftest import GLUE_FIXTURE

    make = (ROOT / "Makefile").read_text()
    assert "\t$(PY) scripts/demo.py\n" in make.split("\ndemo:", 1)[1].split("\n\n", 1)[0] + "\n"
    res = script_process.run([sys.executable, "scripts/demo.py", f"results_dir={tmp_path}", f"data.dir={GLUE_FIXTURE}",
                          "train.max_steps=2", "train.eval_steps=2", "train.precision=fp32", "progress=false"],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    table = res.stdout.split("SST-2 dev accuracy", 1)[1]
    for label in ("AdaLoRA (12->8) · minilm", "LoRA (r=8) · minilm", "SoRA (r_max=8, code) · minilm"):
        assert label in table, table
    assert "rank heatmap:" in table and len(list(tmp_path.glob("records/*/record.json"))) == 3
