"""No run lost: kill -9 mid-run and resume to identical metrics; 8 concurrent runs on one results folder."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from sora.records import read_record
from tests import script_process
from tests.conftest import GLUE_FIXTURE, ROOT

pytestmark = pytest.mark.slow
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def _argv(results, method, extra=()):
    return [sys.executable, str(ROOT / "scripts" / "train.py"), "task=mrpc", f"method={method}", "model=tiny",
            f"data.dir={GLUE_FIXTURE}", f"results_dir={results}", "train.max_steps=36", "train.eval_steps=6",
            "train.save_steps=4", "train.log_steps=5", "train.batch_size=8", "progress=false", "data.max_len=64",
            "method.lora_dropout=0.1", *extra]  # dropout on: resume must restore the RNG too


def _comparable(record):
    keep = ("step", "select", "report", "total_rank", "nonzero_params", "lr", "loss")
    return {"evals": [{k: e[k] for k in keep} for e in record["evals"]], "best": record["best"],
            "ranks": record["ranks"], "params": record["params"]}


@pytest.mark.parametrize("method,extra", [
    ("sora", ("method.variant=code", "method.xi=0.02")),
    ("adalora", ("method.tinit=6", "method.tfinal=12", "method.deltaT=2", "method.ref_steps=null")),
])
def test_kill_9_then_rerun_resumes_to_identical_metrics(method, extra, tmp_path):
    clean = script_process.run(_argv(tmp_path / "clean", method, extra), env=ENV, capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr[-2000:]
    reference = read_record(next((tmp_path / "clean").glob("records/*/record.json")))

    results = tmp_path / "killed"
    kill_after_evals = random.Random(os.getpid()).randint(1, 4)  # an arbitrary point: after eval k (of 6)
    proc = script_process.start(_argv(results, method, extra), env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
    deadline = time.time() + 300
    metrics = None
    while time.time() < deadline and proc.poll() is None:
        metrics = metrics or next(results.glob("records/*/metrics.jsonl"), None)
        if metrics and metrics.exists() and len(metrics.read_text().splitlines()) >= kill_after_evals:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    run_dir = metrics.parent
    assert not (run_dir / "record.json").exists() and (run_dir / "checkpoint" / "state.pt").exists()

    resumed = script_process.run(_argv(results, method, extra), env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed" in (run_dir / "log.txt").read_text()
    record = read_record(run_dir / "record.json")
    assert _comparable(record) == _comparable(reference)
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == len(record["evals"]) == 6
    assert not (run_dir / "checkpoint").exists()  # finished: only record, adapter, logs stay


def test_eight_concurrent_runs_on_one_results_dir(tmp_path):
    seeds = [0, 1, 2, 3, 4, 0, 1, 2]  # 5 distinct configs, 3 of them launched twice
    argv = [[sys.executable, str(ROOT / "scripts" / "train.py"), "task=cola", "method=sora", "model=tiny",
             f"data.dir={GLUE_FIXTURE}", f"results_dir={tmp_path}", "train.max_steps=30", "train.eval_steps=10",
             "train.batch_size=8", "progress=false", "data.max_len=64", f"seed={s}"] for s in seeds]
    procs = [script_process.start(a, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for a in argv]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    paths = sorted(tmp_path.glob("records/*/record.json"))
    assert len(paths) == 5
    assert sorted(read_record(p)["seed"] for p in paths) == [0, 1, 2, 3, 4]
    skipped = sum(("another process is running" in o[0]) or ("not overwriting" in o[0]) for o in outs)
    assert skipped == 3  # each duplicate waited out or skipped, none trained twice
    for p in paths:
        log = (p.parent / "log.txt").read_text()
        assert log.count(f"run {p.parent.name} on") == 1, "an identical config trained twice"
    leftovers = [q for q in tmp_path.rglob("*") if q.name.endswith(".tmp")]
    assert not leftovers


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR2])
def test_a_signalled_run_finishes_its_step_checkpoints_and_resumes_identically(sig, tmp_path):
    """Preemption (SIGTERM) and submitit's USR2: no step is lost, none is redone, the result is the clean one."""
    extra = ("method.variant=code", "method.xi=0.02", "train.max_steps=60", "train.save_steps=0")
    clean = script_process.run(_argv(tmp_path / "clean", "sora", extra), env=ENV, capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr[-2000:]
    reference = read_record(next((tmp_path / "clean").glob("records/*/record.json")))

    results = tmp_path / "signalled"
    proc = script_process.start(_argv(results, "sora", extra), env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
    deadline, metrics = time.time() + 300, None
    while time.time() < deadline and proc.poll() is None:
        metrics = metrics or next(results.glob("records/*/metrics.jsonl"), None)
        if metrics and metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            os.kill(proc.pid, sig)
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == 128 + sig, (proc.returncode, proc.stderr.read()[-2000:])
    run_dir = metrics.parent
    log = (run_dir / "log.txt").read_text()
    stopped = int(log.split("interrupted by ")[1].split("after step ")[1].split(";")[0])
    assert 12 <= stopped < 60 and (run_dir / "checkpoint" / "state.pt").exists()  # save_steps=0: only the signal

    resumed = script_process.run(_argv(results, "sora", extra), env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    log = (run_dir / "log.txt").read_text()
    assert f"resumed {reference['run_id']} at step {stopped} " in log  # 0 optimizer steps redone
    assert _comparable(read_record(run_dir / "record.json")) == _comparable(reference)
