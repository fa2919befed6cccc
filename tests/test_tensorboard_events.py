"""TensorBoard events of the trainer and the evaluation, read back with TensorBoard's own
reader (EventAccumulator)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
import redis
import torch
from synthetic import game_columns
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from hexz_tasks.arena import store_game
from hexz_tasks.keys import Keys
from hexz_tasks.launcher import startup_message
from hexz_tasks.rates import record_game
from hexz_tasks.ratings import baselines, rating_curve
from hexz_tasks.repository import ModelRepository
from hexz_tasks.settings import Settings
from hexz_tasks.store import ExampleStore
from hexz_tasks.tensorboard_events import (
    ELO_TAGS,
    EVALUATION,
    STAGING,
    TRAINER,
    log_dir,
    log_evaluation,
    log_training,
    stored_per_second,
)
from hexz_tasks.training import train_once

STEP_TAGS = ["loss_per_step/policy", "loss_per_step/value", "loss_per_step/total", "learning_rate"]
EPOCH_TAGS = ["loss_per_epoch/policy", "loss_per_epoch/value", "loss_per_epoch/total"]
RUN_TAGS = [f"training/{n}" for n in ("samples_per_s", "examples_window", "train_s", "load_s")]
PIPELINE_TAGS = [
    f"pipeline/{n}"
    for n in (
        "examples_per_s",
        "games_per_s",
        "examples_total",
        "selfplay_processes",
        "selfplay_games_in_flight",
        "selfplay_moves_per_s",
        "selfplay_occupancy",
    )
]


def read(path: Path) -> EventAccumulator:
    events = EventAccumulator(str(path))
    events.Reload()
    return events


def values(events: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in events.Scalars(tag)]


@pytest.fixture(autouse=True)
def one_thread() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _add_games(store: ExampleStore, n: int, seed: int) -> int:
    games = game_columns(n, seed, runs=40, max_moves=60)
    return sum(store.add_game(f"{seed}-{i}", g) for i, g in enumerate(games))


def test_training_runs_write_the_trainer_curves(
    tmp_path: Path, redis_client: redis.Redis, test_keys: Keys
) -> None:
    r, keys = redis_client, test_keys
    settings = Settings(
        data_dir=tmp_path, model_blocks=1, model_filters=8, batch_size=64, num_epochs=2,
        training_trigger_threshold=200, lr_schedule="0:0.01,3:0.002",
    )  # fmt: skip
    store = ExampleStore(r, keys, settle_ms=0)
    repo = ModelRepository(settings.repo_base_dir, settings.model_name)
    # Self-play as the trainer sees it: 300 examples and 4 games in each of the last
    # minutes, and the progress entries of 2 self-play processes (selfplay_worker).
    now = time.time()
    for minute in (now - 60, now):
        for _ in range(4):
            record_game(r, keys, 75, now=minute)
    for name, occupancy in (("a", 1.0), ("b", 0.5)):
        entry = {"games_in_flight": 16, "moves_per_s": 3.0, "occupancy": occupancy}
        r.hset(keys.selfplay_progress, name, json.dumps({**entry, "updated": now + 120}))

    _add_games(store, 4, seed=1)
    first = train_once(settings, store, repo)
    _add_games(store, 4, seed=2)
    second = train_once(settings, store, repo)
    assert first is not None and second is not None

    events = read(log_dir(settings) / TRAINER)
    assert set(STEP_TAGS + EPOCH_TAGS + RUN_TAGS + PIPELINE_TAGS) <= set(events.Tags()["scalars"])
    # Every optimiser step of both runs, numbered on across them.
    steps = second["optimizer_step"]
    assert steps == first["batches"] + second["batches"]
    total = values(events, "loss_per_step/total")
    assert [s for s, _ in total] == list(range(1, steps + 1))
    policy, value = (values(events, f"loss_per_step/{n}") for n in ("policy", "value"))
    for (_, t), (_, p), (_, v) in zip(total, policy, value, strict=True):
        assert p > 0 and v >= 0 and t == pytest.approx(p + v, rel=1e-5)
    lrs = values(events, "learning_rate")
    assert lrs[:3] == [(1, pytest.approx(0.01)), (2, pytest.approx(0.01)), (3, pytest.approx(0.01))]
    assert lrs[3:] == [(s, pytest.approx(0.002)) for s in range(4, steps + 1)]
    epochs = values(events, "loss_per_epoch/total")
    recorded = first["losses"] + second["losses"]
    assert [s for s, _ in epochs] == [e["step"] for e in recorded]
    assert [v for _, v in epochs] == pytest.approx([e["loss"] for e in recorded], rel=1e-5)
    assert epochs[-1][0] == steps
    # Per checkpoint.
    window = values(events, "training/examples_window")
    assert window == [(1, first["examples_window"]), (2, second["examples_window"])]
    speed = values(events, "training/samples_per_s")
    assert [v for _, v in speed] == pytest.approx([first["samples_per_s"], second["samples_per_s"]])
    examples, games = (values(events, f"pipeline/{n}") for n in ("examples_per_s", "games_per_s"))
    assert [s for s, _ in examples] == [s for s, _ in games] == [1, 2]
    # 300 examples in 4 games in each minute; the running one's so far (stored_per_second).
    for (_, e), (_, g) in zip(examples, games, strict=True):
        assert 0 < e <= 10 and g == pytest.approx(e * 4 / 300)
    assert values(events, "pipeline/examples_total")[-1] == (2, store.total_examples())
    assert values(events, "pipeline/selfplay_occupancy") == [(1, 0.75), (2, 0.75)]
    assert values(events, "pipeline/selfplay_games_in_flight") == [(1, 32), (2, 32)]
    assert values(events, "pipeline/selfplay_moves_per_s") == [(1, 6.0), (2, 6.0)]
    # `hexz run` tells where they are.
    assert f"tensorboard --logdir {log_dir(settings).resolve()}" in startup_message(settings)


def test_stored_per_second_counts_overlapping_minutes_in_proportion(
    redis_client: redis.Redis, test_keys: Keys
) -> None:
    m = 29_000_000  # a minute since the epoch
    for minute, n in ((m - 3, 9000), (m - 2, 600), (m - 1, 600), (m, 300)):
        redis_client.hset(test_keys.rates, f"{minute}:examples", n)
        redis_client.hset(test_keys.rates, f"{minute}:games", n // 100)
    now = m * 60 + 30  # minute m is half over: its 300 examples came in 30 s
    # The last 30 s of minute m-2 (300), all of m-1 (600), m so far (300): 1200 in 120 s.
    rates = stored_per_second(redis_client, test_keys, now - 120, now)
    assert rates == {"examples_per_s": 10.0, "games_per_s": pytest.approx(0.1)}
    assert stored_per_second(redis_client, test_keys, now - 10, now)["examples_per_s"] == 10.0
    assert stored_per_second(redis_client, test_keys, now - 210, now - 150) == {
        "examples_per_s": 150.0,  # all of minute m-3
        "games_per_s": 1.5,
    }


def _game(match: str, i: int, a: str, b: str, a_points: float) -> dict:
    return {"match": match, "game": i, "a": a, "b": b, "a_points": a_points}


def _store_match(r: redis.Redis, keys: Keys, a: str, b: str, wins: int, games: int) -> None:
    match = f"{a}-{b}-{r.hlen(keys.arena_games)}"
    for i in range(games):
        store_game(r, keys, _game(match, i, a, b, 1.0 if i < wins else 0.0))


def test_the_evaluation_rewrites_ratings_with_intervals_and_metrics(
    tmp_path: Path, redis_client: redis.Redis, test_keys: Keys
) -> None:
    r, keys = redis_client, test_keys
    settings = Settings(data_dir=tmp_path, model_name="m")
    for n in range(4):
        metrics = {"policy_ce": 3.0 - n / 10, "value_mse": 1.0 - n / 20, "value_sign_acc": 0.5}
        r.hset(keys.checkpoint_metrics, str(n), json.dumps(metrics))
    for n in (1, 2, 3):
        _store_match(r, keys, f"m:{n}", "m:0", wins=4 + n, games=10)
    _store_match(r, keys, "m:3", "mcts", wins=6, games=10)
    log_evaluation(settings, r, keys)
    before = rating_curve(settings, r, keys)
    _store_match(r, keys, "m:3", "mcts", wins=10, games=10)  # checkpoint 3 rises
    log_evaluation(settings, r, keys)
    after = rating_curve(settings, r, keys)
    assert after[3]["rating"] > before[3]["rating"]

    events = read(log_dir(settings) / EVALUATION)
    tags = events.Tags()
    assert "custom_scalars__config__" in tags["tensors"]  # the Elo margin chart
    heldout = [f"heldout/{m}" for m in ("policy_ce", "value_mse", "value_sign_acc")]
    assert {*ELO_TAGS, *heldout, "baseline/mcts"} <= set(tags["scalars"])
    # Each snapshot writes the whole curve in step order; the newest one is the current.
    for tag, key in zip(ELO_TAGS, ("rating", "low", "high"), strict=True):
        written = values(events, tag)
        assert [s for s, _ in written] == [0, 1, 2, 3] * 2
        assert [v for _, v in written[:4]] == pytest.approx([e[key] for e in before], abs=0.01)
        assert [v for _, v in written[4:]] == pytest.approx([e[key] for e in after], abs=0.01)
    low, high = (values(events, t)[4:] for t in ELO_TAGS[1:])
    assert all(lo[1] < hi[1] for lo, hi in zip(low[1:], high[1:], strict=True))
    assert values(events, "heldout/policy_ce")[4:] == [
        (n, pytest.approx(3.0 - n / 10)) for n in range(4)
    ]
    (mcts,) = baselines(settings, r, keys)
    assert values(events, "baseline/mcts")[-1] == (3, pytest.approx(mcts.elo, abs=0.01))


def test_files_written_within_one_second_are_read_in_order(tmp_path: Path) -> None:
    """SummaryWriter's own names would put a process's 10th file before its 9th."""
    settings = Settings(data_dir=tmp_path)
    for step in range(1, 13):
        stats = _run_stats(step)
        log_training(settings, stats, [(1.0 / step, 0.5)], [0.001])
    events = read(log_dir(settings) / TRAINER)
    assert [s for s, _ in values(events, "loss_per_step/policy")] == list(range(1, 13))
    assert len(list((log_dir(settings) / TRAINER).iterdir())) == 12
    assert list((tmp_path / STAGING).iterdir()) == []  # nothing left half-written


def _run_stats(step: int) -> dict:
    return {
        "checkpoint": step,
        "optimizer_step": step,
        "losses": [{"epoch": 0, "step": step, "policy": 1.0, "value": 0.5, "loss": 1.5}],
        **dict.fromkeys(("samples_per_s", "examples_window", "train_s", "load_s", "duration_s"), 1),
    }


def test_an_unwritable_log_folder_never_fails_a_training(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "file").write_text("not a folder")
    settings = Settings(data_dir=tmp_path / "file")
    with caplog.at_level(logging.WARNING, logger="hexz_tasks.tensorboard_events"):
        log_training(settings, _run_stats(1), [(1.0, 0.5)], [0.001])
    assert "no TensorBoard events" in caplog.text
