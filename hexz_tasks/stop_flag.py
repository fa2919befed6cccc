"""Asking a running self-play slice to end early, so that a stopping worker hands its task
back (acknowledged) within seconds instead of being killed mid-slice.

A worker is asked to stop in two ways; either makes :func:`stop_requested` true:

- SIGTERM to the worker's main process only (``docker compose stop``, systemd, a test):
  Celery starts its warm shutdown and sends ``worker_shutting_down`` in the main process
  (hexz_tasks.celery connects :func:`request_stop`). The pool children never see that
  signal, so the flag lives in a page of shared memory that the main process maps at
  import, before it forks its pool.
- SIGTERM to a pool child: to the whole process group (honcho, Ctrl-C in ``hexz run``),
  or to the child alone (Celery cancelling its tasks when the broker connection drops,
  a revoke with terminate). By default a child exits at once and the slice's task comes
  back with a WorkerLostError; while a slice runs (:func:`slice_running`), SIGTERM ends
  just that slice instead, after its current batch. The child then lives on: in a
  shutdown the pool ends it once its task returned, otherwise it plays the next slice.
  An idle child still exits at once.

The self-play loop reads :func:`stop_requested` between batches.
"""

from __future__ import annotations

import contextlib
import mmap
import signal
import threading
from collections.abc import Iterator
from typing import Any

_shared = mmap.mmap(-1, 1)  # anonymous MAP_SHARED: one byte shared with forked children
_signalled = False  # this process got SIGTERM during the running slice


def request_stop(**_: Any) -> None:
    """Raises the flag of this process and of every child it forks afterwards or forked
    before (a Celery signal receiver too, hence the keyword arguments)."""
    _shared[0] = 1


def stop_requested() -> bool:
    return _signalled or _shared[0] == 1


@contextlib.contextmanager
def slice_running() -> Iterator[None]:
    """While a self-play slice runs in this process, SIGTERM ends the slice early instead
    of ending the process (the pool's own handler is back afterwards)."""
    global _signalled
    _signalled = False
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _on_sigterm(signum: int, frame: Any) -> None:
    global _signalled
    _signalled = True
