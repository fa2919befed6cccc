"""Celery tasks of the arena, on the ``eval`` queue (a worker of their own).

- ``match(a, b, games, runs, seed)``: one arena match (hexz_tasks.arena.run_match); its
  games are stored under the task id, so a redelivered task overwrites rather than
  duplicates them.
- ``evaluate()``: one tick of the automatic checkpoint evaluation
  (hexz_tasks.evaluation.run_evaluation_tick), scheduled by beat every
  ``arena_interval_s``; bounded to one match per tick.

Torch and the engine are imported inside the tasks: the worker's parent process forks
its pool and must not load them first (each pool process imports them as it starts,
hexz_tasks.celery.import_task_modules).
"""

from __future__ import annotations

from typing import Any

from celery import Task

from hexz_tasks.celery import app, redis_client
from hexz_tasks.celery import keys as app_keys
from hexz_tasks.celery import settings as app_settings
from hexz_tasks.errors import ModelError
from hexz_tasks.queues import ARENA_TASK, EVALUATE_TASK
from hexz_tasks.tasks import MAX_SEED, HexzTask, _reject


def _threads() -> None:
    """One torch thread per pool process unless configured: the pool already uses every core."""
    import torch

    torch.set_num_threads(app_settings.inference_threads or 1)


@app.task(bind=True, base=HexzTask, name=ARENA_TASK)
def match(self: Task, a: str, b: str, games: int, runs: int, seed: int) -> dict[str, Any]:
    if games < 2 or games % 2 or runs < 1 or not 0 <= seed < MAX_SEED:
        _reject(self, f"bad match arguments: games={games} runs={runs} seed={seed}")
    from hexz_tasks.arena import run_match

    _threads()
    try:
        return run_match(
            a, b, games, runs, seed, app_settings, redis_client(), app_keys,
            match_id=self.request.id,
        )  # fmt: skip
    except (ValueError, ModelError) as e:  # a bad player or model: retrying cannot help
        _reject(self, str(e))
        raise


# Acknowledged on receipt, like the training tick (hexz_tasks.tasks.train): beat sends the
# next tick, and a broker reconnect does not cancel a match in progress.
@app.task(
    bind=True, base=HexzTask, name=EVALUATE_TASK, acks_late=False, reject_on_worker_lost=False
)
def evaluate(self: Task) -> dict[str, Any]:
    from hexz_tasks.evaluation import run_evaluation_tick

    _threads()
    return run_evaluation_tick(app_settings, redis_client(), app_keys)
