"""The Celery pipeline with real parts: a private redis-server, real worker and beat
processes (subprocesses), a tiny model. End to end, and the faults of issue 5, each
asserting exact counts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import (
    REPO_ROOT,
    TEST_PREFIX,
    Procs,
    RedisServer,
    tiny_env,
    wait_for,
    wait_for_examples_to_settle,
)
from synthetic import game_columns, row_keys

from hexz_tasks.celery import make_app
from hexz_tasks.dataset import Dataset
from hexz_tasks.keys import Keys
from hexz_tasks.model_source import fetch_latest
from hexz_tasks.queues import SELFPLAY_QUEUE, SELFPLAY_TASK, TRAIN_TASK
from hexz_tasks.repository import ModelRepository
from hexz_tasks.settings import Settings
from hexz_tasks.store import ExampleStore
from hexz_tasks.training_tick import restore_trainer_state

pytestmark = pytest.mark.slow

# Training tests: time limits far above what a loaded 2-core machine needs, and a short
# training lock, refreshed every 2 s, whose expiry after a killed trainer the tests await.
LOCK_TTL_S = 6
LONG_TASKS = {
    "task_time_limit_s": 300,
    "training_time_limit_s": 300,
    "visibility_timeout_s": 330,
    "training_lock_ttl_s": LOCK_TTL_S,
}


def setup(
    redis_server: RedisServer, tmp_path: Path, **overrides: object
) -> tuple[dict[str, str], Settings, redis.Redis, Keys]:
    env = tiny_env(redis_server.url, tmp_path / "data", **overrides)
    settings = Settings.from_env(env)
    return env, settings, redis_server.client(), Keys(TEST_PREFIX)


def publish_checkpoint_0(settings: Settings, r: redis.Redis, keys: Keys) -> ModelRepository:
    repo = ModelRepository(settings.repo_base_dir, settings.model_name)
    restore_trainer_state(settings, r, keys, repo)
    return repo


def add_synthetic_games(r: redis.Redis, keys: Keys, n: int, seed: int = 0) -> int:
    store = ExampleStore(r, keys)
    games = game_columns(n, seed, runs=8, max_moves=60)
    return sum(store.add_game(f"synthetic-{seed}:{i}", g) for i, g in enumerate(games))


def stream_entries(r: redis.Redis, keys: Keys) -> list[tuple[str, int]]:
    """(game id, examples) of every entry still in the example stream."""
    return [
        (fields[b"id"].decode(), int(fields[b"n"])) for _, fields in r.xrange(keys.examples_stream)
    ]


def counters(r: redis.Redis, keys: Keys) -> dict[str, int]:
    return ExampleStore(r, keys).counters()


def assert_each_game_once(r: redis.Redis, keys: Keys) -> list[str]:
    """Nothing drained yet: the stream holds every stored game exactly once."""
    entries = stream_entries(r, keys)
    ids = [gid for gid, _ in entries]
    assert len(ids) == len(set(ids)), f"a game was stored twice: {sorted(ids)}"
    c = counters(r, keys)
    assert c["games"] + c["batches"] == len(entries)
    assert c["examples"] == sum(n for _, n in entries)
    return ids


def games_by_process(r: redis.Redis, keys: Keys) -> dict[str, list[int]]:
    """Stored self-play game indices per process id (game ids are "<process>:<index>")."""
    out: dict[str, list[int]] = {}
    for game_id, _ in stream_entries(r, keys):
        process, _, index = game_id.removeprefix("game:").rpartition(":")
        out.setdefault(process, []).append(int(index))
    return {p: sorted(ix) for p, ix in out.items()}


def received_events(pubsub: redis.client.PubSub, quiet_s: float = 1.0) -> list[dict]:
    """Every event delivered so far (until none arrived for `quiet_s`)."""
    out = []
    deadline = time.monotonic() + quiet_s
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.1)
        if message is not None:
            out.append(json.loads(message["data"]))
            deadline = time.monotonic() + quiet_s
    return out


def latest_published(r: redis.Redis, keys: Keys) -> int | None:
    latest = fetch_latest(r, keys)
    return None if latest is None else latest[1]


# ---------------------------------------------------------------------- training


def test_two_training_tasks_at_once_one_trains_one_skips(
    redis_server: RedisServer, tmp_path: Path, procs: Procs
) -> None:
    env, settings, r, keys = setup(redis_server, tmp_path, num_epochs=30, **LONG_TASKS)
    repo = publish_checkpoint_0(settings, r, keys)
    examples = add_synthetic_games(r, keys, 12)
    assert examples >= settings.training_trigger_threshold
    events = r.pubsub(ignore_subscribe_messages=True)
    events.subscribe(keys.events_channel)
    procs.worker("gpu", "gpu", env, concurrency=2)
    app = make_app(settings)
    wait_for(lambda: app.control.ping(timeout=0.5), 60, "the gpu worker")

    results = [app.send_task(TRAIN_TASK) for _ in range(2)]
    outcomes = sorted(
        (res.get(timeout=120) for res in results), key=lambda o: o["trained"], reverse=True
    )

    assert outcomes[0] == {"trained": True, "checkpoint": 1}
    assert outcomes[1] == {
        "trained": False,
        "reason": "another training is running",
        "checkpoint": 0,
    }
    assert repo.checkpoints() == [0, 1]
    assert latest_published(r, keys) == 1
    runs = [json.loads(x) for x in r.lrange(keys.training_runs, 0, -1)]
    assert [run["checkpoint"] for run in runs] == [1]
    assert runs[0]["examples_total"] == examples
    assert not r.exists(keys.training_active) and not r.exists(keys.training_lock)
    assert received_events(events) == [
        {"event": "training_started", "checkpoint": 0},
        {"event": "training_done", "checkpoint": 1},
    ]
    app.close()


def test_gpu_worker_killed_during_training_leaves_no_checkpoint_and_next_tick_trains(
    redis_server: RedisServer, tmp_path: Path, procs: Procs
) -> None:
    env, settings, r, keys = setup(redis_server, tmp_path, num_epochs=300, **LONG_TASKS)
    repo = publish_checkpoint_0(settings, r, keys)
    add_synthetic_games(r, keys, 12)
    events = r.pubsub(ignore_subscribe_messages=True)
    events.subscribe(keys.events_channel)
    gpu = procs.worker("gpu", "gpu", env)
    procs.celery("beat", ["beat", "-l", "INFO"], env)

    started = wait_for(lambda: r.get(keys.training_active), 90, "a training to start")
    assert json.loads(started)["checkpoint"] == 0
    time.sleep(1.0)  # well inside the training (400 epochs)
    gpu.kill_group(signal.SIGKILL)
    gpu.popen.wait(10)

    assert repo.checkpoints() == [0], "a killed training must not leave a checkpoint"
    assert latest_published(r, keys) == 0
    visible = {p.name for p in repo.checkpoints_dir.iterdir() if not p.name.startswith(".tmp-")}
    assert visible == {"0"}
    assert received_events(events) == [{"event": "training_started", "checkpoint": 0}]

    # The lock and the training flag expire by themselves; a new gpu worker then trains
    # on the next beat tick. Fewer epochs so it finishes quickly.
    wait_for(lambda: not r.exists(keys.training_lock), LOCK_TTL_S + 5, "the lock to expire")
    assert not r.exists(keys.training_active)
    procs.worker("gpu2", "gpu", {**env, "HEXZ_NUM_EPOCHS": "1"})
    wait_for(lambda: latest_published(r, keys) == 1, 90, "checkpoint 1 after the restart")
    assert repo.checkpoints() == [0, 1]
    assert {"model.pt", "model.pt.params", "scriptmodule.pt"} <= {
        p.name for p in repo.checkpoint_dir(1).iterdir()
    }
    assert r.llen(keys.training_runs) == 1


def add_games_by_id(r: redis.Redis, keys: Keys, n: int, seed: int) -> dict[str, list[bytes]]:
    """Stores `n` synthetic games; returns game id -> its examples' fingerprints."""
    store = ExampleStore(r, keys)
    games = {}
    for i, cols in enumerate(game_columns(n, seed, runs=8, max_moves=60)):
        games[f"synthetic-{seed}:{i}"] = row_keys(cols)
        assert store.add_game(f"synthetic-{seed}:{i}", cols) > 0
    return games


def copies_on_disk(repo: ModelRepository, games: dict[str, list[bytes]]) -> dict[str, set[int]]:
    """Game id -> how often each of its examples is in the trainer's dataset ({1}: once,
    whole). Fails on an example of no stored game."""
    ds = Dataset(repo.examples_store_dir)
    on_disk = Counter(k for c in ds.chunks() for k in row_keys(ds.read_chunk(c)))
    assert set(on_disk) <= {k for ks in games.values() for k in ks}
    return {gid: {on_disk[k] for k in ks} for gid, ks in games.items()}


@pytest.mark.parametrize("point", ["drain", "rename"])
def test_gpu_worker_killed_mid_drain_or_before_the_checkpoint_rename_keeps_each_game_once(
    redis_server: RedisServer, tmp_path: Path, procs: Procs, point: str
) -> None:
    env, settings, r, keys = setup(redis_server, tmp_path, **LONG_TASKS)
    repo = publish_checkpoint_0(settings, r, keys)
    games = add_games_by_id(r, keys, 3, seed=0)
    wait_for_examples_to_settle()
    flag = tmp_path / "stopped"
    faulty = procs.start(
        "gpu-faulty",
        [sys.executable, "tests/faults.py", point, str(flag), "-A", "hexz_tasks", "worker",
         "-Q", "gpu", "-n", "gpu@%h", "-c", "1", "-l", "INFO"],
        env,
    )  # fmt: skip
    app = make_app(settings)
    app.send_task(TRAIN_TASK)
    wait_for(flag.exists, 90, f"the trainer at the {point} point")

    # Where the kill lands, proven from the outside:
    temps = [p for p in repo.checkpoints_dir.iterdir() if p.name.startswith(".tmp-1-")]
    if point == "drain":  # a chunk on disk, Redis not trimmed yet
        assert copies_on_disk(repo, games) == {gid: {1} for gid in games}
        assert r.xlen(keys.examples_stream) == 3 and counters(r, keys)["pending"] > 0
        assert temps == []
    else:  # every file of checkpoint 1 written, not renamed into place
        assert len(temps) == 1 and {"model.pt", "scriptmodule.pt", "stats.json"} <= {
            f.name for f in temps[0].iterdir()
        }
        assert r.xlen(keys.examples_stream) == 0
    faulty.kill_group(signal.SIGKILL)
    faulty.popen.wait(10)
    assert repo.checkpoints() == [0] and latest_published(r, keys) == 0

    # Self-play goes on; a new trainer comes and trains checkpoint 1 from all of it.
    games.update(add_games_by_id(r, keys, 2, seed=1))
    wait_for_examples_to_settle()
    procs.worker("gpu", "gpu", env)
    wait_for(lambda: not r.exists(keys.training_lock), LOCK_TTL_S + 5, "the lock to expire")
    wait_for(lambda: app.send_task(TRAIN_TASK).get(timeout=120)["trained"], 180, "checkpoint 1")
    assert repo.checkpoints() == [0, 1] and latest_published(r, keys) == 1
    assert copies_on_disk(repo, games) == {gid: {1} for gid in games}  # each game once
    assert r.xlen(keys.examples_stream) == 0 and counters(r, keys)["pending"] == 0
    total = sum(len(ks) for ks in games.values())
    assert repo.load_stats(1)["examples_total"] == total == counters(r, keys)["examples"]
    assert not [p for p in repo.checkpoints_dir.iterdir() if p.name.startswith(".tmp")]
    app.close()


# ---------------------------------------------------------------------- self-play


def selfplay_worker_ready(r: redis.Redis, keys: Keys) -> bool:
    return any(b"selfplay" in v for v in r.hvals(keys.workers))


def test_end_to_end_selfplay_fills_the_store_training_makes_checkpoint_1_selfplay_uses_it(
    redis_server: RedisServer, tmp_path: Path, procs: Procs
) -> None:
    env, settings, r, keys = setup(redis_server, tmp_path)
    repo = ModelRepository(settings.repo_base_dir, settings.model_name)
    procs.worker("gpu", "gpu", env)
    procs.worker("selfplay", "selfplay", env)
    procs.celery("beat", ["beat", "-l", "INFO"], env)

    # Nothing was set up by hand: the gpu worker's first tick makes checkpoint 0, the
    # feeder queues self-play tasks, games arrive, training makes checkpoint 1.
    wait_for(lambda: latest_published(r, keys) == 0 or None, 90, "checkpoint 0")
    wait_for(lambda: counters(r, keys)["games"] > 0, 90, "the first stored game")
    # The feeder keeps about one task waiting per pool process (1): the queue stays short.
    for _ in range(10):
        assert r.llen(keys.queue(SELFPLAY_QUEUE)) <= 2 and r.hlen(keys.selfplay_running) <= 1
        time.sleep(0.2)
    wait_for(lambda: (latest_published(r, keys) or 0) >= 1, 120, "checkpoint 1")
    assert 1 in repo.checkpoints()
    run = json.loads(r.lindex(keys.training_runs, 0))
    assert run["checkpoint"] == 1 and run["examples_total"] >= settings.training_trigger_threshold

    # Self-play switches to the new models: examples made by a checkpoint >= 1 get
    # archived under that checkpoint (archives are grouped by the examples' model key).
    wait_for(
        lambda: [p for p in repo.checkpoints_dir.glob("*/examples/*.gz") if p.parts[-3] != "0"],
        120,
        "archived examples made with a trained checkpoint",
    )

    # `hexz status` reports it all.
    out = subprocess.run(
        [sys.executable, "-m", "hexz_tasks.cli", "status"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "examples:" in out.stdout and "training:" in out.stdout
    assert "worker:      selfplay@" in out.stdout and "worker:      gpu@" in out.stdout
    assert "self-play:   1 process(es), 2 games in flight" in out.stdout
    from hexz_tasks.status import gather_status

    before = counters(r, keys)["examples"]
    status = gather_status(settings, r, inspect_timeout=0)
    # Self-play still stores games: the status sees the counter between the two reads.
    assert 0 < before <= status["examples"]["total"] <= counters(r, keys)["examples"]
    assert status["training"]["runs"] >= 1
    assert status["model"]["published"]["checkpoint"] >= 1
    assert {w["queues"][0] for w in status["workers"].values()} == {"gpu", "selfplay"}


def test_selfplay_pool_process_killed_mid_slice_stores_no_game_twice_and_loses_only_unfinished(
    redis_server: RedisServer, tmp_path: Path, procs: Procs
) -> None:
    # One game in flight: games finish in index order, so the finished games of a
    # process are exactly <process>:0 .. <process>:n-1.
    env, settings, r, keys = setup(
        redis_server, tmp_path, games_in_flight=1, runs_per_move=16, max_moves_per_game=100,
        selfplay_slice_s=8,
    )  # fmt: skip
    publish_checkpoint_0(settings, r, keys)
    procs.worker("selfplay", "selfplay", env)
    wait_for(lambda: selfplay_worker_ready(r, keys), 60, "the selfplay worker")
    app = make_app(settings)
    app.send_task(SELFPLAY_TASK, args=[8, 0], task_id="kill-me")

    wait_for(lambda: len(stream_entries(r, keys)) >= 2, 90, "two games of the slice")
    pid = json.loads(r.hget(keys.selfplay_running, "kill-me"))["pid"]
    os.kill(pid, signal.SIGKILL)
    (killed,) = games_by_process(r, keys)

    # The slice is redelivered at once (reject on worker loss) to a new pool process,
    # whose games are new games under its own id.
    def redelivered() -> bool:
        entry = r.hget(keys.selfplay_running, "kill-me")
        return entry is not None and json.loads(entry)["pid"] != pid

    wait_for(redelivered, 60, "the slice in a new pool process")
    assert int(r.get(keys.task_attempts("kill-me"))) == 2
    wait_for(lambda: len(games_by_process(r, keys)) == 2, 90, "a game of the new process")
    wait_for(lambda: not r.hexists(keys.selfplay_running, "kill-me"), 60, "the slice to end")
    # Acknowledged at its end: nothing can redeliver it, its counter is gone.
    wait_for(lambda: not r.exists(keys.task_attempts("kill-me")), 10, "the counter to go")
    assert_each_game_once(r, keys)
    games = games_by_process(r, keys)
    n = len(games[killed])
    assert n >= 2 and games[killed] == list(range(n)), games  # its game n was in flight: lost
    (survivor,) = set(games) - {killed}
    assert games[survivor] == list(range(len(games[survivor])))
    assert counters(r, keys)["games"] == sum(len(ix) for ix in games.values())
    assert r.llen(keys.queue(SELFPLAY_QUEUE)) == 0 and r.hlen(keys.unacked) == 0
    app.close()


def test_a_task_that_keeps_killing_its_worker_is_dropped_after_the_delivery_cap(
    redis_server: RedisServer, tmp_path: Path, procs: Procs
) -> None:
    """Each delivery of the slice dies with its pool process (SIGKILL, as an OOM kill
    would): it comes back at once (reject on worker loss) until it was delivered
    task_max_deliveries times; the next delivery is dropped without running."""
    env, settings, r, keys = setup(redis_server, tmp_path, selfplay_slice_s=20)
    publish_checkpoint_0(settings, r, keys)
    worker = procs.worker("selfplay", "selfplay", env)
    wait_for(lambda: selfplay_worker_ready(r, keys), 60, "the selfplay worker")
    app = make_app(settings)
    app.send_task(SELFPLAY_TASK, args=[20, 0], task_id="poison")
    cap = settings.task_max_deliveries
    pids: list[int] = []

    def running_in_a_new_process() -> int | None:
        entry = r.hget(keys.selfplay_running, "poison")
        pid = json.loads(entry)["pid"] if entry else None
        return pid if pid not in pids else None

    for delivery in range(1, cap + 1):
        pid = wait_for(running_in_a_new_process, 90, f"delivery {delivery} running")
        assert int(r.get(keys.task_attempts("poison"))) == delivery
        os.kill(pid, signal.SIGKILL)
        pids.append(pid)
    rejected = f"selfplay[poison]: delivered {cap + 1} times, more than the cap of {cap}"
    wait_for(lambda: rejected in worker.log(), 90, "the delivery past the cap to be dropped")
    time.sleep(2)  # a delivery that ran anyway would show in the registry by now
    assert running_in_a_new_process() is None and len(set(pids)) == cap
    assert int(r.get(keys.task_attempts("poison"))) == cap + 1
    assert r.llen(keys.queue(SELFPLAY_QUEUE)) == 0 and r.hlen(keys.unacked) == 0
    app.close()


def test_redis_restart_during_a_run_loses_no_acknowledged_example_and_workers_reconnect(
    redis_server: RedisServer, tmp_path: Path, procs: Procs
) -> None:
    env, settings, r, keys = setup(
        redis_server,
        tmp_path,
        selfplay_slice_s=3,
        task_time_limit_s=40,
        training_time_limit_s=40,
        visibility_timeout_s=45,
    )
    publish_checkpoint_0(settings, r, keys)
    worker = procs.worker("selfplay", "selfplay", env)
    wait_for(lambda: selfplay_worker_ready(r, keys), 60, "the selfplay worker")
    app = make_app(settings)
    for i in range(3):
        app.send_task(SELFPLAY_TASK, args=[3, 0], task_id=f"task-{i}")

    wait_for(lambda: counters(r, keys)["games"] >= 2, 90, "some stored games")
    # An acknowledged write made right before the crash.
    acked = add_synthetic_games(r, keys, 1, seed=99)
    before = counters(r, keys)
    stored_before = {gid for gid, _ in stream_entries(r, keys)}
    redis_server.kill()
    time.sleep(2)
    redis_server.start()  # same port, same AOF directory

    after = counters(r, keys)
    assert after["examples"] >= before["examples"] and after["games"] >= before["games"]
    assert stored_before <= {gid for gid, _ in stream_entries(r, keys)}
    assert acked > 0 and "game:synthetic-99:0" in stored_before

    # The worker reconnects and stores more games; slices sent after the restart run too.
    for i in range(3, 5):
        app.send_task(SELFPLAY_TASK, args=[3, 0], task_id=f"task-{i}")
    wait_for(lambda: counters(r, keys)["games"] >= after["games"] + 3, 150, "games after it")
    queue = keys.queue(SELFPLAY_QUEUE)
    wait_for(lambda: r.hlen(keys.selfplay_running) == 0 and r.llen(queue) == 0, 120,
             "the slices to end")  # fmt: skip
    assert_each_game_once(r, keys)
    assert counters(r, keys)["examples"] == sum(n for _, n in stream_entries(r, keys))
    # The worker saw the connection drop and cancelled the running slice (SIGTERM to its
    # pool process, which ends the slice after its batch, "stopped"); the process lived
    # on with its games in flight: one self-play process stored every game.
    log = worker.log()
    assert "Connection to broker lost" in log
    assert "cannot be acknowledged after a connection loss" in log
    assert "'stopped': True" in log
    by_process = games_by_process(r, keys)
    by_process.pop("synthetic-99", None)
    assert len(by_process) == 1, by_process
    app.close()


@pytest.fixture
def password_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis-auth", password="s3cret")
    server.start()
    yield server
    server.stop()


def test_malformed_messages_are_rejected_logged_and_store_nothing(
    password_redis_server: RedisServer, tmp_path: Path, procs: Procs
) -> None:
    # A password-protected Redis: workers must take the password from the URL.
    env, settings, r, keys = setup(password_redis_server, tmp_path)
    publish_checkpoint_0(settings, r, keys)
    worker = procs.worker("selfplay", "selfplay", env)
    wait_for(lambda: selfplay_worker_ready(r, keys), 60, "the selfplay worker")
    app = make_app(settings)
    app.send_task(SELFPLAY_TASK, args=["not a budget", 0], task_id="bad-type")
    app.send_task(SELFPLAY_TASK, args=[1, 2, 3], task_id="bad-arity")
    app.send_task(SELFPLAY_TASK, args=[-1, 0], task_id="bad-range")
    app.send_task(SELFPLAY_TASK, kwargs={"budget_s": 1, "max_games": 0, "evil": True},
                  task_id="bad-kwarg")  # fmt: skip
    app.send_task("hexz_tasks.tasks.no_such_task", args=[1], queue=SELFPLAY_QUEUE)
    with app.connection_for_write() as conn:
        producer = conn.Producer()
        for body, content_type in [
            (b"\x80\x04\x95garbage", "application/x-python-serialize"),  # pickle
            (b"{not json", "application/json"),
        ]:
            producer.publish(
                body,
                routing_key=SELFPLAY_QUEUE,
                content_type=content_type,
                content_encoding="binary",
                headers={"task": SELFPLAY_TASK, "id": "raw"},
            )

    def all_handled() -> bool:
        log = worker.log()
        return (
            all(f"[{tid}]: " in log for tid in ("bad-type", "bad-arity", "bad-range"))
            and "[bad-kwarg]: bad arguments" in log
            and "unregistered task" in log
            and "untrusted content of type pickle" in log
            and "Can't decode message body" in log
        )

    wait_for(all_handled, 60, "the worker to reject every malformed message")
    log = worker.log()
    assert "selfplay[bad-type]: argument budget_s must be float" in log
    assert "selfplay[bad-range]: budget_s must be > 0 and max_games >= 0, got -1" in log
    assert worker.alive()
    assert r.llen(keys.queue(SELFPLAY_QUEUE)) == 0 and r.hlen(keys.unacked) == 0
    assert counters(r, keys) == {
        "examples": 0, "games": 0, "batches": 0, "pending": 0, "trained": 0
    }  # fmt: skip
    assert r.xlen(keys.examples_stream) == 0
    # ... and the worker still serves well-formed tasks.
    # A budget above this worker's slice (a feeder configured otherwise) is cut to it.
    app.send_task(SELFPLAY_TASK, args=[3600, 2], task_id="good")
    wait_for(lambda: counters(r, keys)["games"] >= 2, 90, "games of a valid slice")
    # The worker's parent process never loaded torch (CUDA must not be set up before a fork).
    assert "libtorch" not in Path(f"/proc/{worker.pid}/maps").read_text()
    app.close()
