"""Signalled interruptions lose at most the step in flight, and a signalled Slurm job comes back.

On a cluster a run is stopped by a signal: submitit asks Slurm for ``--signal=USR2@<delay>`` before the time
limit and, on USR2, calls the launcher's ``checkpoint()``, runs ``scontrol requeue`` and exits at once (mid-step);
preemption sends SIGTERM, which submitit deliberately bypasses. Here both only set a flag: the loop finishes the
optimizer step it is in, writes its checkpoint atomically, and then hands over:

- USR2: to submitit's handler (requeue, exit).
- SIGTERM while Slurm still says the job is RUNNING (a preemption's grace period, ``scancel --signal=TERM``):
  also to submitit's USR2 handler, else the job would end FAILED and never come back. Any other state means Slurm
  is ending the job itself - ``scancel`` (CANCELLED: must stay cancelled), ``scontrol requeue`` or a node set
  DOWN (already requeued), the time limit - so the run just exits; a requeue then would undo a user's scancel.
- No launcher handler (a plain process): exit with 128 + the signal number.

The requeued run resumes from that checkpoint bit for bit.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading

log = logging.getLogger("sora")
SIGNALS = (signal.SIGUSR2, signal.SIGTERM)


class Interrupts:
    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._note)
        return self

    def __exit__(self, exc_type=None, *exc):
        if self.signum is not None and exc_type is None and self._previous:  # after the last step: nothing to save
            log.info("%s after the last step: finishing the run instead", signal.Signals(self.signum).name)
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _note(self, signum, frame) -> None:
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def hand_over(self) -> None:
        """After the checkpoint: requeue through the launcher where that is right (module docstring), then exit."""
        signum, previous = self.signum, dict(self._previous)
        name = signal.Signals(signum).name
        self._restore()
        handler = previous.get(signum) if callable(previous.get(signum)) else None
        if _is_submitit(previous.get(signal.SIGUSR2)):
            handler = previous[signal.SIGUSR2]
            if signum == signal.SIGTERM:
                state = slurm_job_state()
                if state == "RUNNING":
                    log.info("SIGTERM while the job still runs (preemption notice or scancel --signal=TERM)")
                else:
                    log.info("SIGTERM: Slurm is ending this job itself (state %s): no requeue from here", state)
                    handler = None
        if handler is not None:
            log.info("%s: checkpoint written, handing over to the launcher's handler", name)
            try:
                handler(signum, None)
            except subprocess.CalledProcessError as exc:  # the job ended between our look and the requeue
                log.info("%s: requeue refused (%s)", name, exc)
        log.info("%s: checkpoint written, exiting", name)
        sys.exit(128 + signum)


def _is_submitit(handler) -> bool:
    """submitit's ``SignalHandler.checkpoint_and_try_requeue`` (the job's USR2 handler under the launcher)."""
    owner = getattr(handler, "__self__", None)
    return owner is not None and type(owner).__module__.startswith("submitit")


def slurm_job_state() -> str | None:
    """This job's JobState as slurmctld has it now (RUNNING, COMPLETING, PENDING...); None outside Slurm."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    try:
        out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True,
                             timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    fields = dict(kv.split("=", 1) for kv in out.split() if "=" in kv)
    return fields.get("JobState")
