"""Signalled interruptions lose at most the step in flight.

On a cluster a run is stopped by a signal: submitit asks Slurm for ``--signal=USR2@<delay>`` before the time
limit and, on USR2, calls the launcher's ``checkpoint()``, runs ``scontrol requeue`` and exits at once (mid-step);
preemption sends SIGTERM, which submitit deliberately bypasses. Here both only set a flag: the loop finishes the
optimizer step it is in, writes its checkpoint atomically, and then hands the signal over - to submitit's own
handler (which requeues the job and exits) or, with none, by exiting with 128 + the signal number. The requeued
run resumes from that checkpoint bit for bit.
"""

from __future__ import annotations

import logging
import signal
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

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _note(self, signum, frame) -> None:
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def hand_over(self) -> None:
        """After the checkpoint: the previous handler's turn (submitit requeues and exits), else exit 128 + n."""
        signum, previous = self.signum, self._previous.get(self.signum)
        name = signal.Signals(signum).name
        self.__exit__()
        if callable(previous):
            log.info("%s: handing over to the launcher's handler", name)
            previous(signum, None)
        log.info("%s: checkpoint written, exiting", name)
        sys.exit(128 + signum)
