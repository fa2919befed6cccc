"""Self-play in slices (issue 13), with a private redis-server and real worker processes:
game slots that outlive tasks, model swaps mid-task, evaluation beside saturated
self-play, backpressure that keeps every finished game, and clean stops."""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import TEST_PREFIX, Proc, Procs, RedisServer, tiny_env, wait_for

from hexz_tasks import codec
from hexz_tasks.celery import make_app
from hexz_tasks.dataset import Dataset
from hexz_tasks.keys import Keys
from hexz_tasks.model import ModelParams, make_model
from hexz_tasks.queues import SELFPLAY_QUEUE, SELFPLAY_TASK
from hexz_tasks.repository import ModelRepository
from hexz_tasks.settings import Settings
from hexz_tasks.store import ExampleStore
from hexz_tasks.training_tick import restore_trainer_state
from hexz_tasks.worker_registry import live_progress

pytestmark = pytest.mark.slow

KEYS = Keys(TEST_PREFIX)


def setup(
    redis_server: RedisServer, tmp_path: Path, **overrides: Any
) -> tuple[dict[str, str], Settings, redis.Redis]:
    env = tiny_env(redis_server.url, tmp_path / "data", **overrides)
    settings = Settings.from_env({k: v for k, v in env.items() if k.startswith("HEXZ_")})
    r = redis_server.client()
    restore_trainer_state(settings, r, KEYS, repo(settings))
    return env, settings, r


def repo(settings: Settings) -> ModelRepository:
    return ModelRepository(settings.repo_base_dir, settings.model_name)


def start_selfplay_worker(procs: Procs, env: dict[str, str], r: redis.Redis) -> Proc:
    worker = procs.worker("selfplay", SELFPLAY_QUEUE, env)
    wait_for(lambda: any(b"selfplay" in v for v in r.hvals(KEYS.workers)), 60, "the worker")
    return worker


def stored_games(r: redis.Redis) -> dict[str, set[int]]:
    """Game id -> the checkpoints of its examples, for every game in the stream."""
    out = {}
    for _, fields in r.xrange(KEYS.examples_stream):
        cols = codec.from_blob(fields[b"d"])
        assert (cols["has"] & codec.HAS_MODEL_KEY).all(), "an example without its model key"
        out[fields[b"id"].decode()] = {int(c) for c in cols["model_ckpt"]}
    return out


def progress(r: redis.Redis) -> dict[str, Any]:
    """The progress entry of the one self-play process ({} before its first)."""
    entries = list(live_progress(r, KEYS).values())
    assert len(entries) <= 1, entries
    return entries[0] if entries else {}


def no_slices(r: redis.Redis) -> bool:
    """No self-play slice queued or running."""
    return r.llen(KEYS.queue(SELFPLAY_QUEUE)) == 0 and r.hlen(KEYS.selfplay_running) == 0


def slice_succeeded(worker: Proc, task_id: str) -> dict[str, Any] | None:
    """The summary a finished slice returned, from the worker's log."""
    m = re.search(rf"selfplay\[{task_id}\] succeeded in [\d.]+s: (\{{.*\}})", worker.log())
    return None if m is None else ast.literal_eval(m.group(1))


def test_games_started_in_one_slice_are_stored_by_the_next(
    redis_server: RedisServer, tmp_path: Path, procs: Procs
) -> None:
    # Games of a few seconds each: a 2-second slice ends with its two games in flight.
    env, settings, r = setup(
        redis_server, tmp_path, runs_per_move=64, max_moves_per_game=100, games_in_flight=2
    )
    worker = start_selfplay_worker(procs, env, r)
    app = make_app(settings)
    app.send_task(SELFPLAY_TASK, args=[2, 0], task_id="first")
    first = wait_for(lambda: slice_succeeded(worker, "first"), 90, "the first slice")
    after_first = progress(r)
    stored_first = set(stored_games(r))
    in_flight = {
        f"game:{first['process']}:{i}" for i in range(after_first["games_started"])
    } - stored_first
    assert in_flight, "the first slice finished all its games: make them longer"
    assert after_first["batches"] > 0 and after_first["occupancy"] == 1.0

    app.send_task(SELFPLAY_TASK, args=[5, 0], task_id="second")
    second = wait_for(lambda: slice_succeeded(worker, "second"), 90, "the second slice")
    assert second["process"] == first["process"]  # the same driver, kept by the process
    carried_over = in_flight & set(stored_games(r))
    assert carried_over, "no game started in the first slice was stored by the second"
    assert second["stored"] >= len(carried_over)
    # Every batch was full: a finished game's slot started the next game at once.
    assert progress(r)["batch_rows"] == progress(r)["batches"] * 2
    app.close()


def test_a_model_published_mid_slice_is_used_at_once_by_the_games_in_flight(
    redis_server: RedisServer, tmp_path: Path, procs: Procs
) -> None:
    env, settings, r = setup(redis_server, tmp_path, selfplay_slice_s=15)
    worker = start_selfplay_worker(procs, env, r)
    app = make_app(settings)
    app.send_task(SELFPLAY_TASK, args=[15, 0], task_id="only")
    wait_for(lambda: stored_games(r), 90, "a first game, made by checkpoint 0")
    params = ModelParams("conv2d", settings.model_blocks, settings.model_filters)
    repo(settings).save(1, make_model(params), params)
    repo(settings).publish(r, KEYS, 1)

    def mixed() -> bool:
        return any(cps == {0, 1} for cps in stored_games(r).values())

    wait_for(mixed, 60, "a game searched by both checkpoints")
    wait_for(lambda: slice_succeeded(worker, "only"), 60, "the slice to end")
    # All of it was one task: the swap happened between batches, not between tasks.
    assert worker.log().count("selfplay[only] received") == 1  # delivered once
    assert "selfplay[" in worker.log() and worker.log().count("succeeded in") == 1
    assert progress(r)["checkpoint"] == 1
    app.close()


def test_evaluation_runs_beside_saturated_selfplay_and_gating_moves_selfplay_past_0(
    redis_server: RedisServer, tmp_path: Path, procs: Procs
) -> None:
    env, _, r = setup(
        redis_server, tmp_path, promotion_min_score=0.0, arena_games=2, arena_runs_per_move=4,
        arena_interval_s=2, selfplay_slice_s=3, task_time_limit_s=120, training_time_limit_s=120,
        visibility_timeout_s=130,
    )  # fmt: skip
    procs.worker("gpu", "gpu", env)
    procs.worker("eval", "eval", env)
    start_selfplay_worker(procs, env, r)
    procs.celery("beat", ["beat", "-l", "INFO"], env)

    busy = []  # whether a slice ran, sampled while waiting

    def promoted_and_used() -> bool:
        busy.append(r.hlen(KEYS.selfplay_running) > 0)
        return any(max(cps) >= 1 for cps in stored_games(r).values())

    wait_for(promoted_and_used, 240, "examples made by a promoted checkpoint", interval=0.5)
    promoted = json.loads(r.get(KEYS.promoted_model))["checkpoint"]
    assert promoted >= 1
    matches = [json.loads(v) for v in r.hvals(KEYS.arena_matches)]
    assert any(m["a"].endswith(f":{promoted}") for m in matches)
    # Self-play was busy all along (from its first slice on): the evaluation did not wait.
    busy = busy[busy.index(True) :]
    assert len(busy) > 10 and sum(busy) >= 0.9 * len(busy), busy


def test_a_full_store_pauses_selfplay_and_the_feeder_and_loses_no_finished_game(
    redis_server: RedisServer, tmp_path: Path, procs: Procs
) -> None:
    # No trainer: the store fills after a few games of ~60 examples.
    env, _, r = setup(
        redis_server, tmp_path, max_pending_examples=150, selfplay_slice_s=3,
        training_check_interval_s=0.5,
    )  # fmt: skip
    start_selfplay_worker(procs, env, r)
    beat = procs.celery("beat", ["beat", "-l", "INFO"], env)
    wait_for(lambda: progress(r).get("unstored", 0) > 0, 90, "a finished game the store refused")
    full = progress(r)
    assert full["state"] == "store full"
    assert full["games_finished"] == full["games_stored"] + full["unstored"]

    # The feeder queues nothing more; the slices that were queued end by their budget.
    wait_for(lambda: no_slices(r), 30, "the queued slices to end")
    time.sleep(3)  # six beat ticks
    assert no_slices(r)
    # ... and no move was played meanwhile: no CPU burnt on games the store cannot take.
    still = progress(r)
    assert still["batches"] == full["batches"] and still["moves"] == full["moves"]
    assert still["unstored"] == full["unstored"] > 0

    # The trainer comes back and drains the store: self-play stores the games it kept.
    time.sleep(2.2)  # ExampleStore.SETTLE_MS
    ExampleStore(r, KEYS).drain(Dataset(tmp_path / "dataset"))
    wait_for(lambda: progress(r)["games_stored"] > still["games_stored"], 60, "the kept games")
    beat.stop()
    wait_for(lambda: no_slices(r), 60, "the last slices to end")
    last = progress(r)
    counters = ExampleStore(r, KEYS).counters()
    # Every game the process finished was stored, once.
    assert last["games_finished"] == last["games_stored"] + last["unstored"]
    stored = still["games_stored"] + still["unstored"]
    assert last["games_stored"] >= stored and counters["games"] == last["games_stored"]
    ids = [f[b"id"] for _, f in r.xrange(KEYS.examples_stream)]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("whole_group", [False, True], ids=["docker-stop", "ctrl-c"])
def test_sigterm_hands_the_running_slice_back_within_seconds(
    redis_server: RedisServer, tmp_path: Path, procs: Procs, whole_group: bool
) -> None:
    """SIGTERM to the main process (docker compose stop) or to its whole process group
    (honcho, Ctrl-C): the slice ends after its batch and is acknowledged; nothing is
    redelivered later and nothing is logged as lost."""
    env, settings, r = setup(
        redis_server, tmp_path, selfplay_slice_s=60, task_time_limit_s=120,
        training_time_limit_s=120, visibility_timeout_s=130,
    )  # fmt: skip
    worker = start_selfplay_worker(procs, env, r)
    app = make_app(settings)
    app.send_task(SELFPLAY_TASK, args=[60, 0], task_id="long")
    wait_for(lambda: stored_games(r), 90, "the slice to be playing")
    started = time.monotonic()
    if whole_group:
        worker.kill_group(signal.SIGTERM)
    else:
        os.kill(worker.pid, signal.SIGTERM)
    worker.popen.wait(25)  # compose's stop_grace_period for self-play is 30 s
    assert time.monotonic() - started < 25
    summary = slice_succeeded(worker, "long")
    assert summary is not None and summary["stopped"] is True, worker.log()[-3000:]
    # Acknowledged: nothing waits for a redelivery after the visibility timeout.
    assert r.hlen(KEYS.unacked) == 0 and r.llen(KEYS.queue(SELFPLAY_QUEUE)) == 0
    assert "Traceback" not in worker.log() and "WorkerLostError" not in worker.log()
    app.close()


def test_suspend_while_training_pauses_a_slice_in_process(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    from hexz_tasks.selfplay_worker import SelfPlayProcess

    _, settings, r = setup(redis_server, tmp_path, suspend_while_training=True)
    process = SelfPlayProcess(settings)
    r.set(KEYS.training_active, "{}")
    out = process.run_slice(r, KEYS, 1.5)
    assert out["batches"] == 0 and process.state == "paused while training"
    r.delete(KEYS.training_active)
    out = process.run_slice(r, KEYS, 1.5)
    assert out["batches"] > 0 and out["stored"] > 0 and process.state == "playing"


def test_the_first_model_load_waits_past_a_model_it_cannot_load(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A published key whose bytes are gone (retired) or do not load (a bad upload): the
    process waits, as for no model at all, and plays once a loadable one is chosen."""
    from hexz_tasks.selfplay_worker import SelfPlayProcess

    _, settings, r = setup(redis_server, tmp_path)
    good = r.get(KEYS.latest_model)
    assert good is not None
    r.set(KEYS.latest_model, json.dumps({"name": settings.model_name, "checkpoint": 7}))
    process = SelfPlayProcess(settings)
    for bad in (None, b"not a model"):
        if bad is not None:
            r.set(KEYS.model_bytes(settings.model_name, 7), bad)
        out = process.run_slice(r, KEYS, 1.5)
        assert out["checkpoint"] is None and out["batches"] == 0, out
        assert process.state == "waiting for a model"
    r.set(KEYS.latest_model, good)
    out = process.run_slice(r, KEYS, 1.5)
    assert out["checkpoint"] == 0 and out["batches"] > 0, out
