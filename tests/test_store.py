"""The Redis example store: idempotent adds, counters, backpressure, crash-safe draining.

Each test has its own throwaway redis-server (conftest.redis_server).
"""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import redis
from conftest import RedisServer
from synthetic import game_columns, game_examples, row_keys

from hexz_tasks import codec, hexz_pb2
from hexz_tasks.archive import import_files, write_request
from hexz_tasks.dataset import Dataset
from hexz_tasks.examples import from_columns, npy_bytes
from hexz_tasks.hexz_pb2 import AddTrainingExamplesRequest
from hexz_tasks.keys import Keys
from hexz_tasks.repository import ModelRepository
from hexz_tasks.settings import Settings, SettingsError
from hexz_tasks.store import ExampleStore, StoreFullError

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def r(redis_client: redis.Redis) -> redis.Redis:
    return redis_client


@pytest.fixture
def keys(test_keys: Keys) -> Keys:
    return test_keys


def games(n: int, seed: int = 0, model_key: tuple[str, int] = ("flagz", 0)) -> list[codec.Columns]:
    return game_columns(n, seed, runs=30, max_moves=40, model=model_key)


def rows(games: list[codec.Columns]) -> int:
    return sum(map(codec.num_rows, games))


def test_add_game_is_idempotent_and_counts(r: redis.Redis, keys: Keys) -> None:
    store = ExampleStore(r, keys, settle_ms=0)
    g = games(2)
    assert store.add_game("a", g[0]) == rows(g[:1])
    assert store.add_game("a", g[0]) == 0  # redelivered task
    assert store.add_game("b", g[1]) == rows(g[1:])
    edge = from_columns(g[1])[:5]
    assert store.add_examples("req-1", edge) == 5
    assert store.add_examples("req-1", edge) == 0
    c = store.counters()
    total = rows(g) + 5
    assert (c["examples"], c["games"], c["batches"], c["pending"]) == (total, 2, 1, total)
    assert r.xlen(keys.examples_stream) == 3
    # Counters live in Redis, not in the object: a new store (a restarted process) sees them.
    assert ExampleStore(r, keys, settle_ms=0).total_examples() == total
    assert ExampleStore(r, keys, settle_ms=0).examples_since_training() == total


def test_done_markers_live_as_long_as_a_retried_write_needs(
    r: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    """Game ids are unique to their game, so a marker only has to outlive a retried write
    of the same game or request (HEXZ_DONE_MARKER_TTL_S, an hour by default), not a week:
    ~61,000 markers at 17 games/s instead of ~10 million."""
    settings = Settings.from_env({}, data_dir=tmp_path, key_prefix=keys.prefix)
    assert settings.done_marker_ttl_s == 3600
    store = ExampleStore.for_producer(settings, r, keys, full_wait_s=0, wait_for_trainer=False)
    g = games(2)
    store.add_game("p:0", g[0])
    store.add_examples("grpc-req", from_columns(g[1])[:3])
    for done_id in ("game:p:0", "batch:grpc-req"):
        assert 3590 <= r.ttl(keys.game_done(done_id)) <= 3600
    # Within its lifetime a retried write stores nothing; once it is gone, it would.
    short = ExampleStore(r, keys, done_ttl_s=1)
    assert short.add_game("retried", g[0]) == rows(g[:1])
    assert short.add_game("retried", g[0]) == 0
    time.sleep(2.1)
    assert short.add_game("retried", g[0]) == rows(g[:1])
    # `hexz import` keeps its (few) markers a week: importing a file twice adds it once.
    archive = write_request(
        tmp_path / "a.gz", AddTrainingExamplesRequest(examples=from_columns(g[1]))
    )
    assert import_files([archive], store) == (rows(g[1:]), [])
    (marker,) = r.keys(keys.game_done("import:*"))
    assert r.ttl(marker) > 6 * 24 * 3600
    with pytest.raises(SettingsError, match="HEXZ_DONE_MARKER_TTL_S"):
        Settings.from_env({"HEXZ_DONE_MARKER_TTL_S": "30"})


def test_concurrent_adds_of_one_game_store_it_once(
    r: redis.Redis, redis_server: RedisServer, keys: Keys
) -> None:
    g = games(1)[0]
    results: list[int] = []

    def add() -> None:
        results.append(ExampleStore(redis_server.client(), keys).add_game("same", g))

    threads = [threading.Thread(target=add) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [0] * 7 + [codec.num_rows(g)]
    assert ExampleStore(r, keys, settle_ms=0).total_examples() == codec.num_rows(g)


def _bad(example: hexz_pb2.TrainingExample, field: str, value: np.ndarray) -> None:
    setattr(example, field, npy_bytes(value))


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("board", np.zeros((11, 11, 9), np.float32), "board has shape"),
        ("board", np.full((11, 11, 10), np.nan, np.float32), "NaN"),
        ("board", np.zeros((11, 11, 10), np.float64), "board has dtype"),
        ("action_mask", np.zeros((2, 11, 10), np.uint8), "action_mask has dtype"),
        ("move_probs", np.full((2, 11, 10), 0.5, np.float32), "nonzero outside the action mask"),
    ],
)
def test_invalid_examples_are_rejected_naming_the_example(
    r: redis.Redis, keys: Keys, field: str, value: np.ndarray, message: str
) -> None:
    store = ExampleStore(r, keys, settle_ms=0)
    g = game_examples(1, seed=0, runs=30, max_moves=40)[0]
    _bad(g[3], field, value)
    with pytest.raises(ValueError, match=rf"batch g7 example 3: .*{message}"):
        store.add_examples("g7", g)
    assert store.counters()["examples"] == 0
    assert r.xlen(keys.examples_stream) == 0


def test_move_probs_not_summing_to_one_are_rejected(r: redis.Redis, keys: Keys) -> None:
    (cols,) = games(1)
    g = from_columns(cols)
    probs = codec.decode(codec.take_rows(cols, np.array([2]))).move_probs[0]
    _bad(g[2], "move_probs", (probs * 0.5).reshape(2, 11, 10))
    with pytest.raises(ValueError, match="batch x example 2: move_probs do not sum to 1"):
        ExampleStore(r, keys, settle_ms=0).add_examples("x", g)


def test_backpressure_raises_when_full_and_resumes_after_drain(
    r: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    g = games(3)
    bound = rows(g[:1]) + rows(g[1:2]) // 2
    store = ExampleStore(r, keys, max_pending=bound, full_wait_s=0.2, settle_ms=0)
    assert store.add_game("0", g[0]) == rows(g[:1])
    with pytest.raises(StoreFullError, match="example store full"):
        store.add_game("1", g[1])
    assert store.counters()["pending"] == rows(g[:1])  # nothing half-added
    store.drain(Dataset(tmp_path / "ds"))
    assert store.counters()["pending"] == 0
    assert store.add_game("1", g[1]) == rows(g[1:2])


def test_backpressure_waits_for_the_trainer(
    r: redis.Redis, redis_server: RedisServer, keys: Keys, tmp_path: Path
) -> None:
    """A producer that finds the store full blocks until the trainer drains it: the test
    fails if add_game returns without waiting (or never returns)."""
    g = games(2)
    store = ExampleStore(r, keys, max_pending=rows(g[:1]), full_wait_s=60, settle_ms=0)
    store.add_game("0", g[0])
    seen: dict[str, object] = {}

    def trainer() -> None:
        time.sleep(0.5)  # the producer below has been trying for this long
        trainer_r = redis_server.client()
        seen["while_blocked"] = trainer_r.xlen(keys.examples_stream)
        seen["marker_while_blocked"] = trainer_r.exists(keys.game_done("game:1"))
        ExampleStore(trainer_r, keys, settle_ms=0).drain(Dataset(tmp_path / "ds"))
        seen["drained_at"] = time.monotonic()

    t = threading.Thread(target=trainer)
    t.start()
    started = time.monotonic()
    assert store.add_game("1", g[1]) == rows(g[1:])
    returned = time.monotonic()
    t.join(30)
    assert not t.is_alive()
    # Half a second in, game 1 was neither in the stream nor marked: the producer waited...
    assert seen["while_blocked"] == 1 and seen["marker_while_blocked"] == 0
    # ... and stored it only once the drain had made room.
    assert returned > seen["drained_at"] > started + 0.5  # type: ignore[operator]
    assert store.counters()["examples"] == rows(g) == store.counters()["pending"] + rows(g[:1])


def test_drain_moves_everything_once_and_archives_per_checkpoint(
    r: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    store = ExampleStore(r, keys, settle_ms=0)
    repo = ModelRepository(tmp_path, "flagz")
    repo.ensure_initial(_tiny_params())
    g0 = games(2, seed=1, model_key=("flagz", 0))
    g_other = games(1, seed=2, model_key=("flagz", 7))  # a checkpoint this repo lacks
    for i, g in enumerate(g0 + g_other):
        store.add_game(str(i), g)
    ds = Dataset(repo.examples_store_dir)
    n = rows(g0 + g_other)
    assert store.drain(ds, repo) == n
    assert ds.count() == n
    assert r.xlen(keys.examples_stream) == 0
    assert store.counters()["pending"] == 0
    assert store.drain(ds, repo) == 0  # nothing new: nothing doubled

    (archive,) = (repo.checkpoint_dir(0) / "examples").glob("*.gz")
    req = hexz_pb2.AddTrainingExamplesRequest.FromString(gzip.decompress(archive.read_bytes()))
    want = [e for g in g0 for e in from_columns(g)]
    assert len(req.examples) == len(want)
    for a, b in zip(req.examples, want, strict=True):
        assert (a.board, a.move_probs, a.action_mask, a.result) == (
            b.board,
            b.move_probs,
            b.action_mask,
            b.result,
        )
        assert (a.move, a.model_key, a.stats, a.turn) == (b.move, b.model_key, b.stats, b.turn)
    (other,) = (repo.model_dir / "examples-other" / "flagz-7" / "examples").glob("*.gz")
    req = hexz_pb2.AddTrainingExamplesRequest.FromString(gzip.decompress(other.read_bytes()))
    assert len(req.examples) == rows(g_other)


def _tiny_params():
    from hexz_tasks.model import ModelParams

    return ModelParams("conv2d", 1, 8)


class CrashAfterChunk(Dataset):
    """Dies right after a chunk is on disk, before archives and before the trim."""

    def append(self, cols, last_stream_id):  # type: ignore[override]
        super().append(cols, last_stream_id)
        raise KeyboardInterrupt("simulated crash")


def test_crash_between_chunk_write_and_trim_neither_loses_nor_doubles(
    r: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    store = ExampleStore(r, keys, settle_ms=0)
    repo = ModelRepository(tmp_path, "flagz")
    repo.ensure_initial(_tiny_params())
    g = games(3)
    for i, x in enumerate(g[:2]):
        store.add_game(str(i), x)
    root = repo.examples_store_dir
    with pytest.raises(KeyboardInterrupt):
        store.drain(CrashAfterChunk(root), repo)
    assert r.xlen(keys.examples_stream) == 2  # not trimmed: the crash came first
    (root / ".tmp-chunk-00000001-00000001-5.npz-999").write_bytes(b"half-written")
    store.add_game("2", g[2])
    ds = Dataset(root)
    store.drain(ds, repo)
    stored = np.concatenate([ds.read_chunk(c)["unix_micros"] for c in ds.chunks()])
    want = np.concatenate([x["unix_micros"] for x in g]).tolist()
    assert sorted(stored.tolist()) == sorted(want)
    assert r.xlen(keys.examples_stream) == 0
    assert store.counters()["pending"] == 0
    archived = sum(
        len(
            hexz_pb2.AddTrainingExamplesRequest.FromString(gzip.decompress(p.read_bytes())).examples
        )
        for p in (repo.checkpoint_dir(0) / "examples").glob("*.gz")
    )
    assert archived == len(want)  # archives of the crashed drain were written afterwards


# A drain in its own process that stops right after its first new chunk file is on disk
# (before archives and the trim of Redis).
_STOPPING_DRAIN = """
import pathlib, sys, time, redis
from hexz_tasks.dataset import Dataset
from hexz_tasks.keys import Keys
from hexz_tasks.store import ExampleStore
prefix, root, url, flag = sys.argv[1:]
class StopsAfterAChunk(Dataset):
    def append(self, cols, last_stream_id):
        chunk = super().append(cols, last_stream_id)
        pathlib.Path(flag).write_text(last_stream_id)
        time.sleep(600)
store = ExampleStore(redis.Redis.from_url(url), Keys(prefix), settle_ms=0)
store.drain(StopsAfterAChunk(root))
"""


def test_sigkilled_drain_resumes_exactly_once(
    r: redis.Redis, redis_server: RedisServer, keys: Keys, tmp_path: Path
) -> None:
    """Drains SIGKILLed mid-drain (a chunk on disk, Redis not trimmed), twice, with games
    arriving between: afterwards the dataset holds every stored example exactly once,
    compared example by example."""
    store = ExampleStore(r, keys, settle_ms=0)
    stored: Counter = Counter()

    def add(tag: str, cols: codec.Columns) -> None:
        store.add_game(tag, cols)
        stored.update(row_keys(cols))

    for i, cols in enumerate(games(4, seed=3)):
        add(str(i), cols)
    root = tmp_path / "ds"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    for kill in range(2):
        flag = tmp_path / f"stopped-{kill}"
        args = [sys.executable, "-c", _STOPPING_DRAIN, keys.prefix, str(root), redis_server.url]
        proc = subprocess.Popen([*args, str(flag)], env=env)
        deadline = time.monotonic() + 60
        while not flag.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the drain did not stop"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        # Mid-drain: a new chunk with everything stored so far on disk, but not one
        # entry trimmed from Redis yet (nor archived).
        ds = Dataset(root)
        assert len(ds.chunks()) == kill + 1 and ds.last_stream_id() == flag.read_text()
        assert ds.count() == sum(stored.values())
        assert r.xlen(keys.examples_stream) == 4 + kill
        add(f"late-{kill}", games(1, seed=10 + kill)[0])
    store.drain(Dataset(root))
    ds = Dataset(root)
    on_disk = Counter(k for c in ds.chunks() for k in row_keys(ds.read_chunk(c)))
    assert on_disk == stored  # every example once: none lost, none doubled
    assert r.xlen(keys.examples_stream) == 0
    assert store.counters()["pending"] == 0


def test_many_small_drains_are_compacted(r: redis.Redis, keys: Keys, tmp_path: Path) -> None:
    store = ExampleStore(r, keys, settle_ms=0)
    repo = ModelRepository(tmp_path, "flagz")
    repo.ensure_initial(_tiny_params())
    ds = Dataset(repo.examples_store_dir, compact_below=1000)
    g = games(6, seed=4)
    for i, x in enumerate(g):
        store.add_game(str(i), x)
        store.drain(ds, repo)
    assert len(ds.chunks()) < 6
    assert ds.count() == rows(g)
    w = ds.window(10**6)
    assert len(w) == ds.count()
    np.testing.assert_array_equal(
        w.batch(np.arange(len(w))).results, np.concatenate([x["result"] for x in g])
    )


def test_drain_leaves_entries_younger_than_the_settle_time(
    r: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    g = games(1)[0]
    ExampleStore(r, keys).add_game("fresh", g)
    ds = Dataset(tmp_path / "ds")
    assert ExampleStore(r, keys, settle_ms=60_000).drain(ds) == 0  # not yet in the AOF
    assert r.xlen(keys.examples_stream) == 1
    assert ExampleStore(r, keys, settle_ms=0).drain(ds) == codec.num_rows(g)
