"""train_once: trigger, both modes, loss going down, exact continuation from a checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import redis
import torch
import torch.nn.functional as F
from conftest import wait_for_examples_to_settle
from synthetic import game_columns

from hexz_tasks import codec
from hexz_tasks.dataset import Dataset
from hexz_tasks.keys import Keys
from hexz_tasks.repository import ModelRepository
from hexz_tasks.settings import Settings
from hexz_tasks.store import ExampleStore
from hexz_tasks.training import learning_rate, train_once


@pytest.fixture(autouse=True)
def one_thread() -> None:
    """Tiny models train fastest on one thread (and the suite shares 2 cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def store(redis_client: redis.Redis, test_keys: Keys) -> ExampleStore:
    return ExampleStore(redis_client, test_keys, settle_ms=0)


def _settings(tmp_path: Path, **kw) -> Settings:
    base = dict(
        data_dir=tmp_path,
        model_blocks=1,
        model_filters=16,
        batch_size=64,
        num_epochs=2,
        learning_rate=3e-3,
        training_trigger_threshold=200,
    )
    return Settings(**{**base, **kw})


def _add_games(store: ExampleStore, n: int, seed: int) -> int:
    games = game_columns(n, seed, runs=40, max_moves=60)
    return sum(store.add_game(f"{seed}-{i}", g) for i, g in enumerate(games))


def _loss(model: torch.nn.Module, ds: Dataset) -> float:
    """Mean training loss over the whole dataset."""
    w = ds.window(10**6)
    b = w.batch(np.arange(len(w)))
    model.train()
    with torch.no_grad():
        logits, value = model(torch.from_numpy(b.boards), torch.from_numpy(b.masks))
        policy = -(torch.from_numpy(b.move_probs) * F.log_softmax(logits, 1)).sum(1).mean()
        return float(policy + F.mse_loss(value.squeeze(1), torch.from_numpy(b.results)))


def test_below_threshold_returns_none_without_touching_anything(
    tmp_path: Path, store: ExampleStore
) -> None:
    s = _settings(tmp_path, training_trigger_threshold=10_000)
    repo = ModelRepository(s.repo_base_dir, s.model_name)
    n = _add_games(store, 2, seed=0)
    assert train_once(s, store, repo) is None
    assert repo.checkpoints() == [0]
    assert store.counters()["pending"] == n  # not drained


def test_window_training_reduces_the_loss(tmp_path: Path, store: ExampleStore) -> None:
    s = _settings(tmp_path, num_epochs=4)
    repo = ModelRepository(s.repo_base_dir, s.model_name)
    n = _add_games(store, 8, seed=1)
    stats = train_once(s, store, repo)
    assert stats is not None
    assert repo.checkpoints() == [0, 1]
    assert stats["checkpoint"] == 1 and stats["examples_window"] == n == stats["examples_total"]
    assert stats["epochs"] == 4 and len(stats["losses"]) == 4
    assert stats["batches"] == 4 * -(-n // 64)
    assert stats["samples"] == 4 * n
    ds = Dataset(repo.examples_store_dir)
    assert _loss(repo.load_model(1), ds) < _loss(repo.load_model(0), ds)
    assert stats["losses"][-1]["loss"] < stats["losses"][0]["loss"]
    assert json.loads((repo.checkpoint_dir(1) / "stats.json").read_text()) == stats
    assert store.examples_since_training() == 0
    assert train_once(s, store, repo) is None  # nothing new since


def test_window_is_the_newest_examples(tmp_path: Path, store: ExampleStore) -> None:
    s = _settings(tmp_path, training_examples_window_size=100, num_epochs=1)
    repo = ModelRepository(s.repo_base_dir, s.model_name)
    _add_games(store, 5, seed=2)
    stats = train_once(s, store, repo)
    assert stats["examples_window"] == 100
    assert stats["batches"] == 2


def test_restart_continues_exactly(tmp_path: Path, store: ExampleStore) -> None:
    s = _settings(tmp_path / "a")
    repo = ModelRepository(s.repo_base_dir, s.model_name)
    _add_games(store, 4, seed=3)
    first = train_once(s, store, repo)
    _add_games(store, 4, seed=4)
    store.drain(Dataset(repo.examples_store_dir), repo)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.copytree(tmp_path / "a", tmp_path / "c")
    results = {}
    for name in "abc":
        sn = s.replace(data_dir=tmp_path / name)
        rn = ModelRepository(sn.repo_base_dir, sn.model_name)
        if name == "c":  # without the optimiser state the result differs
            (rn.checkpoint_dir(1) / "optimizer.pt").unlink()
        stats = train_once(sn, store, rn)
        assert stats is not None and stats["checkpoint"] == 2
        results[name] = (rn.load_model(2).state_dict(), rn.load_optimizer_state(2))
    (wa, oa), (wb, ob), (wc, _) = results["a"], results["b"], results["c"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0)
    assert oa["step"] == ob["step"] == first["batches"] + stats["batches"]
    for pid, st in oa["state"]["state"].items():
        for k, v in st.items():
            torch.testing.assert_close(v, ob["state"]["state"][pid][k], rtol=0, atol=0)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa if wa[k].is_floating_point())


def test_replay_mode_one_step_of_sampled_batches(tmp_path: Path, store: ExampleStore) -> None:
    s = _settings(
        tmp_path, training_mode="replay", replay_buffer_size=256, replay_buffer_reuse=2
    )  # a step every 128 new examples, 256 / 64 = 4 batches
    repo = ModelRepository(s.repo_base_dir, s.model_name)
    g = codec.concat(game_columns(3, seed=5, runs=40, max_moves=100))
    store.add_game("small", codec.take_rows(g, np.arange(100)))
    assert train_once(s, store, repo) is None  # 100 < 128
    _add_games(store, 5, seed=6)
    stats = train_once(s, store, repo)
    assert stats["mode"] == "replay" and stats["steps"] == 1
    assert stats["batches"] == 4 and stats["samples"] == 256
    assert stats["examples_window"] == 256
    assert len(stats["losses"]) == 1
    assert repo.load_optimizer_state(1)["step"] == 4


def test_sgd_with_step_down_schedule(tmp_path: Path, store: ExampleStore) -> None:
    s = _settings(
        tmp_path, optimizer="sgd", learning_rate=0.1, lr_schedule="0:0.05,3:0.005", num_epochs=1
    )
    assert [learning_rate(s, i) for i in (0, 2, 3, 100)] == [0.05, 0.05, 0.005, 0.005]
    repo = ModelRepository(s.repo_base_dir, s.model_name)
    _add_games(store, 4, seed=7)
    stats = train_once(s, store, repo)
    assert stats["optimizer"] == "sgd" and stats["learning_rate"] == 0.005
    state = repo.load_optimizer_state(1)
    assert state["optimizer"] == "sgd"
    assert all("momentum_buffer" in v for v in state["state"]["state"].values())


def test_the_training_tick_publishes_records_and_announces(
    tmp_path: Path, store: ExampleStore
) -> None:
    from hexz_tasks.training_tick import run_training_tick

    s = _settings(tmp_path, num_epochs=1, key_prefix=store.keys.prefix)
    repo = ModelRepository(s.repo_base_dir, s.model_name)
    r, keys = store.redis, store.keys
    sub = r.pubsub()
    sub.subscribe(keys.events_channel)
    sub.get_message(timeout=1)
    _add_games(store, 4, seed=8)
    wait_for_examples_to_settle()
    assert run_training_tick(s, r, keys) == {"trained": True, "checkpoint": 1}
    assert json.loads(r.get(keys.latest_model)) == {"name": s.model_name, "checkpoint": 1}
    assert r.get(keys.model_bytes(s.model_name, 1)) == repo.scriptmodule_bytes(1)
    assert json.loads(r.lindex(keys.training_runs, -1))["checkpoint"] == 1
    events = [json.loads(sub.get_message(timeout=2)["data"]) for _ in range(2)]
    assert events == [
        {"event": "training_started", "checkpoint": 0},
        {"event": "training_done", "checkpoint": 1},
    ]
    sub.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_channels_last_pinned(tmp_path: Path, store: ExampleStore) -> None:
    s = _settings(tmp_path, device="cuda", pin_memory=True, num_epochs=3)
    repo = ModelRepository(s.repo_base_dir, s.model_name)
    _add_games(store, 6, seed=9)
    stats = train_once(s, store, repo)
    assert stats["device"] == "cuda" and stats["losses"][-1]["loss"] < stats["losses"][0]["loss"]
    state = torch.load(repo.checkpoint_dir(1) / "model.pt", weights_only=True)
    assert all(t.device.type == "cpu" and t.is_contiguous() for t in state.values())
    s2 = s.replace(device="cpu")
    _add_games(store, 2, seed=10)
    assert train_once(s2, store, repo)["checkpoint"] == 2  # a CUDA checkpoint resumes on CPU
