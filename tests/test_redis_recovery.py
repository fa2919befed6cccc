"""A Redis that comes back without its last writes, or empty (issue 16): a real
redis-server SIGKILLed and restarted empty or from an older copy of its AOF, the real
training tick, real producers. No example gets a stream id at or below what the trainer
drained, every stored example reaches the trainer's disk exactly once (compared example
by example), and the training trigger neither goes negative nor stalls."""

from __future__ import annotations

import logging
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
import torch
from conftest import TEST_PREFIX, RedisServer, wait_for_examples_to_settle
from synthetic import game_columns, row_keys

from hexz_tasks import codec, store
from hexz_tasks.dataset import Dataset
from hexz_tasks.keys import Keys
from hexz_tasks.model_source import fetch_latest
from hexz_tasks.repository import ModelRepository
from hexz_tasks.settings import Settings
from hexz_tasks.store import ExampleStore, StoreNotReadyError
from hexz_tasks.training_tick import restore_trainer_state, run_training_tick

KEYS = Keys(TEST_PREFIX)
HOUR_MS = 3_600_000


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def trainer_settings(redis_server: RedisServer, tmp_path: Path, **overrides: object) -> Settings:
    return Settings.from_env(
        {},
        data_dir=tmp_path / "data",
        redis_url=redis_server.url,
        key_prefix=TEST_PREFIX,
        model_blocks=1,
        model_filters=8,
        batch_size=64,
        num_epochs=1,
        training_trigger_threshold=100,
        **overrides,
    )


def repo_of(settings: Settings) -> ModelRepository:
    return ModelRepository(settings.repo_base_dir, settings.model_name)


def producer(settings: Settings, r: redis.Redis) -> ExampleStore:
    """What self-play and the gRPC service add with."""
    return ExampleStore.for_producer(settings, r, KEYS, full_wait_s=0.0)


def add(p: ExampleStore, tag: str, seed: int, n: int = 3) -> Counter:
    """Stores `n` synthetic games as <tag>:<i>; returns their examples' fingerprints."""
    stored: Counter = Counter()
    for i, cols in enumerate(game_columns(n, seed, runs=8, max_moves=60)):
        assert p.add_game(f"{tag}:{i}", cols) == codec.num_rows(cols)
        stored.update(row_keys(cols))
    return stored


def on_disk(settings: Settings) -> Counter:
    """Fingerprints of every example in the trainer's dataset."""
    ds = Dataset(repo_of(settings).examples_store_dir)
    return Counter(k for c in ds.chunks() for k in row_keys(ds.read_chunk(c)))


def parse_id(stream_id: bytes | str) -> tuple[int, int]:
    ms, seq = (stream_id.decode() if isinstance(stream_id, bytes) else stream_id).split("-")
    return int(ms), int(seq)


def last_generated_id(r: redis.Redis) -> tuple[int, int]:
    return parse_id(r.xinfo_stream(KEYS.examples_stream)["last-generated-id"])


def restart(redis_server: RedisServer, aof: Path | None = None) -> redis.Redis:
    """SIGKILL, then start again on the same port: empty, or from `aof` (a copy of an
    older AOF directory). Returns a new client."""
    redis_server.kill()
    shutil.rmtree(redis_server.data_dir)
    redis_server.data_dir.mkdir()
    if aof is not None:
        shutil.copytree(aof, redis_server.data_dir / aof.name)
    redis_server.start()
    return redis_server.client()


def tick(settings: Settings, r: redis.Redis) -> dict:
    wait_for_examples_to_settle()
    return run_training_tick(settings, r, KEYS)


def test_redis_back_empty_on_a_clock_behind_loses_no_example_and_the_trigger_rebases(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    settings = trainer_settings(redis_server, tmp_path)
    r = redis_server.client()
    restore_trainer_state(settings, r, KEYS, repo_of(settings))
    # The first Redis ran on a clock an hour ahead of the one it comes back on (another
    # host, or a clock stepped back): its stream ids are an hour "in the future".
    now_ms = int(time.time() * 1000)
    # (An entry added and trimmed at once leaves the stream's last id there.)
    future = f"{now_ms + HOUR_MS}-0"
    r.execute_command("XADD", KEYS.examples_stream, "MAXLEN", "0", future, "n", "0")
    old = add(producer(settings, r), "old", seed=1)
    assert tick(settings, r) == {"trained": True, "checkpoint": 1}
    trained_at = sum(old.values())
    watermark = parse_id(Dataset(repo_of(settings).examples_store_dir).last_stream_id())
    assert watermark[0] > now_ms + HOUR_MS - 1

    r = restart(redis_server)  # empty
    # Self-play and the gRPC service wait for the trainer to set the store up again.
    with pytest.raises(StoreNotReadyError, match="not set up"):
        producer(settings, r).add_game("early:0", game_columns(1, seed=9, runs=8)[0])
    outcome = run_training_tick(settings, r, KEYS)
    assert outcome == {"trained": False, "reason": "below threshold", "checkpoint": 1}
    assert last_generated_id(r) >= watermark
    counters = ExampleStore(r, KEYS).counters()
    assert counters["examples"] == counters["trained"] == trained_at  # re-based, not 0
    assert json_latest(r) == 1  # the newest checkpoint is published again

    new = add(producer(settings, r), "new", seed=2)
    ids = [parse_id(eid) for eid, _ in r.xrange(KEYS.examples_stream)]
    assert len(ids) == 3 and min(ids) > watermark
    assert ExampleStore(r, KEYS).examples_since_training() == sum(new.values())
    assert tick(settings, r) == {"trained": True, "checkpoint": 2}
    assert on_disk(settings) == old + new  # every example once, none lost
    stats = repo_of(settings).load_stats(2)
    assert stats["examples_total"] == trained_at + sum(new.values())
    assert ExampleStore(r, KEYS).counters()["pending"] == 0


def json_latest(r: redis.Redis) -> int | None:
    latest = fetch_latest(r, KEYS)
    return None if latest is None else latest[1]


def test_redis_back_from_an_older_aof_keeps_training_and_stores_each_example_once(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    settings = trainer_settings(redis_server, tmp_path)
    r = redis_server.client()
    restore_trainer_state(settings, r, KEYS, repo_of(settings))
    a = add(producer(settings, r), "a", seed=1)
    time.sleep(1.2)  # appendfsync everysec
    snapshot = tmp_path / "older" / "appendonlydir"
    shutil.copytree(redis_server.data_dir / "appendonlydir", snapshot)
    assert tick(settings, r) == {"trained": True, "checkpoint": 1}
    b = add(producer(settings, r), "b", seed=2)
    assert tick(settings, r) == {"trained": True, "checkpoint": 2}
    trained_at = sum((a + b).values())

    # Back with the state of before checkpoint 1: a's entries (drained long ago) in the
    # stream, counters far below checkpoint 2's total, checkpoint 0 published.
    r = restart(redis_server, aof=snapshot)
    assert r.xlen(KEYS.examples_stream) == 3
    assert ExampleStore(r, KEYS).counters()["examples"] == sum(a.values()) < trained_at
    c = add(producer(settings, r), "c", seed=3)  # the stream exists: producers go on
    assert tick(settings, r) == {"trained": True, "checkpoint": 3}
    assert on_disk(settings) == a + b + c  # a's leftovers were not taken twice
    counters = ExampleStore(r, KEYS).counters()
    assert counters["examples"] == counters["trained"] == trained_at + sum(c.values())
    assert counters["pending"] == 0 and r.xlen(KEYS.examples_stream) == 0
    assert json_latest(r) == 3


def test_producers_wait_for_the_aof_where_redis_can_and_say_once_where_it_cannot(
    redis_server: RedisServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(store, "_told_no_waitaof", False)
    settings = trainer_settings(redis_server, tmp_path, wait_aof_s=2.0)
    r = redis_server.client()
    restore_trainer_state(settings, r, KEYS, repo_of(settings))
    version = tuple(int(x) for x in r.info("server")["redis_version"].split(".")[:2])
    games = game_columns(3, seed=4, runs=8, max_moves=60)
    with caplog.at_level(logging.WARNING, logger="hexz_tasks.store"):
        for i, cols in enumerate(games):
            # A new store per game, as self-play makes one per slice.
            assert producer(settings, r).add_game(f"g:{i}", cols) == codec.num_rows(cols)
    assert r.xlen(KEYS.examples_stream) == 3  # stored either way
    warnings = [m for m in caplog.messages if "WAITAOF" in m]
    if version >= (7, 2):
        assert warnings == [] and "fsynced" not in caplog.text
    else:  # this machine's 7.0: stores without waiting, and says so once per process
        assert len(warnings) == 1 and "needs Redis >= 7.2" in warnings[0]
