"""A full disk during a run (a real one: a small tmpfs, filled for real) leaves the last checkpoint intact, says so
in one line, and the run resumes once space is back to the same result as an uninterrupted run."""

import subprocess

import pytest

from sora.config import load_config
from sora.errors import UserError
from sora.records import read_record
from sora.train import loop
from sora.train.checkpoint import read_checkpoint
from tests.conftest import GLUE_FIXTURE


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("needs root to mount a small tmpfs (mount -t tmpfs); CI and the dev machines run as root")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _cfg(results):
    return load_config(["task=mrpc", "method=sora", "method.variant=code", "method.xi=0.02", "model=tiny",
                        f"data.dir={GLUE_FIXTURE}", f"results_dir={results}", "train.max_steps=12",
                        "train.eval_steps=4", "train.save_steps=2", "train.batch_size=8", "progress=false",
                        "data.max_len=64"])


def _fill(disk):
    with open(disk / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


@pytest.mark.slow
def test_disk_full_keeps_the_last_checkpoint_and_the_run_resumes(small_disk, tmp_path, monkeypatch):
    reference = loop.train(_cfg(tmp_path / "clean"))
    real_save, calls = loop.save_checkpoint, {"n": 0}

    def save_then_fill(*args, **kwargs):
        real_save(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:
            _fill(small_disk)  # the disk fills up right after the checkpoint of step 2

    monkeypatch.setattr(loop, "save_checkpoint", save_then_fill)
    with pytest.raises(UserError, match="disk full .* resume from step 2") as err:
        loop.train(_cfg(small_disk / "res"))
    assert "\n" not in str(err.value)
    run_dir = next((small_disk / "res" / "records").iterdir())
    assert read_checkpoint(run_dir / "checkpoint", run_dir.name)["state"]["step"] == 2
    assert not list(run_dir.rglob("*.tmp")) and not (run_dir / "record.json").exists()

    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    (small_disk / "filler").unlink()  # space is back
    record = loop.train(_cfg(small_disk / "res"))
    assert "resumed" in (run_dir / "log.txt").read_text()
    keep = ("step", "select", "report", "total_rank", "lr", "loss")
    assert [{k: e[k] for k in keep} for e in record["evals"]] == [{k: e[k] for k in keep} for e in reference["evals"]]
    assert record["best"] == reference["best"] and read_record(run_dir / "record.json")["ranks"] == reference["ranks"]
