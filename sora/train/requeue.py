"""What a signalled run does once its work is safe: decided from facts that cannot change under it.

Sources, read for this rule (issue 28): Slurm 22.05.8 (tag ``slurm-22-05-8-1``: Debian 12's slurm-wlm, the one
``scripts/slurm/start_slurm.sh`` installs) unless marked HEAD (SchedMD/slurm 284c3b95f0); submitit 1.5.4
(facebookincubator/submitit e49d5e7, identical to the installed files).

Who sends which signal:

1. Preemption with GraceTime: slurmctld sets the job's end to now + GraceTime and sends SIGCONT then SIGTERM
   (``src/slurmctld/preempt.c:412-425``; with ``PreemptParameters=send_user_signal``, the job's ``--signal``, i.e.
   USR2, instead: 419-421) to the steps only (``job_signal`` with flags 0 -> ``KILL_STEPS_ONLY``,
   ``src/slurmctld/job_mgr.c:16563-16568``). The job stays RUNNING. At the new end, ``job_time_limit`` calls
   ``slurm_job_preempt`` again, but only for a job still RUNNING (``job_mgr.c:9330-9343``); the grace is then over
   (``preempt.c:394-399``) and PreemptMode=REQUEUE requeues the job (``preempt.c:485-493``; CANCEL kills it,
   476-484), with the SIGCONT/SIGTERM/SIGKILL sequence (``doc/man/man5/slurm.conf.5:6542-6552``).
2. A batch script that ends during the grace time is NOT requeued before Slurm 24.05: its completion is an ordinary
   one (``src/slurmctld/proc_req.c:2320``, ``job_requeue`` false) and ``_job_complete`` marks it FAILED for a
   non-zero exit, COMPLETED for 0 (``job_mgr.c:6529-6549``). Slurm 24.05 (commit a689104d15, "assume that job
   signalled for GraceTime was preempted") requeues it (HEAD ``proc_req.c:2424-2433``). So on 22.05 a preempted
   run that exits without having requeued itself is lost, whatever its exit code.
3. Every other SIGTERM is the start of slurmd's terminate sequence, and slurmctld has settled the job's fate before
   sending it: ``scancel`` sets CANCELLED|COMPLETING (``job_mgr.c:5843-5856``), the time limit TIMEOUT|COMPLETING
   (9396-9399, 9683-9687), ``scontrol requeue`` or a preemption without grace requeue it first (PENDING|COMPLETING,
   17360-17398), a node set DOWN requeues it (4308-4336) or ends it NODE_FAIL (4356-4358). slurmd then sends
   SIGCONT, SIGTERM (``src/slurmd/slurmd/req.c:5356-5369``) and SIGKILL ``max(KillWait, 5)`` s later (req.c:5423-5425;
   ``doc/man/man1/scancel.1:318-322``; KillWait: ``slurm.conf.5:1842-1847``).
4. ``scancel --signal=TERM|USR2`` reaches the steps only and changes no state (``scancel.1:36-38, 141-147``).
5. The time-limit warning ``--signal=USR2@N`` (submitit sets it: ``submitit/slurm/slurm.py:482``) is SIGCONT then
   USR2, once, to the steps, N s before the end (``job_mgr.c:19065-19091``).

What the run can and cannot know:

6. ``scontrol requeue <job>`` also requeues a job that is CANCELLED, COMPLETING or finished
   (``job_mgr.c:17313-17322, 17379-17381``; ``doc/man/man1/scontrol.1:281-282``): an unconditional requeue undoes a
   ``scancel``. ``scontrol requeue Incomplete <job>`` (``scontrol.1:288-291``; ``src/scontrol/update_job.c:1378-1379``)
   requeues only a job that is RUNNING or SUSPENDED when slurmctld handles the request, and is a successful no-op
   otherwise (``job_mgr.c:17235-17238``), under slurmctld's job write lock (``proc_req.c:5011-5018``): a
   compare-and-requeue, with no window between the look and the act.
7. A state read with ``scontrol show job`` cannot decide: during the grace the job reads RUNNING both for a
   preemption and for ``scancel --signal=TERM``; COMPLETING hides the base state (``CANCELLED|COMPLETING`` and
   ``PENDING|COMPLETING`` - already requeued - both read COMPLETING: ``src/common/slurm_protocol_defs.c:2824-2825``);
   and for the task that holds the array's own id (the last task to start keeps the array's record:
   ``job_mgr.c:4709-4711, 18649-18680``) ``scontrol show job <SLURM_JOB_ID>`` prints every task of the array
   (``job_mgr.c:10439-10466``), so the old parse (last ``JobState=`` wins) read another task's state - one that had
   already requeued itself on the same preemption: COMPLETING. This fits issue 28, whose lost run was ``11_5``, the
   last task of a 0-5 array, and it exited during the grace time (2).
8. A requeue must name ``<array>_<task>``: a bare id equal to the array's id requeues every task
   (``job_mgr.c:17596-17626``). ``SLURM_ARRAY_JOB_ID``/``SLURM_ARRAY_TASK_ID`` (``src/common/env.c:1195-1198``) give
   it, as submitit's own ``job_id`` does (``submitit/core/job_environment.py:80-85``).
9. ``SLURM_RESTART_COUNT`` (``env.c:755-757``) counts requeues whoever asked (``job_mgr.c:17377``): it cannot tell a
   preemption from a ``scancel`` and is only logged. No fact available at signal time tells a preemption's SIGTERM
   from ``scancel --signal=TERM`` (1 and 4): both leave the job RUNNING.
10. submitit: SIGTERM and SIGCONT go to ``bypass`` (logged, ignored); USR2 to ``checkpoint_and_try_requeue``
    (``job_environment.py:155-158``), which counts a timeout (177-193, 213-221), dumps the launcher's checkpoint,
    runs an unconditional ``scontrol requeue <array>_<task>`` (``slurm/slurm.py:188-191``) and exits (228-230, 248-251).

The rule (``decide``):

- Whatever the signal, the run's work is made safe first: before the first step there is nothing to save (the
  previous attempt's checkpoint, if any, is untouched) and the run leaves at once; during a step, an evaluation or
  a checkpoint write it finishes that step/write and writes its checkpoint; after the last step it writes its record.
- USR2 under submitit: submitit's own handler (requeue, timeout count) - the time limit must not lose a run.
- SIGTERM under submitit in a Slurm job: ``scontrol requeue Incomplete <array>_<task>``, then exit. A preemption in
  its grace time (RUNNING) and ``scancel --signal=TERM`` are requeued; a job Slurm has already cancelled, requeued,
  timed out or preempted without grace is left as Slurm set it, so a user's ``scancel`` stays cancelled. Either order
  against a concurrent ``scancel`` is right: before ours, ours is a no-op; after ours, it cancels the pending job.
  Should the request fail (slurmctld unreachable), the run does not exit: it waits for Slurm to end the job (1: a
  preempted job is then requeued by Slurm itself), at most ``WAIT_S``.
- Without submitit (a plain process, a plain ``sbatch``): exit 128 + the signal; nothing requeues, the checkpoint
  makes the next run of the same command resume.
- A signal after the last step: the record is written; under submitit the run returns normally (its result), else
  it exits 128 + the signal after the record.

Residual risk: a USR2 goes to submitit's unconditional requeue (10), so a plain ``scancel`` landing within the
seconds between a USR2 and the checkpoint's end is undone (as with submitit alone); a SIGTERM noted before that
point makes the requeue conditional. ``scancel --signal=TERM`` and a PreemptMode=CANCEL preemption with GraceTime
requeue (4 and 9: indistinguishable from a preemption). A plain ``sbatch`` (no submitit) preempted on Slurm < 24.05
ends FAILED (2); its checkpoint is intact for a rerun.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass

log = logging.getLogger("sora")

STARTUP, STEP, EVALUATION, CHECKPOINT, RECORD = "startup", "step", "evaluation", "checkpoint", "record"
PHASES = (STARTUP, STEP, EVALUATION, CHECKPOINT, RECORD)
WAIT_S = 600  # a refused/failed conditional requeue: how long to wait for Slurm to end (or requeue) the job itself


@dataclass(frozen=True)
class Facts:
    """What the run knows when it acts, none of it read from Slurm's changing state."""

    signum: int  # SIGTERM wins over a USR2 noted before it (see Interrupts)
    phase: str  # where the signal landed: one of PHASES
    launcher: bool  # submitit's USR2 handler is installed (a task of hydra-submitit-launcher)
    job: str | None = None  # "<array>_<task>" or "<job>" as scontrol takes it; None outside Slurm
    restarts: int = 0  # SLURM_RESTART_COUNT: logged only (fact 9)


@dataclass(frozen=True)
class Decision:
    when: str  # "now": leave at once | "after_write": finish the step/write in flight | "after_record"
    save: bool  # write a checkpoint of the step just finished before leaving
    requeue: str  # "submitit" (its USR2 handler) | "if_running" (scontrol requeue Incomplete) | "none"
    exit_code: int | None  # None: return the finished record normally


def decide(facts: Facts) -> Decision:
    """The rule of the module docstring, as a pure function (tests/test_interrupt_decision.py)."""
    if facts.phase not in PHASES:
        raise ValueError(f"unknown phase {facts.phase!r}")
    code = 128 + facts.signum
    if facts.phase == RECORD:  # the last step is done: the record is the run's result, nothing to requeue
        return Decision("after_record", save=False, requeue="none", exit_code=None if facts.launcher else code)
    when, save = ("now", False) if facts.phase == STARTUP else ("after_write", True)
    if not facts.launcher:
        requeue = "none"
    elif facts.signum == signal.SIGUSR2:
        requeue = "submitit"
    elif facts.signum == signal.SIGTERM and facts.job:
        requeue = "if_running"
    else:
        requeue = "none"
    return Decision(when, save=save, requeue=requeue, exit_code=code)


def slurm_job(environ=None) -> tuple[str | None, int]:
    """This task's id as scontrol takes it (fact 8) and its restart count (fact 9), from the environment."""
    env = os.environ if environ is None else environ
    job = env.get("SLURM_JOB_ID") or None
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        job = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    try:
        restarts = int(env.get("SLURM_RESTART_COUNT") or 0)
    except ValueError:
        restarts = 0
    return job, restarts


def requeue_if_running(job: str, runner=subprocess.run) -> bool:
    """``scontrol requeue Incomplete <job>`` (fact 6): True once slurmctld has handled it (requeued if the job was
    still running, untouched otherwise); False if the request itself failed."""
    cmd = ["scontrol", "requeue", "Incomplete", job]
    try:
        res = runner(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("%s failed: %s", " ".join(cmd), exc)
        return False
    if res.returncode:
        log.warning("%s failed (exit %d): %s", " ".join(cmd), res.returncode, (res.stderr or "").strip())
        return False
    log.info("%s: requeued if Slurm still had it running, else left as Slurm set it", " ".join(cmd))
    return True


def wait_for_slurm(seconds: float = WAIT_S, sleep=time.sleep) -> None:
    """Stay alive while Slurm ends the job itself (a preemption's requeue at the end of its grace time)."""
    log.warning("staying alive up to %d s for Slurm to end or requeue this job itself", seconds)
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sleep(min(left, 5.0))
