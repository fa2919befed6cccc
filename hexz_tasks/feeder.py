"""The self-play feeder: keeps the ``selfplay`` queue just full enough.

Runs in the beat process on every beat tick (hexz_tasks.celery.Scheduler). Each self-play
task is a slice of HEXZ_SELFPLAY_SLICE_S seconds (hexz_tasks.selfplay_worker), so with
P live self-play processes the feeder tops queued + running slices up to 2 P: every
process finds its next slice waiting when one ends, and the queue never grows beyond P
however long the pipeline runs.

Backpressure: it queues nothing while the examples waiting in Redis for the trainer
reach FULL_FRACTION of HEXZ_MAX_PENDING_EXAMPLES, or while the finished games that
self-play processes keep because the store refused them would not fit: a stopped
trainer idles the self-play fleet within a slice instead of making it play games the
store cannot take. Once the trainer drains the store, slices run again and store the
kept games first.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis

from hexz_tasks.keys import Keys
from hexz_tasks.queues import SELFPLAY_QUEUE, SELFPLAY_TASK
from hexz_tasks.rates import prune
from hexz_tasks.settings import SLICE_OVERRUN_S, Settings
from hexz_tasks.store import ExampleStore
from hexz_tasks.worker_registry import live_progress, live_workers

log = logging.getLogger(__name__)

# Share of the store's bound at which the feeder stops queueing slices: the rest is room
# for the games in flight, which finish and are stored meanwhile.
FULL_FRACTION = 0.9


def feed_selfplay_queue(app: Any, r: redis.Redis, keys: Keys, settings: Settings) -> int:
    """Queues the slices the live self-play processes need (see the module docstring);
    `app` is the Celery app to send them with. Returns how many it sent."""
    now = time.time()
    prune(r, keys, now)
    pending = ExampleStore(r, keys).counters()["pending"]
    kept = sum(p["unstored_examples"] for p in live_progress(r, keys, now).values())
    bound = settings.max_pending_examples
    if pending >= FULL_FRACTION * bound or (kept and pending + kept > bound):
        log.info(
            "self-play feeder: %d examples wait for the trainer, %d more in finished games "
            "kept by self-play; queueing nothing",
            pending,
            kept,
        )
        return 0
    processes = sum(
        w["concurrency"]
        for w in live_workers(r, keys, now).values()
        if SELFPLAY_QUEUE in w["queues"]
    )
    running = r.hgetall(keys.selfplay_running)
    # A slice ends by its budget; an entry much older belongs to a process that died.
    longest = settings.selfplay_slice_s + SLICE_OVERRUN_S
    stale = [t for t, v in running.items() if now - json.loads(v)["started"] > longest]
    if stale:
        r.hdel(keys.selfplay_running, *stale)
    missing = 2 * processes - r.llen(keys.queue(SELFPLAY_QUEUE)) - (len(running) - len(stale))
    for _ in range(max(0, missing)):
        app.send_task(SELFPLAY_TASK, args=[settings.selfplay_slice_s, 0])
    return max(0, missing)
