"""Disk retention: the policy, `hexz gc`, automatic collection after a training and the
disk use in `hexz status`, on a real repository, dataset and Redis."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import redis
import torch
from conftest import REPO_ROOT, RedisServer, free_port, tiny_env, wait_for_examples_to_settle
from synthetic import game_columns

from hexz_tasks import codec
from hexz_tasks.dataset import Dataset
from hexz_tasks.keys import Keys
from hexz_tasks.model import ModelParams, make_model
from hexz_tasks.repository import ModelRepository
from hexz_tasks.retention import collect_garbage, disk_usage, keeps
from hexz_tasks.settings import Settings
from hexz_tasks.store import ExampleStore
from hexz_tasks.training import train_once

PARAMS = ModelParams("conv2d", 1, 8)
KEYS = Keys("hexzgctest")


def _settings(tmp_path: Path, **kw: object) -> Settings:
    return Settings.from_env(
        {},
        data_dir=tmp_path / "data",
        key_prefix=KEYS.prefix,
        model_blocks=1,
        model_filters=8,
        batch_size=16,
        num_epochs=1,
        training_trigger_threshold=50,
        **kw,
    )


def _checkpoints(repo: ModelRepository, n: int) -> None:
    """Checkpoints 0..n-1 (copies of a real checkpoint 0), each with an archive file."""
    repo.save(0, make_model(PARAMS), PARAMS, stats={"examples_total": 0})
    for k in range(n):
        if k:
            shutil.copytree(repo.checkpoint_dir(0), repo.checkpoint_dir(k))
        archive = repo.checkpoint_dir(k) / "examples" / "20250101-000000.000000.gz"
        archive.parent.mkdir(exist_ok=True)
        archive.write_bytes(b"x" * 1000)


def _chunks(dataset: Dataset, sizes: list[int], archived: int) -> None:
    """Chunks of the given sizes; the first `archived` of them marked as archived."""
    games = 1
    while codec.num_rows(cols := codec.concat(game_columns(games, runs=10))) < max(sizes):
        games *= 2
    for i, n in enumerate(sizes):
        chunk = dataset.append(codec.take_rows(cols, np.arange(n)), f"{i + 1}-0")
        if i < archived:
            dataset.mark_archived(chunk)


def test_the_rule_keeps_the_newest_every_kth_and_those_in_use(tmp_path: Path) -> None:
    s = _settings(tmp_path, keep_last_checkpoints=5, keep_every_checkpoint=10)
    on_disk = list(range(51))
    kept = {n for n in on_disk if keeps(s, on_disk, {0, 23}, n)}
    assert kept == {0, 10, 20, 23, 30, 40, 46, 47, 48, 49, 50}
    s0 = s.replace(keep_every_checkpoint=0)
    assert {n for n in on_disk if keeps(s0, on_disk, {0, 23}, n)} == {0, 23, 46, 47, 48, 49, 50}


def test_collect_garbage_never_deletes_what_is_in_use(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    s = _settings(tmp_path, keep_last_checkpoints=5, keep_every_checkpoint=10, keep_examples=250)
    repo = ModelRepository(s.repo_base_dir, s.model_name)
    _checkpoints(repo, 31)
    other = repo.model_dir / "examples-other"
    for name in ("flagz-5", "flagz-7", "flagz-40", "othermodel-3"):
        (other / name / "examples").mkdir(parents=True)
        (other / name / "examples" / "a.gz").write_bytes(b"y" * 100)
    dataset = Dataset(repo.examples_store_dir)
    _chunks(dataset, [100] * 6, archived=5)
    r = redis_client
    # Self-play's published model is old (12); the gate promoted 7; the evaluation has
    # played checkpoint 17 and is playing 25 against 3 right now.
    r.set(KEYS.latest_model, json.dumps({"name": "flagz", "checkpoint": 12}))
    r.set(KEYS.promoted_model, json.dumps({"name": "flagz", "checkpoint": 7}))
    r.hset(KEYS.arena_matches, "eval:flagz:17:0@100", "{}")
    r.set(KEYS.arena_claim("eval:flagz:25:3@100"), 1)
    before = disk_usage(s)

    done = collect_garbage(s, repo, dataset, r, KEYS)

    kept = {0, 3, 7, 10, 12, 17, 20, 25, 26, 27, 28, 29, 30}
    assert repo.checkpoints() == sorted(kept)
    assert sorted(done.checkpoints) == sorted(set(range(31)) - kept)
    assert sorted(p.name for p in other.iterdir()) == ["flagz-40", "flagz-7", "othermodel-3"]
    assert done.other_archives == ["flagz-5"]
    assert [c.count for c in dataset.chunks()] == [100] * 3 and done.chunks == 3
    assert dataset.last_stream_id() == "6-0"
    leftovers = [p for p in repo.checkpoints_dir.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    after = disk_usage(s)
    assert after["checkpoints"] == len(kept) < before["checkpoints"]
    assert after["checkpoint_bytes"] < before["checkpoint_bytes"]
    assert before["archive_bytes"] - after["archive_bytes"] == 18 * 1000 + 100
    sizes = ("checkpoint_bytes", "archive_bytes", "chunk_bytes")
    assert done.bytes == sum(before[k] - after[k] for k in sizes)


def test_chunks_not_yet_archived_are_kept(redis_client: redis.Redis, tmp_path: Path) -> None:
    s = _settings(tmp_path, keep_examples=1)
    repo = ModelRepository(s.repo_base_dir, s.model_name)
    dataset = Dataset(repo.examples_store_dir)
    _chunks(dataset, [50] * 5, archived=2)
    done = collect_garbage(s, repo, dataset, redis_client, KEYS)
    assert done.chunks == 2 and len(dataset.chunks()) == 3


def test_retention_runs_after_each_training(redis_client: redis.Redis, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    s = _settings(tmp_path, keep_last_checkpoints=2, keep_every_checkpoint=0)
    repo = ModelRepository(s.repo_base_dir, s.model_name)
    _checkpoints(repo, 4)
    store = ExampleStore(redis_client, KEYS, settle_ms=0)
    for i, cols in enumerate(game_columns(3, seed=1, runs=10, max_moves=60)):
        store.add_game(f"g{i}", cols)
    wait_for_examples_to_settle()
    assert train_once(s, store, repo) is not None
    assert repo.checkpoints() == [0, 3, 4]  # the anchor and the newest two


def test_hexz_gc_and_hexz_status(redis_server: RedisServer, tmp_path: Path) -> None:
    env = tiny_env(redis_server.url, tmp_path / "data", keep_last_checkpoints=3)
    env["HEXZ_KEEP_EVERY_CHECKPOINT"] = "0"
    repo = ModelRepository(tmp_path / "data", "flagz")
    _checkpoints(repo, 8)
    hexz = [sys.executable, "-m", "hexz_tasks.cli"]
    status = subprocess.run(
        [*hexz, "status"], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert "disk:" in status.stdout and "in 8 checkpoint(s)" in status.stdout, status.stdout
    gc = subprocess.run(
        [*hexz, "gc"], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert gc.returncode == 0, gc.stderr
    assert gc.stdout.startswith("deleted 4 checkpoint(s) (1..4)"), gc.stdout
    assert repo.checkpoints() == [0, 5, 6, 7]
    # Without Redis nobody can tell which checkpoints are in use: nothing is deleted.
    env["HEXZ_REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    env["HEXZ_KEEP_LAST_CHECKPOINTS"] = "1"
    gc = subprocess.run(
        [*hexz, "gc"], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert gc.returncode == 1 and "nothing was deleted" in gc.stderr
    assert repo.checkpoints() == [0, 5, 6, 7]
