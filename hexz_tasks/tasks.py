"""The Celery tasks: thin wrappers around plain functions.

- ``selfplay(budget_s, max_games)`` (queue ``selfplay``): one slice of the pool process's
  self-play (hexz_tasks.selfplay_worker.run_slice): the process's games outlive the
  task, and each finished game is stored at once under its own id.
- ``train()`` (queue ``gpu``, every ``training_check_interval_s`` from beat): one training
  tick (hexz_tasks.training_tick).
- The self-play feeder (hexz_tasks.feeder) runs inside beat, see hexz_tasks.celery.

Heavy imports (torch, the engine) happen inside the functions: the worker's parent
process must not load them before it forks its pool (each pool process imports them as it
starts, hexz_tasks.celery.import_task_modules).
"""

from __future__ import annotations

import inspect
import logging
import typing
from typing import Any

import redis
from celery import Task
from celery.exceptions import Reject, SoftTimeLimitExceeded

from hexz_tasks.celery import SELFPLAY_TASK, TRAIN_TASK, app, redis_client
from hexz_tasks.celery import keys as app_keys
from hexz_tasks.celery import settings as app_settings
from hexz_tasks.settings import SOFT_LIMIT_FRACTION
from hexz_tasks.training_tick import run_training_tick
from hexz_tasks.worker_registry import running_task

log = logging.getLogger(__name__)

MAX_SEED = 2**63


class HexzTask(Task):
    """Strict arguments and a cap on deliveries.

    A message whose arguments do not fit the task's signature is rejected (logged, not
    requeued, nothing runs). Each delivery is counted in Keys.task_attempts; past
    ``task_max_deliveries`` (a task that keeps killing its worker) it is dropped. A task
    that ends here (returns or raises, and so is acknowledged) deletes its counter: only
    the counters of killed deliveries wait for their expiry, which the long visibility
    timeout makes days.
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
            accepted = (int, float) if expected is float else expected  # JSON: 60 is a float
            if (isinstance(value, bool) and expected is not bool) or not isinstance(
                value, accepted
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
            try:
                return self.run(*args, **kwargs)
            finally:
                try:
                    r.delete(key)
                except redis.RedisError:  # Redis away: the counter expires by itself
                    pass
        return self.run(*args, **kwargs)


def _reject(task: Task, why: str) -> None:
    log.error("rejecting task %s[%s]: %s", task.name, task.request.id, why)
    raise Reject(why, requeue=False)


@app.task(bind=True, base=HexzTask, name=SELFPLAY_TASK, ignore_result=True)
def selfplay(self: Task, budget_s: float, max_games: int) -> dict[str, Any]:
    """One slice of this process's self-play: `budget_s` seconds, at most this worker's
    HEXZ_SELFPLAY_SLICE_S (which its time limits were checked against; the feeder may run
    with another), or until it stored `max_games` games (0: no such bound)."""
    if not budget_s > 0 or max_games < 0:
        _reject(self, f"budget_s must be > 0 and max_games >= 0, got {budget_s} and {max_games}")
    from hexz_tasks.selfplay_worker import run_slice

    budget = min(float(budget_s), app_settings.selfplay_slice_s)
    r = redis_client()
    with running_task(r, app_keys, self.request.id):
        return run_slice(app_settings, r, app_keys, budget, max_games)


@app.task(
    bind=True,
    base=HexzTask,
    name=TRAIN_TASK,
    time_limit=app_settings.training_time_limit_s,
    soft_time_limit=SOFT_LIMIT_FRACTION * app_settings.training_time_limit_s,
    # Acknowledged on receipt: beat sends the next tick anyway, and a late-acknowledged
    # task is cancelled when the broker connection drops
    # (worker_cancel_long_running_tasks_on_connection_loss): a Redis restart would kill
    # an hour of training.
    acks_late=False,
    reject_on_worker_lost=False,
)
def train(self: Task) -> dict[str, Any]:
    """One training tick, under the training's own time limit (HEXZ_TRAINING_TIME_LIMIT_S)."""
    return run_training_tick(
        app_settings, redis_client(), app_keys, time_limit_errors=(SoftTimeLimitExceeded,)
    )
