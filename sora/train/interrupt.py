"""Signals at every phase of a run: none loses a run, whoever (Slurm, submitit, a rerun) brings it back.

A run takes USR2 and SIGTERM itself from the start of ``train()`` (``interruptible``) to its end:

- startup (config, lock, data, model, resume): nothing is saved yet beyond the previous attempt's checkpoint, so
  the run leaves at once, from the handler (``SystemExit`` unwinds it: lock released, tracker closed; every file
  written here is written atomically); the next attempt starts over from that checkpoint or from step 0;
- the training loop (``with Interrupts()``: steps, evaluations, checkpoint writes): the signal is only noted; the
  loop finishes the optimizer step, evaluation or checkpoint write in flight, writes its checkpoint atomically
  (``_Training._maybe_checkpoint``) and calls ``hand_over()``;
- after the last step (evaluation, adapter, record): noted; the run writes its record first.

What happens then - submitit's requeue, a requeue only if Slurm still runs the job, or a plain exit - is
``sora.train.requeue.decide``, from facts that cannot change under the run (its docstring cites the Slurm and
submitit sources). The requeued or rerun attempt resumes from the checkpoint bit for bit.
"""

from __future__ import annotations

import functools
import logging
import signal
import subprocess
import sys
import threading

from sora.train.requeue import RECORD, STARTUP, STEP, Facts, decide, requeue_if_running, slurm_job, wait_for_slurm

log = logging.getLogger("sora")
SIGNALS = (signal.SIGUSR2, signal.SIGTERM)


class _Scope:
    """One run: the handlers it replaced (the launcher's) and the signal it noted."""

    def __init__(self):
        self.previous: dict[int, object] = {}
        self.signum: int | None = None
        self.phase = STARTUP  # STARTUP: a signal leaves at once; any other phase: it is only noted
        self.leaving = False

    def install(self) -> None:
        for sig in SIGNALS:
            self.previous[sig] = signal.signal(sig, self.note)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def note(self, signum, frame) -> None:
        if self.signum is None or signum == signal.SIGTERM:  # a SIGTERM makes any requeue conditional
            self.signum = signum
        if self.phase == STARTUP and not self.leaving:  # before the loop: nothing to finish, leave now
            self.leaving = True
            log.info("interrupted by %s before the first step: nothing to save", signal.Signals(signum).name)
            _leave(self.signum, STARTUP, self.previous)


_active: _Scope | None = None  # the scope of the train() call running in this process


def interruptible(fn):
    """Decorates ``train``: the run owns USR2/SIGTERM from its first line to its last (module docstring)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        global _active
        if _active is not None or threading.current_thread() is not threading.main_thread():
            return fn(*args, **kwargs)  # handlers can only be set in the main thread
        scope = _Scope()
        scope.install()
        _active = scope
        try:
            result = fn(*args, **kwargs)
            scope.phase = RECORD  # returned: the record is written (or the run was skipped)
        finally:
            scope.leaving = True  # from here on a signal is only noted
            _active = None
            scope.restore()
        if scope.signum is not None:  # noted after the last step
            _leave(scope.signum, RECORD, scope.previous)
        return result

    return run


class Interrupts:
    """The training loop's part: inside ``interruptible`` it joins the run's scope and turns signals into a note the
    loop acts on after the step or write in flight; on its own (``_run`` called directly) it installs noting
    handlers for its duration."""

    def __init__(self):
        self._scope: _Scope | None = None
        self._own = False

    def __enter__(self):
        if _active is not None:
            self._scope = _active
        else:
            self._scope = _Scope()
            if threading.current_thread() is threading.main_thread():
                self._scope.install()
                self._own = True
        self._scope.phase = STEP
        return self

    def __exit__(self, exc_type=None, *exc):
        scope = self._scope
        scope.phase = RECORD
        if self._own:
            scope.restore()
            self._own = False
            if scope.signum is not None and exc_type is None:
                log.info("%s after the last step: finishing the run instead", signal.Signals(scope.signum).name)

    @property
    def signum(self) -> int | None:
        return None if self._scope is None else self._scope.signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def hand_over(self) -> None:
        """After the checkpoint: requeue where ``decide`` says so, and exit (``SystemExit`` unwinds the run)."""
        scope = self._scope
        scope.leaving = True
        if self._own:
            scope.restore()
            self._own = False
        _leave(scope.signum, STEP, scope.previous)


def _leave(signum: int, phase: str, previous: dict) -> None:
    """Act on ``decide``: hand over to submitit, requeue if still running, or only exit; returns only for a run
    that finished (its record is its result)."""
    job, restarts = slurm_job()
    facts = Facts(signum, phase, launcher=_is_submitit(previous.get(signal.SIGUSR2)), job=job, restarts=restarts)
    decision = decide(facts)
    name = signal.Signals(signum).name
    log.info("%s (%s; %s; slurm job %s, restarts %d): %s, exit %s", name, phase,
             "submitit" if facts.launcher else "no launcher", job or "-", restarts,
             {"submitit": "submitit's requeue", "if_running": "requeue if Slurm still runs it",
              "none": "no requeue"}[decision.requeue], decision.exit_code)
    if decision.exit_code is None:
        log.info("%s after the last step: the record is written, the run returns it", name)
        return
    if decision.requeue == "submitit":
        log.info("%s: handing over to submitit's handler (requeue)", name)
        try:
            previous[signal.SIGUSR2](signum, None)
        except subprocess.CalledProcessError as exc:
            log.info("%s: requeue refused (%s)", name, exc)
    elif decision.requeue == "if_running":
        if not requeue_if_running(job):
            wait_for_slurm()
    log.info("%s: exiting (%d)", name, decision.exit_code)
    sys.exit(decision.exit_code)


def _is_submitit(handler) -> bool:
    """submitit's ``SignalHandler.checkpoint_and_try_requeue`` (the job's USR2 handler under the launcher)."""
    owner = getattr(handler, "__self__", None)
    return owner is not None and type(owner).__module__.startswith("submitit")
