"""Live workers, running self-play tasks and self-play progress, as recorded in Redis.

Each worker refreshes its entry in ``Keys.workers`` (hexz_tasks.celery.WorkerRegistry),
each self-play task has an entry in ``Keys.selfplay_running`` while it runs
(:func:`running_task`), and each self-play process refreshes its progress in
``Keys.selfplay_progress`` (hexz_tasks.selfplay_worker); the feeder and `hexz status`
read them here without a broadcast round trip.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

from hexz_tasks.keys import Keys

# How often a worker refreshes its entry in Keys.workers, and when an entry counts as gone.
WORKER_REFRESH_S = 10.0
WORKER_STALE_S = 35.0
# A self-play progress entry older than this belongs to a process that died or idles.
PROGRESS_STALE_S = 30.0


def live_workers(r: Any, keys: Keys, now: float | None = None) -> dict[str, dict]:
    """Workers that refreshed their Keys.workers entry recently; prunes the stale ones."""
    return _live_entries(r, keys.workers, "seen", WORKER_STALE_S, now)


def _live_entries(
    r: Any, key: str, stamp: str, stale_s: float, now: float | None
) -> dict[str, dict]:
    """The JSON entries of hash `key` whose `stamp` is at most `stale_s` old; deletes the others."""
    now = time.time() if now is None else now
    live, stale = {}, []
    for name, raw in r.hgetall(key).items():
        entry = json.loads(raw)
        if now - entry[stamp] > stale_s:
            stale.append(name)
        else:
            live[name.decode() if isinstance(name, bytes) else name] = entry
    if stale:
        r.hdel(key, *stale)
    return live


@contextlib.contextmanager
def running_task(r: Any, keys: Keys, task_id: str) -> Iterator[None]:
    """Lists a self-play task in Keys.selfplay_running while it runs (the feeder counts it)."""
    entry = {"started": time.time(), "pid": os.getpid(), "host": socket.gethostname()}
    r.hset(keys.selfplay_running, task_id, json.dumps(entry))
    try:
        yield
    finally:
        r.hdel(keys.selfplay_running, task_id)


def live_progress(r: Any, keys: Keys, now: float | None = None) -> dict[str, dict]:
    """Progress entries of self-play processes that wrote one recently; prunes the rest."""
    return _live_entries(r, keys.selfplay_progress, "updated", PROGRESS_STALE_S, now)


def forget_dead_local_tasks(r: Any, keys: Keys) -> list[str]:
    """Drops Keys.selfplay_running entries of processes on this host that no longer exist.

    A worker killed with its tasks leaves them behind; the feeder would count them as
    running until they went stale.
    """
    host = socket.gethostname()
    dead = []
    for task_id, raw in r.hgetall(keys.selfplay_running).items():
        entry = json.loads(raw)
        if entry.get("host") == host and not _pid_alive(entry.get("pid", 0)):
            dead.append(task_id)
    if dead:
        r.hdel(keys.selfplay_running, *dead)
    return [t.decode() for t in dead]


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True
