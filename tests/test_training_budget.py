"""The trainer at the spec's defaults on a CPU: a run's time grows with its window, so the
training task has a time limit of its own (HEXZ_TRAINING_TIME_LIMIT_S, below the
visibility timeout), and the tick refuses a run estimated to pass it, saying so in its
log, `hexz status` and the status page, instead of starting runs the limit kills. Real
Redis, real training, a real Celery worker for the time limit itself."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
import redis
import requests
import torch
from conftest import (
    TEST_PREFIX,
    Procs,
    RedisServer,
    tiny_env,
    wait_for,
    wait_for_examples_to_settle,
)
from synthetic import game_columns

from hexz_tasks.celery import celery_config, make_app
from hexz_tasks.keys import Keys
from hexz_tasks.queues import TRAIN_TASK
from hexz_tasks.repository import ModelRepository
from hexz_tasks.server import start_servers
from hexz_tasks.settings import SOFT_LIMIT_FRACTION, Settings, SettingsError
from hexz_tasks.status import gather_status, print_status
from hexz_tasks.store import ExampleStore
from hexz_tasks.training_budget import OK, REFUSED, TIMED_OUT, WARNING, estimate
from hexz_tasks.training_tick import restore_trainer_state, run_training_tick

KEYS = Keys(TEST_PREFIX)


def settings_for(redis_server: RedisServer, tmp_path: Path, **overrides: object) -> Settings:
    values: dict = {
        "data_dir": tmp_path / "data",
        "redis_url": redis_server.url,
        "key_prefix": TEST_PREFIX,
        "model_blocks": 1,
        "model_filters": 8,
        "batch_size": 64,
        "num_epochs": 1,
        "training_trigger_threshold": 100,
        "training_time_limit_s": 60,
    }
    return Settings.from_env({}, **{**values, **overrides})


def add_games(r: redis.Redis, n: int, seed: int) -> int:
    store = ExampleStore(r, KEYS)
    games = game_columns(n, seed, runs=8, max_moves=60)
    return sum(store.add_game(f"{seed}:{i}", g) for i, g in enumerate(games))


def test_the_training_task_has_its_own_time_limit_below_the_visibility_timeout() -> None:
    from hexz_tasks.tasks import train

    defaults = Settings()
    assert train.time_limit == defaults.training_time_limit_s > defaults.task_time_limit_s
    assert train.soft_time_limit == SOFT_LIMIT_FRACTION * defaults.training_time_limit_s
    # A full window at the spec's defaults on a 2-core CPU (~150 samples/s) fits.
    full_window = defaults.num_epochs * defaults.training_examples_window_size / 150
    assert full_window < SOFT_LIMIT_FRACTION * defaults.training_time_limit_s
    conf = celery_config(defaults)
    assert conf["visibility_timeout"] > train.time_limit > conf["task_time_limit"]
    with pytest.raises(SettingsError, match="HEXZ_TRAINING_TIME_LIMIT_S"):
        Settings.from_env(
            {"HEXZ_TRAINING_TIME_LIMIT_S": "4000", "HEXZ_VISIBILITY_TIMEOUT_S": "3900"}
        )


def test_estimates_at_the_spec_defaults_on_a_cpu_warn_then_refuse() -> None:
    """The window grows: 75,000 examples x 7 epochs at 150 samples/s take about an hour."""
    cpu = {"device": "cpu", "samples_per_s": 150.0, "load_s": 1.0, "finished": 1.0}
    one_hour = Settings(training_time_limit_s=3600, visibility_timeout_s=3900)
    assert estimate(one_hour, 10_000, cpu, None).level == OK  # 468 s of 3,240
    assert estimate(one_hour, 40_000, cpu, None).level == WARNING  # 1,868 s
    refused = estimate(one_hour, 75_000, cpu, None)
    assert refused.level == REFUSED and refused.estimate_s == pytest.approx(3501, abs=1)
    assert "HEXZ_TRAINING_TIME_LIMIT_S" in refused.message
    assert estimate(Settings(), 2**20, cpu, None).level == WARNING  # 13.6 h of 21.6 h
    # A run on another device says nothing about this one.
    assert estimate(one_hour, 75_000, {**cpu, "device": "cuda"}, None).estimate_s is None


def test_a_tick_refuses_a_run_that_would_pass_its_time_limit_and_says_so_everywhere(
    redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    torch.set_num_threads(1)
    r = redis_server.client()
    settings = settings_for(redis_server, tmp_path)
    repo = ModelRepository(settings.repo_base_dir, settings.model_name)
    restore_trainer_state(settings, r, KEYS, repo)
    add_games(r, 3, seed=1)
    wait_for_examples_to_settle()
    assert run_training_tick(settings, r, KEYS) == {"trained": True, "checkpoint": 1}
    speed = json.loads(r.lindex(KEYS.training_runs, -1))["samples_per_s"]

    # Enough epochs that the next run would take about ten times its soft limit.
    add_games(r, 3, seed=2)
    wait_for_examples_to_settle()
    epochs = int(10 * 54 * speed / ExampleStore(r, KEYS).counters()["examples"]) + 1
    slow = settings.replace(num_epochs=epochs)
    events = r.pubsub(ignore_subscribe_messages=True)
    events.subscribe(KEYS.events_channel)
    with caplog.at_level(logging.WARNING, logger="hexz_tasks.training_budget"):
        outcome = run_training_tick(slow, r, KEYS)
        run_training_tick(slow, r, KEYS)  # the same refusal is logged once
    assert outcome["trained"] is False and outcome["checkpoint"] == 1
    assert outcome["reason"].startswith("not training: the next training")
    assert "HEXZ_TRAINING_TIME_LIMIT_S=60" in outcome["reason"]
    assert repo.checkpoints() == [0, 1] and _all(events) == []
    assert not r.exists(KEYS.training_lock)
    assert [m for m in caplog.messages if "not training" in m] == ["training: " + outcome["reason"]]

    status = gather_status(slow, r, inspect_timeout=0)
    assert status["training"]["budget"]["level"] == REFUSED
    assert status["training"]["budget"]["message"] == outcome["reason"]
    printed = _printed_status(slow)
    assert f"WARNING:     {outcome['reason']}" in printed
    servers = start_servers(slow, port=0, grpc_port=None, client=r)
    try:
        page = requests.get(f"http://127.0.0.1:{servers.http_port}/", timeout=30).text
    finally:
        servers.stop()
    assert 'id="training-budget"' in page and "Training refused" in page

    # Fewer epochs again: it fits, the tick trains, and the warning is gone.
    assert run_training_tick(settings, r, KEYS) == {"trained": True, "checkpoint": 2}
    assert gather_status(settings, r, inspect_timeout=0)["training"]["budget"]["level"] == "ok"


def _printed_status(settings: Settings) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert print_status(settings) == 0
    return out.getvalue()


def test_a_training_killed_by_its_soft_time_limit_is_discarded_and_not_started_again(
    redis_server: RedisServer, tmp_path: Path, procs: Procs
) -> None:
    """The soft time limit path of the training task, in a real gpu worker: the run stops,
    nothing is published, the lock and the training flag go, and the next tick refuses
    a run at least as big (instead of starting one the limit kills again)."""
    env = tiny_env(redis_server.url, tmp_path / "data", num_epochs=100_000, training_time_limit_s=5)
    settings = Settings.from_env({k: v for k, v in env.items() if k.startswith("HEXZ_")})
    r = redis_server.client()
    repo = ModelRepository(settings.repo_base_dir, settings.model_name)
    restore_trainer_state(settings, r, KEYS, repo)
    add_games(r, 3, seed=1)
    wait_for_examples_to_settle()
    events = r.pubsub(ignore_subscribe_messages=True)
    events.subscribe(KEYS.events_channel)
    worker = procs.worker("gpu", "gpu", env)
    app = make_app(settings)

    first = app.send_task(TRAIN_TASK)
    first.get(timeout=120, propagate=False)
    assert first.state == "FAILURE" and type(first.result).__name__ == "SoftTimeLimitExceeded"
    # The worker logs the failure after it stored the result: wait for the line.
    wait_for(lambda: "SoftTimeLimitExceeded" in worker.log(), 30, "the worker's log line")
    assert repo.checkpoints() == [0]
    assert [p.name for p in repo.checkpoints_dir.iterdir() if p.name.startswith(".tmp")] == []
    assert not r.exists(KEYS.training_lock) and not r.exists(KEYS.training_active)
    assert [json.loads(m["data"])["event"] for m in _all(events)] == [
        "training_started",
        "training_done",
    ]
    timeout = json.loads(r.get(KEYS.training_timeout))
    # Cut near the soft limit: its timer fires a little late, the hard limit bounds it.
    assert timeout["checkpoint"] == 0 and SOFT_LIMIT_FRACTION * 5 / 2 < timeout["seconds"] < 5
    budget = gather_status(settings, r, inspect_timeout=0)["training"]["budget"]
    assert budget["level"] == TIMED_OUT and "hit its soft time limit" in budget["message"]

    second = app.send_task(TRAIN_TASK).get(timeout=60)
    assert second["trained"] is False and second["reason"].startswith("not training")
    assert repo.checkpoints() == [0] and _all(events) == []
    app.close()


def _all(pubsub: redis.client.PubSub, quiet_s: float = 1.0) -> list[dict]:
    """Every message delivered so far (until none arrived for `quiet_s`)."""
    out = []
    deadline = time.monotonic() + quiet_s
    while time.monotonic() < deadline:
        if (m := pubsub.get_message(timeout=0.1)) is not None:
            out.append(m)
            deadline = time.monotonic() + quiet_s
    return out
