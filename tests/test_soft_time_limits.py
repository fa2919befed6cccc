"""The soft time limit path of every task, in real worker processes (the training task's
is in test_training_budget.py): each task is sent with a short per-call soft limit, gets
SoftTimeLimitExceeded mid-work, fails cleanly (the pool process lives on, nothing is
left claimed or registered as running), and what it was doing is done whole, once, by
the next task."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import torch
from celery.exceptions import SoftTimeLimitExceeded
from conftest import TEST_PREFIX, Proc, Procs, RedisServer, tiny_env, wait_for

from hexz_tasks import inference
from hexz_tasks.arena import stored_games as arena_games
from hexz_tasks.arena import stored_matches
from hexz_tasks.celery import make_app
from hexz_tasks.evaluation import heldout_set, match_id, record_metrics
from hexz_tasks.examples import PYTORCH, decode_array, torch_bytes
from hexz_tasks.keys import Keys
from hexz_tasks.model import ModelParams, make_model
from hexz_tasks.queues import ARENA_TASK, EVAL_QUEUE, EVALUATE_TASK, SELFPLAY_QUEUE, SELFPLAY_TASK
from hexz_tasks.repository import ModelRepository
from hexz_tasks.settings import Settings
from hexz_tasks.training_tick import restore_trainer_state
from hexz_tasks.worker_registry import live_progress

pytestmark = pytest.mark.slow

KEYS = Keys(TEST_PREFIX)


def setup(
    redis_server: RedisServer, tmp_path: Path, **overrides: Any
) -> tuple[dict[str, str], Settings, redis.Redis, ModelRepository]:
    env = tiny_env(redis_server.url, tmp_path / "data", **overrides)
    settings = Settings.from_env({k: v for k, v in env.items() if k.startswith("HEXZ_")})
    r = redis_server.client()
    repo = ModelRepository(settings.repo_base_dir, settings.model_name)
    restore_trainer_state(settings, r, KEYS, repo)
    return env, settings, r, repo


def cut_short(
    app: Any, worker: Proc, task: str, args: list, task_id: str, soft_limit_s: float = 2
) -> None:
    """Sends `task` with a short soft limit (per call: far below the configured limits);
    waits until the worker reports it ended by it (from its log: self-play slices store no
    result)."""
    app.send_task(task, args=args, task_id=task_id, soft_time_limit=soft_limit_s, time_limit=30)
    wait_for(
        lambda: f"[{task_id}] raised unexpected: SoftTimeLimitExceeded" in worker.log(),
        90,
        f"{task_id} to hit its soft time limit",
    )


def test_a_selfplay_slice_cut_by_its_soft_limit_keeps_its_games_for_the_next_slice(
    redis_server: RedisServer, tmp_path: Path, procs: Procs
) -> None:
    env, settings, r, _ = setup(
        redis_server, tmp_path, games_in_flight=2, runs_per_move=16, max_moves_per_game=100,
        selfplay_slice_s=20,
    )  # fmt: skip
    worker = procs.worker("selfplay", SELFPLAY_QUEUE, env)
    app = make_app(settings)
    cut_short(app, worker, SELFPLAY_TASK, [20, 0], "cut")
    (process,) = live_progress(r, KEYS).values()
    in_flight = set(range(process["games_started"])) - set(range(process["games_stored"]))
    assert process["games_started"] > process["games_finished"]  # games were cut off
    assert not r.hexists(KEYS.selfplay_running, "cut")
    assert not r.exists(KEYS.task_attempts("cut"))  # acknowledged: no redelivery to come

    app.send_task(SELFPLAY_TASK, args=[10, 0], task_id="next")
    wait_for(lambda: "selfplay[next] succeeded" in worker.log(), 90, "the next slice")
    (after,) = live_progress(r, KEYS).items()  # the same process: it survived the limit
    pid, entry = after
    assert entry["pid"] == process["pid"] and entry["games_stored"] > process["games_stored"]
    ids = [f[b"id"].decode() for _, f in r.xrange(KEYS.examples_stream)]
    assert len(ids) == len(set(ids))  # none twice
    indices = {int(i.rpartition(":")[2]) for i in ids}
    assert all(i.startswith(f"game:{pid}:") for i in ids)
    # A game that was in flight when the limit struck was finished and stored later.
    assert in_flight & indices
    app.close()


def two_checkpoints(settings: Settings, r: redis.Redis, repo: ModelRepository) -> None:
    """Checkpoint 1 next to 0, published, with both offline metrics recorded (so that an
    evaluation tick goes straight to its first match, 1 against 0)."""
    params = repo.load_params(0)
    repo.save(1, make_model(params), params)
    repo.publish(r, KEYS, 1)
    heldout = heldout_set(settings)
    for n in (0, 1):
        record_metrics(settings, r, KEYS, n, heldout)


def test_an_evaluation_tick_cut_by_its_soft_limit_releases_its_match_and_a_later_tick_plays_it(
    redis_server: RedisServer, tmp_path: Path, procs: Procs
) -> None:
    env, settings, r, repo = setup(
        redis_server, tmp_path, arena_games=24, arena_runs_per_move=160, arena_baselines=""
    )  # a match of ~10x the 2 s soft limit on a fast machine
    two_checkpoints(settings, r, repo)
    worker = procs.worker("eval", EVAL_QUEUE, env)
    app = make_app(settings)
    mid = match_id(settings, 1, "0")
    cut_short(app, worker, EVALUATE_TASK, [], "cut")
    assert not r.exists(KEYS.arena_claim(mid))  # released: not blocked for the claim's TTL
    assert mid not in stored_matches(r, KEYS)
    partial = len([g for g in arena_games(r, KEYS) if g["match"] == mid])
    assert partial < settings.arena_games

    outcome = app.send_task(EVALUATE_TASK, task_id="next").get(timeout=300)
    assert outcome["match"]["match"] == mid
    games = [g for g in arena_games(r, KEYS) if g["match"] == mid]
    assert len(games) == settings.arena_games  # replayed whole: the cut games overwritten
    assert json.loads(r.hget(KEYS.arena_matches, mid))["games"] == settings.arena_games
    app.close()


def test_an_arena_match_cut_by_its_soft_limit_keeps_the_games_it_finished(
    redis_server: RedisServer, tmp_path: Path, procs: Procs
) -> None:
    env, settings, r, _ = setup(redis_server, tmp_path)
    worker = procs.worker("eval", EVAL_QUEUE, env)
    app = make_app(settings)
    cut_short(app, worker, ARENA_TASK, ["mcts:200", "mcts:200", 40, 200, 5], "cut")
    # Its finished games stay (each is a valid game for the ratings); no summary claims
    # a whole match.
    assert len([g for g in arena_games(r, KEYS) if g["match"] == "cut"]) < 40
    assert "cut" not in stored_matches(r, KEYS)
    # The pool process lives on: the next match runs.
    summary = app.send_task(ARENA_TASK, args=["mcts:4", "random", 2, 4, 1]).get(timeout=90)
    assert summary["games"] == 2
    app.close()


def test_a_soft_limit_on_a_fresh_pool_process_first_task_does_not_break_the_process(
    redis_server: RedisServer, tmp_path: Path, procs: Procs
) -> None:
    """The limit strikes well inside the time `import torch` takes (1-2 s warm, more on a
    cold disk): the pool process must have imported the tasks' modules before its first
    task, or the cut import leaves torch half-initialised and every later task fails."""
    env, settings, _, _ = setup(redis_server, tmp_path)
    worker = procs.worker("eval", EVAL_QUEUE, env)
    app = make_app(settings)
    cut_short(app, worker, ARENA_TASK, ["mcts:200", "mcts:200", 40, 200, 5], "cut", 0.2)
    summary = app.send_task(ARENA_TASK, args=["mcts:4", "random", 2, 4, 1]).get(timeout=90)
    assert summary["games"] == 2
    app.close()


def _cut(*_: Any, **__: Any) -> Any:
    raise SoftTimeLimitExceeded()


def test_a_soft_limit_inside_a_load_is_not_reported_as_a_bad_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where a load catches every error to name the bad file, the limit still passes
    through: a cut task must fail as cut, not as a corrupt checkpoint, bad example bytes
    or a missing ONNX Runtime (the last one played a whole match past its limit)."""
    repo = ModelRepository(tmp_path, "m")
    repo.ensure_initial(ModelParams("conv2d", 1, 8))
    net = repo.load_model(0)
    monkeypatch.setattr(torch, "load", _cut)
    with pytest.raises(SoftTimeLimitExceeded):
        repo.load_model(0)
    (repo.checkpoint_dir(0) / "optimizer.pt").write_bytes(b"x")
    with pytest.raises(SoftTimeLimitExceeded):
        repo.load_optimizer_state(0)
    with pytest.raises(SoftTimeLimitExceeded):
        decode_array(torch_bytes(np.zeros(3, np.float32)), PYTORCH, "board")
    monkeypatch.setattr(inference, "_onnx_forward", _cut)
    with pytest.raises(SoftTimeLimitExceeded):
        inference.Evaluator(net, mode="onnx")
