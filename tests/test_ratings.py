"""Ratings (Bradley-Terry with intervals), offline metrics, the automatic evaluation tick,
promotion gating and `hexz ratings`, against a real Redis and real checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import redis
from conftest import REPO_ROOT, TEST_PREFIX, RedisServer, tiny_env

from hexz_tasks import hexz_pb2
from hexz_tasks.arena import store_game, stored_matches
from hexz_tasks.evaluation import (
    make_heldout,
    match_id,
    offline_metrics,
    planned_matches,
    run_evaluation_tick,
    should_promote,
)
from hexz_tasks.keys import Keys
from hexz_tasks.model import ModelParams, make_model
from hexz_tasks.model_source import (
    CurrentModel,
    checkpoint_bytes,
    chosen_checkpoint,
    promote,
    promoted_checkpoint,
)
from hexz_tasks.ratings import fit_bradley_terry, fit_stored, rating_curve, status_ratings
from hexz_tasks.repository import ModelRepository
from hexz_tasks.server.state import ServerState
from hexz_tasks.settings import Settings

KEYS = Keys(TEST_PREFIX)


def synthetic_games(strengths: dict[str, float], per_pair: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    names = sorted(strengths)
    games = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            p = 1.0 / (1.0 + 10 ** ((strengths[b] - strengths[a]) / 400))
            # Some draws, with a's expected points still p (a draw is half a win).
            draw = min(0.1, 2 * min(p, 1 - p))
            for _ in range(per_pair):
                u = rng.random()
                games.append((a, b, 0.5 if u < draw else float(u < draw + p - draw / 2)))
    return games


# ------------------------------------------------------------------ Bradley-Terry


def test_bradley_terry_recovers_known_strengths() -> None:
    true = {"c0": 0.0, "c1": 150.0, "c2": 400.0, "mcts": -250.0, "random": -700.0}
    ratings = fit_bradley_terry(synthetic_games(true, 600, seed=1), anchor="c0")
    assert ratings["c0"].elo == 0.0 and ratings["c0"].se == 0.0
    for name, elo in true.items():
        rt = ratings[name]
        assert abs(rt.elo - elo) < 60, (name, rt)
        assert rt.low - 20 <= elo <= rt.high + 20, (name, rt)
        assert rt.games == 600 * 4
    assert ratings["c2"].elo > ratings["c1"].elo > ratings["c0"].elo > ratings["mcts"].elo


def test_interval_coverage_over_repeated_fits() -> None:
    true = {"a": 0.0, "b": 200.0}
    covered = 0
    for seed in range(40):
        rt = fit_bradley_terry(synthetic_games(true, 200, seed=seed), anchor="a")["b"]
        covered += rt.low <= 200.0 <= rt.high
    assert covered >= 34  # nominal 95 %: 38 of 40; 34 leaves room for chance


@pytest.mark.parametrize("p", [0.5, 0.9, 0.97])
@pytest.mark.parametrize("n", [6, 20])
def test_interval_coverage_at_the_extremes_with_few_games(p: float, n: int) -> None:
    """Arena scores near 1 from a few games must not give intervals that exclude the
    truth: the Hessian intervals (with the weak prior) still cover about 95 %."""
    true = 400 * np.log10(p / (1 - p))
    rng = np.random.default_rng([n, int(100 * p)])
    trials = 300
    covered = 0
    for _ in range(trials):
        wins = int(rng.binomial(n, p))
        games = [("a", "b", 1.0)] * wins + [("a", "b", 0.0)] * (n - wins)
        rt = fit_bradley_terry(games, anchor="b")["a"]
        covered += rt.low <= true <= rt.high
    assert covered >= 0.9 * trials  # observed 0.94-1.0 (binomial sd of 300 trials: 1.3 %)


def test_a_clean_sweep_stays_finite_and_the_anchor_defaults_to_the_first_name() -> None:
    ratings = fit_bradley_terry([("x", "y", 1.0)] * 20, anchor="missing")
    assert ratings["x"].elo == 0.0
    assert -3000 < ratings["y"].elo < -400
    assert ratings["y"].se > 0
    with pytest.raises(ValueError, match="points must be in"):
        fit_bradley_terry([("x", "y", 2.0)])
    assert fit_bradley_terry([]) == {}


def test_rating_curve_from_stored_games_and_metrics(redis_client: redis.Redis) -> None:
    s = Settings.from_env({}, model_name="m", key_prefix=TEST_PREFIX)
    true = {"m:0": 0.0, "m:1": 100.0, "m:2": 300.0, "mcts:100": 200.0}
    for k, (a, b, pts) in enumerate(synthetic_games(true, 200, seed=3)):
        store_game(redis_client, KEYS, {"match": "syn", "game": k, "a": a, "b": b, "a_points": pts})
    redis_client.hset(KEYS.checkpoint_metrics, "2", json.dumps({"policy_ce": 3.5}))
    redis_client.hset(KEYS.checkpoint_metrics, "5", json.dumps({"policy_ce": 3.0}))
    curve = rating_curve(s, redis_client, KEYS)
    assert [e["checkpoint"] for e in curve] == [0, 1, 2, 5]
    assert curve[0]["rating"] == 0.0
    assert curve[1]["rating"] < curve[2]["rating"]
    assert abs(curve[2]["rating"] - 300) < 80 and curve[2]["policy_ce"] == 3.5
    assert "rating" not in curve[3] and curve[3]["policy_ce"] == 3.0
    assert status_ratings(s, redis_client, KEYS) == curve
    empty = Settings.from_env({}, model_name="other")
    assert status_ratings(empty, redis_client, Keys("nothing-here")) is None


# ------------------------------------------------------------------ offline metrics


def test_offline_metrics_on_the_heldout_set() -> None:
    heldout = make_heldout(games=2, runs=16, seed=1)
    n = len(heldout["results"])
    assert n > 40 and heldout["move_probs"].shape == (n, 220)
    assert np.allclose(heldout["move_probs"].sum(axis=1), 1.0, atol=1e-5)
    assert set(np.unique(heldout["results"])) <= {-1.0, 0.0, 1.0}
    again = make_heldout(games=2, runs=16, seed=1)
    assert all(np.array_equal(heldout[k], again[k]) for k in heldout)

    seen = [0]

    def perfect(boards: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predicts exactly the targets (offline_metrics evaluates the rows in order)."""
        start, seen[0] = seen[0], seen[0] + len(boards)
        assert np.array_equal(boards, heldout["boards"][start : seen[0]])
        return heldout["move_probs"][start : seen[0]], heldout["results"][start : seen[0]]

    m = offline_metrics(perfect, heldout)
    p = heldout["move_probs"].astype(np.float64)
    entropy = -(p * np.log(np.maximum(p, 1e-12))).sum(axis=1).mean()
    assert m["policy_ce"] == pytest.approx(entropy, rel=1e-6)
    assert m["value_mse"] == 0.0 and m["value_sign_acc"] == 1.0

    def uniform(boards: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flat = masks.reshape(len(masks), -1).astype(np.float32)
        return flat / flat.sum(axis=1, keepdims=True), np.full(len(boards), -0.5, np.float32)

    u = offline_metrics(uniform, heldout)
    assert u["policy_ce"] > m["policy_ce"]
    assert u["value_mse"] == pytest.approx(((heldout["results"] + 0.5) ** 2).mean(), rel=1e-5)


# ------------------------------------------------------------------ evaluation tick


def tiny_settings(tmp_path: Path, **overrides: object) -> Settings:
    return Settings.from_env(
        {},
        data_dir=tmp_path / "data",
        model_name="evalm",
        key_prefix=TEST_PREFIX,
        arena_games=2,
        arena_runs_per_move=4,
        inference_threads=1,
        max_moves_per_game=40,
        **overrides,
    )


def make_checkpoints(s: Settings, n: int) -> ModelRepository:
    repo = ModelRepository(s.repo_base_dir, s.model_name)
    params = ModelParams("conv2d", 1, 8)
    repo.ensure_initial(params)
    for k in range(1, n):
        repo.save(k, make_model(params), params)
    return repo


def test_plan_ties_each_checkpoint_to_the_anchor_baseline_neighbour_and_promoted() -> None:
    assert planned_matches([0], None) == []
    assert planned_matches([0, 1], None) == [(1, "0"), (1, "mcts")]
    assert planned_matches([0, 1, 2, 3], 1) == [
        (3, "0"), (3, "mcts"), (3, "2"), (3, "1"),
        (2, "0"), (2, "mcts"), (2, "1"),
        (1, "0"), (1, "mcts"),
    ]  # fmt: skip
    # 3 is under evaluation: its matches come first. Checkpoint 4 was skipped by the
    # ticks: 5 is chained to 3, the newest that played.
    assert planned_matches([0, 1, 2, 3, 4, 5], None, {1, 3})[:6] == [
        (3, "0"), (3, "mcts"), (3, "1"), (5, "0"), (5, "mcts"), (5, "3"),
    ]  # fmt: skip
    # The baselines of HEXZ_ARENA_BASELINES, in their order (none: checkpoints only).
    assert planned_matches([0, 1, 2], None, baselines=("uct:800", "mcts")) == [
        (2, "0"), (2, "uct:800"), (2, "mcts"), (2, "1"), (1, "0"), (1, "uct:800"), (1, "mcts"),
    ]  # fmt: skip
    assert planned_matches([0, 1], None, baselines=()) == [(1, "0")]


def test_uct_baselines_are_played_and_rated(tmp_path: Path, redis_client: redis.Redis) -> None:
    s = tiny_settings(tmp_path, arena_baselines="uct:20")
    assert s.arena_baseline_labels() == ["uct:20"]
    make_checkpoints(s, 2)
    ticks = [run_evaluation_tick(s, redis_client, KEYS)["match"] for _ in range(3)]
    assert [t["match"] if t else None for t in ticks] == [
        match_id(s, 1, "0"), match_id(s, 1, "uct:20"), None
    ]  # fmt: skip
    ratings, _ = fit_stored(s, redis_client, KEYS)
    assert set(ratings) == {"evalm:0", "evalm:1", "uct:20"}
    assert ratings["uct:20"].games == 2


def test_a_checkpoint_under_evaluation_finishes_before_a_newer_one_starts(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    s = tiny_settings(tmp_path)
    repo = make_checkpoints(s, 2)
    assert run_evaluation_tick(s, redis_client, KEYS)["match"]["match"] == match_id(s, 1, "0")
    params = ModelParams("conv2d", 1, 8)
    repo.save(2, make_model(params), params)  # a new checkpoint between two ticks
    ticks = [run_evaluation_tick(s, redis_client, KEYS)["match"]["match"] for _ in range(3)]
    assert ticks == [match_id(s, 1, "mcts"), match_id(s, 2, "0"), match_id(s, 2, "mcts")]


def test_evaluation_ticks_record_metrics_and_play_each_match_once(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    s = tiny_settings(tmp_path)
    make_checkpoints(s, 2)
    first = run_evaluation_tick(s, redis_client, KEYS)
    assert sorted(first["metrics"]) == [0, 1]
    metrics = {
        int(k): json.loads(v) for k, v in redis_client.hgetall(KEYS.checkpoint_metrics).items()
    }
    assert set(metrics) == {0, 1}
    assert metrics[0]["policy_ce"] > 0 and 0 <= metrics[0]["value_sign_acc"] <= 1
    assert first["match"]["match"] == match_id(s, 1, "0")
    second = run_evaluation_tick(s, redis_client, KEYS)
    assert second["metrics"] == [] and second["match"]["match"] == match_id(s, 1, "mcts")
    third = run_evaluation_tick(s, redis_client, KEYS)
    assert third == {"metrics": [], "match": None}
    matches = stored_matches(redis_client, KEYS)
    assert sorted(matches) == sorted([match_id(s, 1, "0"), match_id(s, 1, "mcts")])
    assert all(m["games"] == 2 for m in matches.values())
    curve = rating_curve(s, redis_client, KEYS)
    assert [e["checkpoint"] for e in curve] == [0, 1] and curve[0]["rating"] == 0.0


def test_a_claimed_match_is_left_to_its_claimant(tmp_path: Path, redis_client: redis.Redis) -> None:
    s = tiny_settings(tmp_path)
    make_checkpoints(s, 2)
    redis_client.set(KEYS.arena_claim(match_id(s, 1, "0")), "other worker")
    out = run_evaluation_tick(s, redis_client, KEYS)
    assert out["match"]["match"] == match_id(s, 1, "mcts")


def test_promotion_gating(tmp_path: Path, redis_client: redis.Redis) -> None:
    s = tiny_settings(tmp_path, promotion_min_score=0.0)  # any score passes the gate
    repo = make_checkpoints(s, 2)
    repo.publish(redis_client, KEYS, 1)
    assert should_promote(0.6, s.replace(promotion_min_score=0.55))
    assert not should_promote(0.5, s.replace(promotion_min_score=0.55))

    # Self-play and the CPU player ask the same place; gating starts at checkpoint 0.
    assert chosen_checkpoint(s, redis_client, KEYS) == ("evalm", 0)
    cpu_player = CurrentModel(s)
    assert cpu_player.refresh(redis_client, KEYS) and cpu_player.key == ("evalm", 0)
    out = run_evaluation_tick(s, redis_client, KEYS)
    assert out["match"]["match"] == match_id(s, 1, "0") and out["promoted"] is True
    assert promoted_checkpoint(s, redis_client, KEYS) == 1
    assert chosen_checkpoint(s, redis_client, KEYS) == ("evalm", 1)
    assert cpu_player.refresh(redis_client, KEYS) and cpu_player.key == ("evalm", 1)
    # The original workers (gRPC) are told the same.
    assert ServerState(s, redis_client, KEYS).selfplay_model_key().checkpoint == 1
    assert not cpu_player.refresh(redis_client, KEYS)  # unchanged: nothing loaded again
    assert not promote(s, redis_client, KEYS, 0, expect=0)  # stale expectation: no change
    assert promoted_checkpoint(s, redis_client, KEYS) == 1
    # The promoted bytes outlive the retirement of the published ones and the disk.
    redis_client.delete(KEYS.model_bytes("evalm", 1))
    elsewhere = s.replace(data_dir=tmp_path / "another-machine")
    assert checkpoint_bytes(elsewhere, 1, redis_client, KEYS) == repo.scriptmodule_bytes(1)
    with pytest.raises(ValueError, match="checkpoint 0 of model 'evalm' is neither"):
        checkpoint_bytes(elsewhere, 0, redis_client, KEYS)
    # So a server there serves it to the original workers (FetchModel's checkpoint -1).
    remote = ServerState(elsewhere, redis_client, KEYS)
    assert remote.model_bytes("evalm", -1, jit=True) == (1, repo.scriptmodule_bytes(1))

    ungated = s.replace(promotion_min_score=None)
    assert chosen_checkpoint(ungated, redis_client, KEYS) == ("evalm", 1)  # the newest published


def test_gating_still_accepts_examples_of_checkpoints_newer_than_the_promoted_one(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    """Workers told to play the promoted checkpoint 0 may still send examples of the
    newest published one (e.g. started before gating held it back)."""
    from test_server_support import game_examples

    from hexz_tasks.server.grpc_service import TrainingService
    from hexz_tasks.training_tick import restore_trainer_state

    s = tiny_settings(tmp_path, promotion_min_score=1.0)
    repo = make_checkpoints(s, 2)
    restore_trainer_state(s, redis_client, KEYS, repo)  # publishes 1, sets up the stream
    state = ServerState(s, redis_client, KEYS)
    assert state.selfplay_model_key().checkpoint == 0
    service = TrainingService(state)
    Status = hexz_pb2.AddTrainingExamplesResponse.Status

    def add(checkpoint: int) -> hexz_pb2.AddTrainingExamplesResponse:
        key = hexz_pb2.ModelKey(name="evalm", checkpoint=checkpoint)
        request = hexz_pb2.AddTrainingExamplesRequest(
            examples=game_examples(seed=checkpoint, model_key=key)
        )
        return service.AddTrainingExamples(request, None)  # no abort on this path

    accepted = add(1)
    assert accepted.status == Status.ACCEPTED, accepted.error_message
    assert accepted.latest_model.checkpoint == 0  # still told to play the promoted one
    refused = add(2)  # newer than anything published
    assert refused.status == Status.REJECTED_OTHER and "checkpoint" in refused.error_message


def test_gate_keeps_the_current_model_when_the_challenger_scores_too_little(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    s = tiny_settings(tmp_path, promotion_min_score=1.0)
    make_checkpoints(s, 2)
    out = run_evaluation_tick(s, redis_client, KEYS)
    assert out["match"]["match"] == match_id(s, 1, "0")
    if out["match"]["score"] < 1.0:
        assert "promoted" not in out
        assert promoted_checkpoint(s, redis_client, KEYS) == 0
    else:  # the random net happened to sweep: then it must have been promoted
        assert promoted_checkpoint(s, redis_client, KEYS) == 1


# ------------------------------------------------------------------ CLI


def test_hexz_ratings_prints_the_curve(tmp_path: Path, redis_server: RedisServer) -> None:
    env = tiny_env(redis_server.url, tmp_path / "data", model_name="cli")
    run = subprocess.run(
        [sys.executable, "-m", "hexz_tasks.cli", "ratings"],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0 and "no arena games" in run.stdout
    r = redis_server.client()
    for k, (a, b, pts) in enumerate(
        synthetic_games({"cli:0": 0, "cli:1": 300, "random": -400}, 50)
    ):
        store_game(r, KEYS, {"match": "syn", "game": k, "a": a, "b": b, "a_points": pts})
    r.hset(KEYS.checkpoint_metrics, "1", json.dumps({"policy_ce": 2.5, "value_mse": 0.8}))
    run = subprocess.run(
        [sys.executable, "-m", "hexz_tasks.cli", "ratings"],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    row = next(line.split() for line in lines if line.split()[:1] == ["1"])
    assert 150 < float(row[1]) < 450 and row[4] == "2.5000" and row[5] == "0.8000"
    assert next(line for line in lines if line.split()[:1] == ["0"]).split()[1] == "0"
    assert any(line.split()[:1] == ["random"] for line in lines)
