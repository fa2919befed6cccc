"""The Celery app: ``celery -A hexz_tasks worker -Q selfplay`` / ``-Q gpu`` / ``beat`` / ``flower``.

Broker, result backend and example store all use the one Redis URL from the settings.
Reliability choices (see shared/reference/celery-redis-practices.md):
- JSON only, for messages and results.
- Late acks + reject on worker loss: a task whose process dies is redelivered; the tasks
  are idempotent and count their deliveries so that a task that kills its worker every
  time is dropped after ``task_max_deliveries`` (hexz_tasks.tasks).
- Prefetch 1, and hard time limit < visibility timeout, set in all three places, so a
  running task is never redelivered while it still runs.
- Beat uses :class:`Scheduler`, which also runs the self-play feeder in the beat process.
- Three queues: ``selfplay`` (slices of self-play), ``gpu`` (training ticks), ``eval``
  (the automatic evaluation and arena matches, on a worker of their own so that their
  ticks never wait behind self-play).
- Stopping: a worker told to stop (SIGTERM) raises hexz_tasks.stop_flag, and a running
  self-play slice returns after its current batch, so the warm shutdown acknowledges
  it within seconds.
- Nothing here touches torch or CUDA: the worker's parent process forks its pool. Each
  pool process imports what the tasks run before it takes one (:func:`import_task_modules`).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import socket
import ssl
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

from celery import Celery, bootsteps, signals
from celery.beat import PersistentScheduler

from hexz_tasks import stop_flag
from hexz_tasks.feeder import feed_selfplay_queue
from hexz_tasks.keys import Keys
from hexz_tasks.queues import (
    ARENA_TASK,
    EVAL_QUEUE,
    EVALUATE_TASK,
    FEED_ENTRY,
    GPU_QUEUE,
    SELFPLAY_QUEUE,
    SELFPLAY_TASK,
    TRAIN_TASK,
)
from hexz_tasks.redis_server import WORKER_TIMEOUT_S, connect, redis_url
from hexz_tasks.settings import SOFT_LIMIT_FRACTION, Settings
from hexz_tasks.worker_registry import WORKER_REFRESH_S, forget_dead_local_tasks

log = logging.getLogger(__name__)

# What the tasks import inside their functions; these pull in the rest (torch, the
# engine, the store, the dataset).
TASK_MODULES = (
    "hexz_tasks.selfplay_worker",
    "hexz_tasks.training",
    "hexz_tasks.arena",
    "hexz_tasks.evaluation",
)
# How long a new pool process may take to start, its imports included (Celery's default,
# 4 s, is less than a cold `import torch` on a slow disk: the process would be killed and
# restarted in a loop).
POOL_PROCESS_START_S = 120


def celery_config(settings: Settings) -> dict[str, Any]:
    """Every Celery setting of the project, derived from `settings`."""
    url = redis_url(settings)
    hard = settings.task_time_limit_s
    # Every key of Celery's under this pipeline's prefix: two pipelines on one Redis
    # never see each other's queues, messages or results (hexz_tasks.keys).
    prefixed = {"global_keyprefix": Keys(settings.key_prefix).celery_prefix}
    visibility = {"visibility_timeout": settings.visibility_timeout_s}
    tick = settings.training_check_interval_s
    conf: dict[str, Any] = {
        "broker_url": url,
        "result_backend": url,
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_routes": {
            SELFPLAY_TASK: {"queue": SELFPLAY_QUEUE},
            TRAIN_TASK: {"queue": GPU_QUEUE},
            ARENA_TASK: {"queue": EVAL_QUEUE},
            EVALUATE_TASK: {"queue": EVAL_QUEUE},
        },
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_proc_alive_timeout": POOL_PROCESS_START_S,
        "task_time_limit": hard,
        "task_soft_time_limit": SOFT_LIMIT_FRACTION * hard,
        # The visibility timeout, in the three places the Redis transport reads it.
        "broker_transport_options": {
            **visibility,
            **prefixed,
            # Sweep for messages of vanished workers every 1/20 of the timeout (kombu's
            # default is every 100 s), so they come back soon after it.
            "unacked_restore_interval": max(1, int(settings.visibility_timeout_s / 20)),
            "unacked_restore_throttle": 1,
            # A Redis that is down or hung costs seconds, not a hung worker (redis_server).
            "socket_timeout": WORKER_TIMEOUT_S,
            "socket_connect_timeout": 5,
            "socket_keepalive": True,
        },
        "redis_socket_timeout": WORKER_TIMEOUT_S,
        "redis_socket_connect_timeout": 5,
        "redis_socket_keepalive": True,
        "result_backend_transport_options": {**visibility, **prefixed},
        "visibility_timeout": settings.visibility_timeout_s,
        "result_expires": 24 * 3600,
        "result_backend_always_retry": True,
        "result_backend_max_retries": 20,
        # On a lost broker connection the late-acknowledged tasks (self-play slices,
        # matches) are cancelled, as their messages come back to run again; the training
        # and evaluation ticks are acknowledged on receipt and run on (hexz_tasks.tasks).
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        # Flower shows tasks only when workers send events.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "beat_scheduler": "hexz_tasks.celery:Scheduler",
        "beat_schedule_filename": str(settings.data_dir / "celerybeat-schedule"),
        "beat_schedule": {
            "train": {
                "task": TRAIN_TASK,
                "schedule": tick,
                # A tick nobody picked up in time is stale: drop it rather than pile up.
                "options": {"queue": GPU_QUEUE, "expires": tick},
            },
            "feed-selfplay": {"task": FEED_ENTRY, "schedule": tick},
            # Rates new checkpoints against earlier ones and the pure-MCTS baseline. A tick
            # waiting while the evaluation worker still plays the last one is dropped.
            "evaluate-checkpoints": {
                "task": EVALUATE_TASK,
                "schedule": settings.arena_interval_s,
                "options": {"queue": EVAL_QUEUE, "expires": settings.arena_interval_s},
            },
        },
    }
    if urlsplit(url).scheme == "rediss" and "ssl_cert_reqs" not in parse_qs(urlsplit(url).query):
        # TLS without explicit options: verify the server certificate (the safe choice);
        # add ?ssl_cert_reqs=...&ssl_ca_certs=... to the URL to change it.
        conf["broker_use_ssl"] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
        conf["redis_backend_use_ssl"] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    return conf


def make_app(settings: Settings) -> Celery:
    app = Celery("hexz_tasks", include=["hexz_tasks.tasks", "hexz_tasks.arena_tasks"])
    app.conf.update(celery_config(settings))
    app.steps["worker"].add(WorkerRegistry)
    return app


@signals.worker_process_init.connect(weak=False)
def import_task_modules(**_: Any) -> None:
    """Imports the tasks' modules in each pool process as it starts, outside any task.

    Imported by the first task instead, a slow `import torch` (seconds on a cold disk) can
    be cut by the task's soft time limit, which leaves torch half-initialised in
    sys.modules: every later task of that process fails.
    """
    for name in TASK_MODULES:
        importlib.import_module(name)


# The worker's main process raises the stop flag when its shutdown starts (pool children
# that get SIGTERM during a slice raise their own, see hexz_tasks.stop_flag).
signals.worker_shutting_down.connect(stop_flag.request_stop, weak=False)


class WorkerRegistry(bootsteps.StartStopStep):
    """Keeps this worker's queues and pool size in Keys.workers while it is alive.

    The self-play feeder sizes the queue from it; `hexz status` lists it without a
    broadcast round trip.
    """

    requires = ("celery.worker.components:Timer",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.tref: Any = None

    def start(self, worker: Any) -> None:
        self.refresh(worker)
        try:
            forget_dead_local_tasks(redis_client(), keys)
        except Exception as e:  # Redis not up yet: the feeder prunes them later anyway
            log.warning("could not prune the running-task registry: %s", e)
        self.tref = worker.timer.call_repeatedly(WORKER_REFRESH_S, self.refresh, (worker,))

    def stop(self, worker: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
        try:
            redis_client().hdel(keys.workers, worker.hostname)
        except Exception:  # shutting down; the entry goes stale anyway
            pass

    def refresh(self, worker: Any) -> None:
        entry = {
            "queues": sorted(worker.app.amqp.queues.consume_from),
            "concurrency": worker.concurrency,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "seen": time.time(),
        }
        try:
            redis_client().hset(keys.workers, worker.hostname, json.dumps(entry))
        except Exception as e:  # Redis may be restarting; next refresh retries
            log.warning("could not refresh the worker registry: %s", e)


class Scheduler(PersistentScheduler):
    """Beat's scheduler: the persistent default, plus the self-play feeder run in place,
    and no training tick sent while a training runs (it may run for hours: its ticks
    would only pile up in the gpu queue and expire there)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(*args, **kwargs)

    def apply_async(self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any):
        if entry.task == TRAIN_TASK and _training_runs():
            if advance:
                self.reserve(entry)
            return None
        if entry.task != FEED_ENTRY:
            return super().apply_async(entry, producer=producer, advance=advance, **kwargs)
        if advance:
            entry = self.reserve(entry)
        try:
            sent = feed_selfplay_queue(self.app, redis_client(), keys, settings)
        except Exception as e:  # e.g. Redis restarting: the next tick retries
            log.warning("self-play feeder: %s", e)
            return None
        if sent:
            log.info("self-play feeder: queued %d task(s)", sent)
        return None


def _training_runs() -> bool:
    """Whether a trainer holds Keys.training_active (False if Redis does not answer)."""
    try:
        return bool(redis_client().exists(keys.training_active))
    except Exception:  # e.g. Redis restarting: send the tick, the worker sorts it out
        return False


def _flower_defaults(settings: Settings) -> None:
    """`celery -A hexz_tasks flower` binds 127.0.0.1 and uses HEXZ_FLOWER_BASIC_AUTH.

    Flower reads FLOWER_* variables after the app is imported; explicit flags and
    FLOWER_* variables set by the user still win.
    """
    os.environ.setdefault("FLOWER_ADDRESS", "127.0.0.1")
    if settings.flower_basic_auth:
        os.environ.setdefault("FLOWER_BASIC_AUTH", settings.flower_basic_auth)


_redis: tuple[int, Any] | None = None


def redis_client() -> Any:
    """This process's Redis client (made after a fork, never shared across one)."""
    global _redis
    if _redis is None or _redis[0] != os.getpid():
        _redis = (os.getpid(), connect(settings))
    return _redis[1]


settings = Settings.from_env()
keys = Keys(settings.key_prefix)
app = make_app(settings)
_flower_defaults(settings)
