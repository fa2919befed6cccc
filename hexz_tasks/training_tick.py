"""The training tick (beat -> ``gpu`` queue): train checkpoint N+1 once enough new examples
arrived, single-flight under a Redis lock, then record the run and publish the checkpoint.

Every tick first re-establishes what the trainer keeps in Redis and makes the example
store consistent with the trainer's disk (:func:`restore_trainer_state`: a Redis that
came back without its last writes, or empty), and the heartbeat repeats the store's part
while a training runs (which may take hours). Before it trains, the tick estimates the
run against its time limit (hexz_tasks.training_budget) and refuses one that would be
killed.

A plain module: the Celery task (hexz_tasks.tasks.train) only calls
:func:`run_training_tick`.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis

from hexz_tasks import training_budget
from hexz_tasks.keys import Keys
from hexz_tasks.model_source import fetch_latest
from hexz_tasks.settings import Settings

if TYPE_CHECKING:
    from hexz_tasks.dataset import Dataset
    from hexz_tasks.repository import ModelRepository
    from hexz_tasks.store import ExampleStore

log = logging.getLogger(__name__)


class TrainingHeartbeat:
    """Refreshes the training lock and Keys.training_active while training runs, every
    third of `ttl_s`.

    Both expire by themselves if this process dies, so the next tick can train.
    """

    def __init__(
        self,
        lock: Any,
        r: redis.Redis,
        keys: Keys,
        active: str,
        ttl_s: float,
        on_beat: Callable[[], None] | None = None,
    ) -> None:
        """`on_beat` is called on every refresh too (the store's rebase)."""
        self.lock, self.r, self.keys, self.active = lock, r, keys, active
        self.ttl_ms = int(ttl_s * 1000)
        self.on_beat = on_beat
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="training-heartbeat", daemon=True)

    def __enter__(self) -> TrainingHeartbeat:
        self.r.set(self.keys.training_active, self.active, px=self.ttl_ms)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.r.delete(self.keys.training_active)

    def owns(self) -> bool:
        """Whether this trainer still holds the lock (its token is still in Redis)."""
        return not self.lost and bool(self.lock.owned())

    def _run(self) -> None:
        while not self._stop.wait(self.ttl_ms / 3000):
            try:
                self.lock.reacquire()
                self.r.pexpire(self.keys.training_active, self.ttl_ms)
            except redis.exceptions.LockError:
                log.error("lost the training lock: this training will not be published")
                self.lost = True
                return
            except redis.RedisError as e:
                log.warning("training heartbeat: %s", e)
                continue
            if self.on_beat is not None:
                try:
                    self.on_beat()
                except Exception as e:  # never let it stop the refreshes
                    log.warning("training heartbeat: %s", e)


def restore_trainer_state(settings: Settings, r: redis.Redis, keys: Keys, repo: Any) -> int:
    """What the trainer keeps in Redis, re-established on every tick (Redis may have come
    back without it): checkpoint 0 on first start, the newest checkpoint published, and
    the example store consistent with the trainer's disk (:func:`rebase_store`; this also
    sets up the stream that self-play and the gRPC service add to). Returns the newest
    checkpoint."""
    from hexz_tasks.dataset import Dataset
    from hexz_tasks.store import ExampleStore

    latest = repo.ensure_initial_checkpoint(settings)
    if fetch_latest(r, keys) != (settings.model_name, latest):
        repo.publish(r, keys, latest)
    rebase_store(ExampleStore(r, keys), repo, Dataset(repo.examples_store_dir))
    return latest


def rebase_store(store: ExampleStore, repo: ModelRepository, dataset: Dataset) -> None:
    """Makes Redis consistent with the trainer's disk (ExampleStore.rebase): after Redis
    lost writes, no new example gets a stream id at or below what was drained, and the
    training trigger counts from the newest checkpoint's example total."""
    latest = repo.latest_checkpoint()
    total = int(repo.load_stats(latest).get("examples_total", 0))
    watermark = dataset.last_stream_id()
    changed = store.rebase(watermark, total)
    if changed["raised_stream_id"] or changed["rebased_counters"]:
        log.warning(
            "Redis lacks writes the trainer had seen (it came back empty or from an older "
            "AOF, or this is the first tick after an upgrade): %s the example stream, %s; "
            "the trainer's disk holds examples up to stream id %s, checkpoint %d was "
            "trained at %d examples",
            "created" if changed["created_stream"] else "raised the last id of",
            "re-based the counters" if changed["rebased_counters"] else "counters fine",
            watermark,
            latest,
            total,
        )
    elif changed["created_stream"]:
        log.info("set up the example stream of %s", store.keys.prefix)


def _event(r: redis.Redis, keys: Keys, event: str, checkpoint: int) -> None:
    r.publish(keys.events_channel, json.dumps({"event": event, "checkpoint": checkpoint}))


def run_training_tick(
    settings: Settings,
    r: redis.Redis,
    keys: Keys,
    time_limit_errors: tuple[type[BaseException], ...] = (),
) -> dict[str, Any]:
    """One beat tick: train checkpoint N+1 if enough new examples arrived and nobody else is.

    Events: training_started / training_done carry the latest checkpoint at that moment
    (the one training starts from / the one it produced). A training ended by one of
    `time_limit_errors` (Celery's soft time limit) is recorded for the next estimates.
    """
    from hexz_tasks.dataset import Dataset
    from hexz_tasks.repository import ModelRepository
    from hexz_tasks.store import ExampleStore
    from hexz_tasks.training import should_train, train_once

    repo = ModelRepository(settings.repo_base_dir, settings.model_name)
    base = restore_trainer_state(settings, r, keys, repo)
    store = ExampleStore(r, keys)
    dataset = Dataset(repo.examples_store_dir)
    if not should_train(settings, store):
        return {"trained": False, "reason": "below threshold", "checkpoint": base}
    lock = r.lock(
        keys.training_lock,
        timeout=settings.training_lock_ttl_s,
        blocking=False,
        thread_local=False,
    )
    if not lock.acquire(blocking=False):
        return {"trained": False, "reason": "another training is running", "checkpoint": base}
    try:
        if not should_train(settings, store):  # a training finished while we took the lock
            return {"trained": False, "reason": "below threshold", "checkpoint": base}
        base = repo.latest_checkpoint()
        budget = training_budget.check(
            settings, r, keys, dataset.count() + store.counters()["pending"]
        )
        if budget.level == training_budget.REFUSED:
            return {"trained": False, "reason": budget.message, "checkpoint": base}
        started = time.time()
        active = json.dumps(
            {
                "since": started,
                "checkpoint": base,
                "host": socket.gethostname(),
                "estimate_s": budget.estimate_s,
            }
        )
        with TrainingHeartbeat(
            lock,
            r,
            keys,
            active,
            settings.training_lock_ttl_s,
            on_beat=lambda: rebase_store(store, repo, dataset),
        ) as heartbeat:
            _event(r, keys, "training_started", base)
            try:
                stats = train_once(
                    settings,
                    store,
                    repo,
                    dataset=dataset,
                    still_owner=heartbeat.owns,
                    lock_lost=lambda: heartbeat.lost,
                )
                if stats is not None and heartbeat.lost:
                    raise RuntimeError("training lock lost while training; not publishing")
            except BaseException as e:
                if isinstance(e, time_limit_errors):
                    seconds = time.time() - started
                    training_budget.record_timeout(settings, r, keys, budget.samples, seconds, base)
                _event(r, keys, "training_done", base)  # failed: subscribers resume anyway
                raise
            if stats is None:
                # The counters said train, but the drain found too few examples on disk:
                # the newest ones have not settled in Redis (see ExampleStore settle_ms).
                _event(r, keys, "training_done", base)
                reason = "new examples not settled in Redis yet"
                return {"trained": False, "reason": reason, "checkpoint": base}
            new = repo.latest_checkpoint()
            finished = time.time()
            run = {
                **stats,
                "checkpoint": new,
                "started": started,
                "finished": finished,
                "seconds": round(finished - started, 3),
                "host": socket.gethostname(),
            }
            with r.pipeline() as p:
                p.rpush(keys.training_runs, json.dumps(run))
                p.ltrim(keys.training_runs, -1000, -1)
                p.execute()
            # Published after its run is recorded: whoever sees checkpoint N sees its stats.
            repo.publish(r, keys, new)
            _event(r, keys, "training_done", new)
        return {"trained": True, "checkpoint": new}
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:
            pass  # expired: nothing to release
