"""HEXZ_KEY_PREFIX reaches Celery's queues: two pipelines on one Redis, each with a
self-play worker started the usual way (`-Q selfplay`), never run each other's tasks;
`hexz status`, Flower's queue lengths and a control ping see only their own pipeline."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from conftest import Proc, Procs, RedisServer, tiny_env, wait_for
from flower.utils.broker import Broker

from hexz_tasks.celery import make_app
from hexz_tasks.keys import Keys
from hexz_tasks.queues import EVAL_QUEUE, GPU_QUEUE, SELFPLAY_QUEUE, SELFPLAY_TASK
from hexz_tasks.repository import ModelRepository
from hexz_tasks.settings import Settings
from hexz_tasks.status import gather_status
from hexz_tasks.training_tick import restore_trainer_state

pytestmark = pytest.mark.slow

PREFIXES = ("hexztest-a", "hexztest-b")
SLICES = {"hexztest-a": 3, "hexztest-b": 2}


def pipeline(redis_server: RedisServer, tmp_path: Path, prefix: str) -> tuple[dict, Settings]:
    env = tiny_env(redis_server.url, tmp_path / prefix, key_prefix=prefix, selfplay_slice_s=2)
    settings = Settings.from_env({k: v for k, v in env.items() if k.startswith("HEXZ_")})
    repo = ModelRepository(settings.repo_base_dir, settings.model_name)
    restore_trainer_state(settings, redis_server.client(), Keys(prefix), repo)
    return env, settings


def tasks(worker: Proc, what: str) -> set[str]:
    """Ids of the self-play tasks the worker logged as `what` (received, succeeded)."""
    return set(re.findall(rf"selfplay\[([\w-]+)\] {what}", worker.log()))


def flower_queue_lengths(settings: Settings) -> dict[str, int]:
    """What Flower's queue views read: its broker module with the app's options."""
    app = make_app(settings)
    broker = Broker(
        app.conf.broker_url,
        broker_options=app.conf.broker_transport_options,
        broker_use_ssl=app.conf.broker_use_ssl,
    )
    names = [SELFPLAY_QUEUE, GPU_QUEUE, EVAL_QUEUE]
    lengths = asyncio.run(broker.queues(names))
    app.close()
    return {q["name"]: q["messages"] for q in lengths}


def test_two_prefixes_on_one_redis_run_only_their_own_tasks(
    redis_server: RedisServer, tmp_path: Path, procs: Procs
) -> None:
    r = redis_server.client()
    pipelines = {p: pipeline(redis_server, tmp_path, p) for p in PREFIXES}
    apps = {p: make_app(settings) for p, (_, settings) in pipelines.items()}
    # Queued before any worker runs: each pipeline's status and Flower count its own.
    for p, app in apps.items():
        for i in range(SLICES[p]):
            app.send_task(SELFPLAY_TASK, args=[2, 0], task_id=f"{p}-{i}")
    for p, (_, settings) in pipelines.items():
        assert r.llen(Keys(p).queue(SELFPLAY_QUEUE)) == SLICES[p]
        assert gather_status(settings, r, inspect_timeout=0)["queues"] == {
            SELFPLAY_QUEUE: SLICES[p],
            GPU_QUEUE: 0,
            EVAL_QUEUE: 0,
        }
        assert flower_queue_lengths(settings) == {
            SELFPLAY_QUEUE: SLICES[p],
            GPU_QUEUE: 0,
            EVAL_QUEUE: 0,
        }
    assert not r.exists(SELFPLAY_QUEUE)  # nothing in the old, shared place

    # Both workers are started with the same `-Q selfplay`.
    workers = {p: procs.worker(f"sp-{p}", SELFPLAY_QUEUE, env) for p, (env, _) in pipelines.items()}

    def drained(p: str) -> bool:
        keys = Keys(p)
        return (
            tasks(workers[p], "succeeded") == {f"{p}-{i}" for i in range(SLICES[p])}
            and r.llen(keys.queue(SELFPLAY_QUEUE)) == 0
            and r.hlen(keys.unacked) == 0
        )

    for p in PREFIXES:
        wait_for(lambda p=p: drained(p), 120, f"the slices of {p}")
    for p in PREFIXES:  # each worker ran exactly its own pipeline's tasks
        own = {f"{p}-{i}" for i in range(SLICES[p])}
        assert tasks(workers[p], "received") == tasks(workers[p], "succeeded") == own
        assert all(other not in workers[p].log() for other in PREFIXES if other != p)
        # Its games went to its own store (the test settings store games of any length).
        assert r.xlen(Keys(p).examples_stream) > 0

    # Broadcasts stay inside a pipeline too: a ping reaches only its own worker.
    for p, app in apps.items():
        replies = app.control.ping(timeout=2.0)
        assert {name.split("@")[0] for reply in replies for name in reply} == {f"sp-{p}"}
        app.close()


def test_the_default_prefix_keeps_celery_keys_apart_from_the_projects() -> None:
    keys = Keys()
    assert keys.queue(SELFPLAY_QUEUE) == "hexz:celery:selfplay"
    assert keys.unacked == "hexz:celery:unacked"
    # No key of the project's own can collide with one of Celery's.
    project_keys = [keys.examples_stream, keys.counters, keys.workers, keys.selfplay_running]
    assert not any(k.startswith(keys.celery_prefix) for k in project_keys)
