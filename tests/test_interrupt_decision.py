"""A signal at any phase loses no run, without Slurm: the requeue rule as a table (sora/train/requeue.py), the
actions it takes (scontrol / submitit faked), and tiny in-process runs signalled at startup, evaluation,
checkpoint write and record write, rerun to the record of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import types

import pytest

import sora.train.interrupt as interrupt
import sora.train.loop as loop
import sora.train.requeue as requeue
from sora.config import load_config
from sora.records import read_record
from sora.train.requeue import CHECKPOINT, EVALUATION, PHASES, RECORD, STARTUP, STEP, Decision, Facts, decide
from tests.conftest import GLUE_FIXTURE

TERM, USR2 = signal.SIGTERM, signal.SIGUSR2
IN_FLIGHT = (STEP, EVALUATION, CHECKPOINT)  # the loop finishes the step/write, checkpoints, then leaves

# (signal, phases, launcher, job) -> (when, save, requeue, exit code); the rule of sora/train/requeue.py
TABLE = [
    # a plain process / plain sbatch (no submitit): nothing requeues, exit 128 + signal
    (TERM, (STARTUP,), False, None, ("now", False, "none", 143)),
    (USR2, (STARTUP,), False, None, ("now", False, "none", 140)),
    (TERM, IN_FLIGHT, False, None, ("after_write", True, "none", 143)),
    (USR2, IN_FLIGHT, False, None, ("after_write", True, "none", 140)),
    (TERM, IN_FLIGHT, False, "11_5", ("after_write", True, "none", 143)),
    (TERM, (RECORD,), False, None, ("after_record", False, "none", 143)),
    (USR2, (RECORD,), False, "11_5", ("after_record", False, "none", 140)),
    # a submitit task in a Slurm job: USR2 -> submitit's requeue; SIGTERM -> requeue only if Slurm still runs it
    (USR2, (STARTUP,), True, "11_5", ("now", False, "submitit", 140)),
    (USR2, IN_FLIGHT, True, "11_5", ("after_write", True, "submitit", 140)),
    (TERM, (STARTUP,), True, "11_5", ("now", False, "if_running", 143)),
    (TERM, IN_FLIGHT, True, "11_5", ("after_write", True, "if_running", 143)),
    (TERM, IN_FLIGHT, True, "4242", ("after_write", True, "if_running", 143)),
    # after the last step the record is the result: returned under submitit, else written, then exit
    (TERM, (RECORD,), True, "11_5", ("after_record", False, "none", None)),
    (USR2, (RECORD,), True, "11_5", ("after_record", False, "none", None)),
    # submitit outside Slurm (its local executor): no job to requeue for SIGTERM; USR2 stays submitit's
    (TERM, IN_FLIGHT, True, None, ("after_write", True, "none", 143)),
    (USR2, IN_FLIGHT, True, None, ("after_write", True, "submitit", 140)),
]
CASES = [(sig, phase, launcher, job, expected) for sig, phases, launcher, job, expected in TABLE for phase in phases]


@pytest.mark.parametrize("restarts", [0, 3])
@pytest.mark.parametrize("sig,phase,launcher,job,expected", CASES)
def test_decision_table(sig, phase, launcher, job, expected, restarts):
    got = decide(Facts(sig, phase, launcher=launcher, job=job, restarts=restarts))
    assert got == Decision(*expected)  # the requeue count never changes the decision (fact 9)


def test_the_table_covers_every_phase_for_both_signals_and_launchers():
    covered = {(sig, phase, launcher) for sig, phase, launcher, _, _ in CASES}
    assert covered == {(s, p, b) for s in (TERM, USR2) for p in PHASES for b in (False, True)}


def test_unknown_phase_is_an_error():
    with pytest.raises(ValueError):
        decide(Facts(TERM, "somewhere", launcher=True, job="1"))


@pytest.mark.parametrize("env,expected", [
    ({}, (None, 0)),
    ({"SLURM_JOB_ID": "42"}, ("42", 0)),
    ({"SLURM_JOB_ID": "11", "SLURM_ARRAY_JOB_ID": "11", "SLURM_ARRAY_TASK_ID": "5", "SLURM_RESTART_COUNT": "2"},
     ("11_5", 2)),  # the array's last task holds the array's id: requeue by <array>_<task>, never by "11"
    ({"SLURM_JOB_ID": "16", "SLURM_ARRAY_JOB_ID": "11", "SLURM_ARRAY_TASK_ID": "0", "SLURM_RESTART_COUNT": "x"},
     ("11_0", 0)),
])
def test_job_facts_from_the_environment(env, expected):
    assert requeue.slurm_job(env) == expected


def _runner(returncode=0, exc=None, calls=None):
    def run(cmd, **kw):
        calls.append(cmd)
        if exc is not None:
            raise exc
        return subprocess.CompletedProcess(cmd, returncode, "", "slurm_requeue error: Socket timed out")
    return run


@pytest.mark.parametrize("returncode,exc,ok", [
    (0, None, True), (1, None, False), (0, subprocess.TimeoutExpired("scontrol", 60), False),
    (0, FileNotFoundError("scontrol"), False)])
def test_conditional_requeue_is_one_scontrol_call(returncode, exc, ok):
    calls = []
    assert requeue.requeue_if_running("11_5", runner=_runner(returncode, exc, calls)) is ok
    assert calls == [["scontrol", "requeue", "Incomplete", "11_5"]]


def test_the_conditional_requeue_runs_the_scontrol_on_path(tmp_path, monkeypatch):
    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / "scontrol"
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "argv"}\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    assert requeue.requeue_if_running("11_5")
    assert (tmp_path / "argv").read_text().split() == ["requeue", "Incomplete", "11_5"]


def test_wait_for_slurm_is_bounded():
    slept = []
    requeue.wait_for_slurm(0.05, sleep=slept.append)
    assert slept and all(s <= 5.0 for s in slept)


# ---- the actions, with submitit's real handler and scontrol faked

def _submitit_handler(requeued: list):
    """submitit's own SignalHandler as the job's USR2 handler (as under hydra-submitit-launcher), its Slurm requeue
    recorded instead of run; not timed out, no checkpoint method: it requeues and exits -1."""
    from submitit.core.job_environment import SignalHandler

    env = types.SimpleNamespace(global_rank=0, _requeue=requeued.append)
    delayed = types.SimpleNamespace(_timeout_min=10**6, _timeout_countdown=3, function=object())
    return SignalHandler(env, None, delayed).checkpoint_and_try_requeue


@pytest.fixture
def slurm_task(monkeypatch):
    """A Slurm array task's environment, scontrol faked: the calls made (requeue_if_running, wait_for_slurm)."""
    for key, value in {"SLURM_JOB_ID": "11", "SLURM_ARRAY_JOB_ID": "11", "SLURM_ARRAY_TASK_ID": "5"}.items():
        monkeypatch.setenv(key, value)
    calls = types.SimpleNamespace(requeue=[], waited=[], ok=True)

    def fake_requeue(job):
        calls.requeue.append(job)
        return calls.ok

    monkeypatch.setattr(interrupt, "requeue_if_running", fake_requeue)
    monkeypatch.setattr(interrupt, "wait_for_slurm", lambda: calls.waited.append(True))
    return calls


@pytest.mark.parametrize("phase", [STARTUP, STEP])
def test_sigterm_under_submitit_requeues_only_if_running(slurm_task, phase):
    submitit_requeues = []
    with pytest.raises(SystemExit) as exc:
        interrupt._leave(TERM, phase, {USR2: _submitit_handler(submitit_requeues), TERM: signal.SIG_DFL})
    assert exc.value.code == 143
    assert slurm_task.requeue == ["11_5"] and not slurm_task.waited
    assert submitit_requeues == []  # never submitit's unconditional requeue for a SIGTERM


def test_a_failed_conditional_requeue_waits_for_slurm_instead_of_exiting_at_once(slurm_task):
    slurm_task.ok = False
    with pytest.raises(SystemExit) as exc:
        interrupt._leave(TERM, STEP, {USR2: _submitit_handler([]), TERM: signal.SIG_DFL})
    assert exc.value.code == 143 and slurm_task.waited == [True]


def test_usr2_under_submitit_is_submitits_requeue(slurm_task):
    submitit_requeues = []
    with pytest.raises(SystemExit) as exc:
        interrupt._leave(USR2, STEP, {USR2: _submitit_handler(submitit_requeues), TERM: signal.SIG_DFL})
    assert exc.value.code == -1 and submitit_requeues == [3] and slurm_task.requeue == []


@pytest.mark.parametrize("sig", [TERM, USR2])
def test_without_submitit_a_signal_only_exits(slurm_task, sig):
    with pytest.raises(SystemExit) as exc:
        interrupt._leave(sig, STEP, {USR2: signal.SIG_DFL, TERM: signal.SIG_DFL})
    assert exc.value.code == 128 + sig and slurm_task.requeue == []


def test_after_the_record_submitit_gets_the_result(slurm_task):
    assert interrupt._leave(TERM, RECORD, {USR2: _submitit_handler([]), TERM: signal.SIG_DFL}) is None
    assert slurm_task.requeue == []


def test_a_sigterm_makes_a_noted_usr2_conditional():
    scope = interrupt._Scope()
    scope.phase = STEP
    scope.note(USR2, None)
    scope.note(TERM, None)
    scope.note(USR2, None)
    assert scope.signum == TERM


def test_handlers_belong_to_the_run_and_are_given_back():
    before = {sig: signal.getsignal(sig) for sig in interrupt.SIGNALS}

    @interrupt.interruptible
    def startup():
        assert signal.getsignal(TERM) != before[TERM]
        os.kill(os.getpid(), TERM)  # before the loop: leaves at once, from the handler
        raise AssertionError("not reached")

    with pytest.raises(SystemExit) as exc:
        startup()
    assert exc.value.code == 143
    assert {sig: signal.getsignal(sig) for sig in interrupt.SIGNALS} == before

    @interrupt.interruptible
    def loop_then_record():
        with interrupt.Interrupts() as it:
            os.kill(os.getpid(), USR2)  # in the loop: only noted
            assert it.requested and it.signum == USR2
        return "record"

    with pytest.raises(SystemExit) as exc:  # no launcher: the record is written, then the run exits
        loop_then_record()
    assert exc.value.code == 140
    assert {sig: signal.getsignal(sig) for sig in interrupt.SIGNALS} == before


# ---- tiny in-process runs: a signal at each phase, then the same config rerun

OVERRIDES = ["task=mrpc", "method=sora", "method.variant=code", "method.xi=0.02", "model=tiny",
             f"data.dir={GLUE_FIXTURE}", "train.max_steps=12", "train.eval_steps=3", "train.batch_size=8",
             "train.save_steps=0", "progress=false", "data.max_len=64", "method.lora_dropout=0.1"]


def _cfg(results, *extra):
    return load_config([*OVERRIDES, f"results_dir={results}", *extra])


def _comparable(record):
    keep = ("step", "select", "report", "total_rank", "nonzero_params", "lr", "loss")
    return {"evals": [{k: e[k] for k in keep} for e in record["evals"]], "best": record["best"],
            "ranks": record["ranks"], "params": record["params"]}


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return _comparable(loop.train(_cfg(tmp_path_factory.mktemp("clean"))))


def _signal_once(real, sig, at_call=1):
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at_call:
            os.kill(os.getpid(), sig)
        return real(*args, **kwargs)

    return wrapper


def _run_dir(results):
    return next((results / "records").iterdir())


PHASE_HOOKS = {  # phase -> (loop attribute signalled, the call it signals, extra overrides, step resumed at)
    "startup": ("_prepare", 1, (), None),  # data encoding: before the model, before any step
    "evaluation": ("_evaluate_all", 2, (), 6),  # the 2nd evaluation (step 6)
    "checkpoint": ("save_checkpoint", 1, ("train.save_steps=4",), 4),  # the first periodic checkpoint write
}


@pytest.mark.slow
@pytest.mark.parametrize("sig", [TERM, USR2])
@pytest.mark.parametrize("phase", sorted(PHASE_HOOKS))
def test_a_signal_at_each_phase_then_a_rerun_gives_the_clean_record(phase, sig, clean, tmp_path, monkeypatch):
    name, at_call, extra, resumed_at = PHASE_HOOKS[phase]
    cfg = _cfg(tmp_path / "res", *extra)
    with monkeypatch.context() as m:
        m.setattr(loop, name, _signal_once(getattr(loop, name), sig, at_call))
        with pytest.raises(SystemExit) as exc:
            loop.train(cfg)
    assert exc.value.code == 128 + sig
    run_dir = _run_dir(tmp_path / "res")
    assert not (run_dir / "record.json").exists()
    log = (run_dir / "log.txt").read_text()
    if resumed_at is None:
        assert "before the first step: nothing to save" in log and not (run_dir / "checkpoint").exists()
    else:
        assert f"after step {resumed_at}; checkpoint at step {resumed_at}" in log
    again = loop.train(cfg)  # the rerun (or the requeued attempt): resumes from what the signal left
    log = (run_dir / "log.txt").read_text()
    if resumed_at is not None:
        assert f"resumed {again['run_id']} at step {resumed_at} " in log  # 0 steps redone
    assert _comparable(again) == clean
    assert _comparable(read_record(run_dir / "record.json")) == clean
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == len(again["evals"])


@pytest.mark.slow
def test_a_signal_during_the_record_write_finishes_the_run_first(clean, tmp_path, monkeypatch):
    cfg = _cfg(tmp_path / "res")
    with monkeypatch.context() as m:
        m.setattr(loop, "write_record", _signal_once(loop.write_record, TERM))
        with pytest.raises(SystemExit) as exc:  # no launcher: the record is written, then the process exits
            loop.train(cfg)
    assert exc.value.code == 143
    run_dir = _run_dir(tmp_path / "res")
    assert _comparable(read_record(run_dir / "record.json")) == clean and not (run_dir / "checkpoint").exists()
    assert _comparable(loop.train(cfg)) == clean  # the rerun finds it finished


@pytest.mark.slow
@pytest.mark.parametrize("sig", [TERM, USR2])
def test_under_submitit_a_signalled_evaluation_requeues_and_the_requeued_attempt_resumes(sig, slurm_task, clean,
                                                                                          tmp_path, monkeypatch):
    submitit_requeues = []
    cfg = _cfg(tmp_path / "res")
    previous = signal.signal(USR2, _submitit_handler(submitit_requeues))
    try:
        with monkeypatch.context() as m:
            m.setattr(loop, "_evaluate_all", _signal_once(loop._evaluate_all, sig, 2))
            with pytest.raises(SystemExit) as exc:
                loop.train(cfg)
    finally:
        signal.signal(USR2, previous)
    if sig == TERM:
        assert exc.value.code == 143 and slurm_task.requeue == ["11_5"] and submitit_requeues == []
    else:
        assert exc.value.code == -1 and submitit_requeues == [3] and slurm_task.requeue == []
    assert _comparable(loop.train(cfg)) == clean  # the requeued attempt
