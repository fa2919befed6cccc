"""The Celery tasks: thin, idempotent wrappers around plain functions.

- ``selfplay(seed)`` (queue ``selfplay``): plays ``games_per_task`` games with the newest
  published model and stores each game as it finishes under the id
  ``"<task id>:<game index>"``, so a redelivered task stores every game once.
- ``train()`` (queue ``gpu``, every ``training_check_interval_s`` from beat): single-flight
  under a Redis lock; skips fast below the threshold, else trains checkpoint N+1 and
  publishes it.
- The self-play feeder (:func:`feed_selfplay_queue`) runs inside beat, see hexz_tasks.celery.

Heavy imports (torch, the engine) happen inside the functions: the worker's parent
process must not load them before it forks its pool.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import secrets
import socket
import threading
import time
import typing
from typing import Any

import redis
from celery import Celery, Task
from celery.exceptions import Reject, SoftTimeLimitExceeded

from hexz_tasks.celery import (
    SELFPLAY_QUEUE,
    SELFPLAY_TASK,
    TRAIN_TASK,
    app,
    live_workers,
    redis_client,
)
from hexz_tasks.celery import keys as app_keys
from hexz_tasks.celery import settings as app_settings
from hexz_tasks.keys import Keys
from hexz_tasks.settings import Settings

log = logging.getLogger(__name__)

MAX_SEED = 2**63
# The training lock lives this long unless its holder refreshes it (every third of it):
# a killed trainer blocks the next training for at most this long.
LOCK_TTL_S = 20.0
# How long per-minute rate counters are kept.
RATE_WINDOW_MIN = 60


# --------------------------------------------------------------------------- models


class _ModelCache:
    """The newest published model, loaded once per worker process."""

    def __init__(self) -> None:
        self.key: tuple[str, int] | None = None
        self.model: Any = None

    def get(
        self, settings: Settings, r: redis.Redis, keys: Keys, wait_s: float
    ) -> tuple[tuple[str, int], Any]:
        """Returns ((name, checkpoint), evaluator), swapping in a newer checkpoint if published.

        With promotion gating (HEXZ_PROMOTION_MIN_SCORE) that is the promoted checkpoint,
        otherwise the newest published one. Waits up to `wait_s` for a first model (the
        gpu worker publishes checkpoint 0 on its first tick).
        """
        from hexz_tasks.evaluation import selfplay_model
        from hexz_tasks.repository import fetch_latest, fetch_model_bytes

        deadline = time.monotonic() + wait_s
        while True:
            if settings.promotion_min_score is not None:
                found = selfplay_model(settings, r, keys)
                key, data = found if found is not None else (None, None)
            else:
                key, data = fetch_latest(r, keys), None
            if key is not None:
                break
            if time.monotonic() > deadline:
                raise TimeoutError("no model published yet (is a gpu worker running?)")
            time.sleep(1.0)
        if key != self.key:
            data = data if data is not None else fetch_model_bytes(r, keys, *key)
            if data is None:
                raise LookupError(f"model {key[0]}:{key[1]} is announced but its bytes are missing")
            import torch

            from hexz_tasks.inference import Evaluator

            if torch.get_num_threads() > 1 and self.key is None:
                # One pool process per core: more torch threads per process only fight.
                torch.set_num_threads(1)
            self.model = Evaluator(data, "cpu")
            self.key = key
            log.info("loaded model %s checkpoint %d", *key)
        return key, self.model


_models = _ModelCache()


# ------------------------------------------------------------------------- selfplay


def wait_while_training(r: redis.Redis, keys: Keys, settings: Settings) -> float:
    """With suspend_while_training, blocks while a training runs; returns seconds paused."""
    if not settings.suspend_while_training:
        return 0.0
    start = time.monotonic()
    while r.exists(keys.training_active):
        time.sleep(0.5)
    return time.monotonic() - start


def record_rate(r: redis.Redis, keys: Keys, examples: int, now: float | None = None) -> None:
    minute = int((time.time() if now is None else now) // 60)
    with r.pipeline(transaction=False) as p:
        p.hincrby(keys.rates, f"{minute}:games", 1)
        p.hincrby(keys.rates, f"{minute}:examples", examples)
        p.execute()


def run_selfplay(
    task_id: str, seed: int, settings: Settings, r: redis.Redis, keys: Keys, *, model_wait_s: float
) -> dict[str, Any]:
    """Plays one batch of games; stores each as it finishes. Idempotent per task id."""
    from hexz_tasks import hexz_pb2
    from hexz_tasks.selfplay import play_games
    from hexz_tasks.store import ExampleStore

    store = ExampleStore(r, keys)
    (name, checkpoint), model = _models.get(settings, r, keys, model_wait_s)
    paused = wait_while_training(r, keys, settings)
    result = {"games": 0, "stored": 0, "examples": 0, "checkpoint": checkpoint, "paused_s": 0.0}
    games = play_games(
        model,
        settings.games_per_task,
        settings,
        seed=seed,
        model_key=hexz_pb2.ModelKey(name=name, checkpoint=checkpoint),
    )
    try:
        for game in games:
            added = store.add_game(f"{task_id}:{game.index}", game.columns)
            result["games"] += 1
            if added:
                result["stored"] += 1
                result["examples"] += added
                record_rate(r, keys, added)
            paused += wait_while_training(r, keys, settings)
    except SoftTimeLimitExceeded:
        log.warning("self-play task %s hit its soft time limit; keeping the games stored", task_id)
    result["paused_s"] = round(paused, 3)
    return result


def feed_selfplay_queue(app: Celery, r: redis.Redis, keys: Keys, settings: Settings) -> int:
    """Keeps one task waiting in the selfplay queue per live self-play worker process.

    With P processes it tops queued + running up to 2 P: every process has its next task
    ready when it finishes one, and the queue never grows beyond P however long the
    pipeline runs. With no live self-play worker nothing is queued. Returns tasks sent.
    """
    now = time.time()
    processes = sum(
        w["concurrency"]
        for w in live_workers(r, keys, now).values()
        if SELFPLAY_QUEUE in w["queues"]
    )
    running = r.hgetall(keys.selfplay_running)
    stale = [
        t for t, v in running.items() if now - json.loads(v)["started"] > settings.task_time_limit_s
    ]
    if stale:
        r.hdel(keys.selfplay_running, *stale)
    missing = 2 * processes - r.llen(SELFPLAY_QUEUE) - (len(running) - len(stale))
    for _ in range(max(0, missing)):
        app.send_task(SELFPLAY_TASK, args=[secrets.randbelow(MAX_SEED)])
    _prune_rates(r, keys, now)
    return max(0, missing)


def _prune_rates(r: redis.Redis, keys: Keys, now: float) -> None:
    oldest = int(now // 60) - RATE_WINDOW_MIN
    old = [f for f in r.hkeys(keys.rates) if int(f.split(b":")[0]) < oldest]
    if old:
        r.hdel(keys.rates, *old)


# ------------------------------------------------------------------------- training


class _Heartbeat:
    """Refreshes the training lock and Keys.training_active while training runs.

    Both expire by themselves if this process dies, so the next tick can train.
    """

    def __init__(self, lock: Any, r: redis.Redis, keys: Keys, active: str) -> None:
        self.lock, self.r, self.keys, self.active = lock, r, keys, active
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="training-heartbeat", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self.r.set(self.keys.training_active, self.active, px=int(LOCK_TTL_S * 1000))
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
        while not self._stop.wait(LOCK_TTL_S / 3):
            try:
                self.lock.reacquire()
                self.r.pexpire(self.keys.training_active, int(LOCK_TTL_S * 1000))
            except redis.exceptions.LockError:
                log.error("lost the training lock: this training will not be published")
                self.lost = True
                return
            except redis.RedisError as e:
                log.warning("training heartbeat: %s", e)


def ensure_model_published(settings: Settings, r: redis.Redis, keys: Keys, repo: Any) -> int:
    """Creates checkpoint 0 on first start and publishes the newest checkpoint if Redis lacks it."""
    latest = repo.ensure_initial_checkpoint(settings)
    raw = r.get(keys.latest_model)
    if raw is None or json.loads(raw) != {"name": settings.model_name, "checkpoint": latest}:
        repo.publish(r, keys, latest)
    return latest


def _event(r: redis.Redis, keys: Keys, event: str, checkpoint: int) -> None:
    r.publish(keys.events_channel, json.dumps({"event": event, "checkpoint": checkpoint}))


def run_training_tick(settings: Settings, r: redis.Redis, keys: Keys) -> dict[str, Any]:
    """One beat tick: train checkpoint N+1 if enough new examples arrived and nobody else is.

    Events: training_started / training_done carry the latest checkpoint at that moment
    (the one training starts from / the one it produced).
    """
    from hexz_tasks.repository import ModelRepository
    from hexz_tasks.store import ExampleStore
    from hexz_tasks.training import should_train, train_once

    repo = ModelRepository(settings.repo_base_dir, settings.model_name)
    base = ensure_model_published(settings, r, keys, repo)
    store = ExampleStore(r, keys)
    if not should_train(settings, store):
        return {"trained": False, "reason": "below threshold", "checkpoint": base}
    lock = r.lock(keys.training_lock, timeout=LOCK_TTL_S, blocking=False, thread_local=False)
    if not lock.acquire(blocking=False):
        return {"trained": False, "reason": "another training is running", "checkpoint": base}
    try:
        if not should_train(settings, store):  # a training finished while we took the lock
            return {"trained": False, "reason": "below threshold", "checkpoint": base}
        base = repo.latest_checkpoint()
        started = time.time()
        active = json.dumps({"since": started, "checkpoint": base, "host": socket.gethostname()})
        with _Heartbeat(lock, r, keys, active) as heartbeat:
            _event(r, keys, "training_started", base)
            try:
                stats = train_once(settings, store, repo, still_owner=heartbeat.owns)
                if stats is not None and heartbeat.lost:
                    raise RuntimeError("training lock lost while training; not publishing")
            except BaseException:
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


# ---------------------------------------------------------------------------- tasks


class HexzTask(Task):
    """Strict arguments and a cap on deliveries.

    A message whose arguments do not fit the task's signature is rejected (logged, not
    requeued, nothing runs). Each delivery is counted in Keys.task_attempts; past
    ``task_max_deliveries`` (a task that keeps killing its worker) it is dropped.
    """

    acks_late = True
    reject_on_worker_lost = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            bound = inspect.signature(self.run).bind(*args, **kwargs)
        except TypeError as e:
            _reject(self, f"bad arguments {args!r} {kwargs!r}: {e}")
        hints = typing.get_type_hints(self.run)
        for name, value in bound.arguments.items():
            expected = hints[name]
            if (isinstance(value, bool) and expected is not bool) or not isinstance(
                value, expected
            ):
                _reject(self, f"argument {name} must be {expected.__name__}, got {value!r}")
        if not self.request.is_eager:
            r = redis_client()
            key = app_keys.task_attempts(self.request.id)
            cap = app_settings.task_max_deliveries
            with r.pipeline() as p:
                p.incr(key)
                p.expire(key, int(app_settings.visibility_timeout_s * (cap + 1)))
                deliveries = p.execute()[0]
            if deliveries > cap:
                _reject(self, f"delivered {deliveries} times, more than the cap of {cap}")
        return self.run(*args, **kwargs)


def _reject(task: Task, why: str) -> None:
    log.error("rejecting task %s[%s]: %s", task.name, task.request.id, why)
    raise Reject(why, requeue=False)


@app.task(bind=True, base=HexzTask, name=SELFPLAY_TASK, ignore_result=True)
def selfplay(self: Task, seed: int) -> dict[str, Any]:
    if not 0 <= seed < MAX_SEED:
        _reject(self, f"seed must be in [0, 2**63), got {seed}")
    r = redis_client()
    task_id = self.request.id
    entry = {"started": time.time(), "pid": os.getpid(), "host": socket.gethostname()}
    r.hset(app_keys.selfplay_running, task_id, json.dumps(entry))
    try:
        return run_selfplay(
            task_id,
            seed,
            app_settings,
            r,
            app_keys,
            model_wait_s=0.5 * app_settings.task_time_limit_s,
        )
    finally:
        r.hdel(app_keys.selfplay_running, task_id)


@app.task(bind=True, base=HexzTask, name=TRAIN_TASK)
def train(self: Task) -> dict[str, Any]:
    return run_training_tick(app_settings, redis_client(), app_keys)
