"""Asking a running self-play slice to end early, so that a stopping worker hands its task
back (acknowledged) within seconds instead of being killed mid-slice.

A worker is asked to stop in two ways, and both raise the same flag:

- SIGTERM to the worker's main process only (``docker compose stop``, systemd, a test):
  Celery starts its warm shutdown and sends ``worker_shutting_down`` in the main process
  (hexz_tasks.celery connects :func:`request_stop`). The pool children never see that
  signal, so the flag lives in a page of shared memory that the main process maps at
  import, before it forks its pool.
- SIGTERM to the whole process group (honcho, Ctrl-C in ``hexz run``): the pool children
  get it too. Celery resets their SIGTERM to the default (die at once: the slice's
  task would come back with a WorkerLostError); :func:`install_child_handler` makes a
  child that runs a slice raise its own flag instead (only its own: a child terminated
  alone, e.g. by a revoke, must not stop the others), and exit at the latest
  CHILD_EXIT_S later. An idle child still dies at once.

The self-play loop reads :func:`stop_requested` between batches.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import signal
from collections.abc import Iterator
from typing import Any

# A pool child that got SIGTERM during a slice exits this long after it at the latest:
# the slice ends after its current batch, well within it, and its result goes back
# first. Docker's stop_grace_period must exceed it.
CHILD_EXIT_S = 20

_shared = mmap.mmap(-1, 1)  # anonymous MAP_SHARED: one byte shared with forked children
_slice_running = False
_signalled = False  # this process got SIGTERM during a slice


def request_stop(**_: Any) -> None:
    """Raises the flag of this process and of every child it forks afterwards or forked
    before (a Celery signal receiver too, hence the keyword arguments)."""
    _shared[0] = 1


def stop_requested() -> bool:
    return _signalled or _shared[0] == 1


@contextlib.contextmanager
def slice_running() -> Iterator[None]:
    """Marks a self-play slice as running in this process (SIGTERM then ends it early)."""
    global _slice_running
    _slice_running = True
    try:
        yield
    finally:
        _slice_running = False


def _on_sigterm(signum: int, frame: Any) -> None:
    global _signalled
    if not _slice_running:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    _signalled = True
    signal.alarm(CHILD_EXIT_S)  # SIGALRM's default action ends the process


def install_child_handler(**_: Any) -> None:
    """SIGTERM handling of a pool child (a Celery worker_process_init receiver)."""
    signal.signal(signal.SIGTERM, _on_sigterm)
