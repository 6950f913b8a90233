"""`make status`: every run of a sweep from its files alone, and the command that reruns what is missing."""

import fcntl
import os
import shutil
import sys

import pytest

from sora.records import read_record, write_record
from sora.status import rerun_commands, split_sweep_value, sweep_status
from tests import script_process
from tests.conftest import GLUE_FIXTURE, ROOT

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def test_sweep_values_split_like_hydra():
    assert split_sweep_value("0,21,42") == ["0", "21", "42"]
    assert split_sweep_value("[0.9,0.999],[0.8,0.9]") == ["[0.9,0.999]", "[0.8,0.9]"]
    assert split_sweep_value("mrpc") == ["mrpc"]


@pytest.mark.slow
def test_status_of_a_real_sweep_in_every_state(tmp_path):
    res = script_process.run([sys.executable, str(ROOT / "scripts" / "train.py"), "-m", "task=cola", "method=sora",
                          "model=tiny", f"data.dir={GLUE_FIXTURE}", f"results_dir={tmp_path}", "train.max_steps=4",
                          "train.batch_size=8", "progress=false", "data.max_len=64", "seed=0,1,2,3,4"],
                         capture_output=True, text=True, env=ENV, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    by_seed = {read_record(p)["seed"]: p.parent for p in tmp_path.glob("records/*/record.json")}
    assert {s.state for s in sweep_status(tmp_path)} == {"finished"} and len(by_seed) == 5
    # seed 1 never ran; seed 2 failed; seed 3 was interrupted after a checkpoint; seed 4 is running now
    shutil.rmtree(by_seed[1])
    rec = read_record(by_seed[2] / "record.json")
    write_record(by_seed[2] / "record.json", {**rec, "status": "failed", "error": "non-finite loss at step 3..3"})
    (by_seed[3] / "record.json").unlink()
    (by_seed[3] / "checkpoint").mkdir()
    (by_seed[3] / "checkpoint" / "state.pt").write_bytes(b"x")
    (by_seed[4] / "record.json").unlink()
    fd = os.open(by_seed[4] / ".lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what a live run holds
    try:
        out = script_process.run([sys.executable, str(ROOT / "scripts" / "status.py"), str(tmp_path), "--rerun-failed"],
                             capture_output=True, text=True, env=ENV, timeout=120).stdout
        in_process = rerun_commands(sweep_status(tmp_path))
    finally:
        os.close(fd)
    states = {line.split()[1]: line.split()[0] for line in out.splitlines() if line.split()[:1] and
              line.split()[0] in ("finished", "failed", "missing", "interrupted", "running")}
    assert sorted(states.values()) == ["failed", "finished", "interrupted", "missing", "running"]
    assert "running      " + by_seed[4].name in out and "step 4 of 4" in out  # progress.json of the last eval
    assert "non-finite loss at step 3..3" in out and "resumable at step" in out
    assert "5 runs: 1 running, 1 interrupted, 1 failed, 1 missing, 1 finished" in out
    rerun = [line for line in out.splitlines() if line.startswith("python scripts/train.py -m")]
    assert len(rerun) == 1 and rerun[0].endswith("seed=2,1") and "method=sora" in rerun[0]
    assert in_process == rerun
    # once the live run's lock is gone with no checkpoint, it is "started" and joins the rerun
    assert rerun_commands(sweep_status(tmp_path))[0].endswith("seed=2,4,1")
