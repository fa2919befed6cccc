"""Arena matches: seat swapping, pairing, determinism, scores with paired intervals,
real strength (pure MCTS beats random), storage in a real Redis, the CLI and the task."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import redis
import torch
from conftest import REPO_ROOT, TEST_PREFIX, Procs, RedisServer, tiny_env

from hexz_tasks.arena import load_player, play_match, run_match, stored_games, stored_matches
from hexz_tasks.intervals import paired_score, wilson_interval
from hexz_tasks.keys import Keys
from hexz_tasks.model import HexzNet, ModelParams, to_scriptmodule_bytes
from hexz_tasks.players import PlayerSpec, parse_player
from hexz_tasks.repository import ModelRepository
from hexz_tasks.settings import Settings


def settings_for(tmp_path: Path, **overrides: object) -> Settings:
    return Settings.from_env(
        {}, data_dir=tmp_path / "data", model_name="arena", inference_threads=1, **overrides
    )


def players(settings: Settings, a: str, b: str):
    return [load_player(parse_player(p, settings.model_name), settings) for p in (a, b)]


def without_time(games: list[dict]) -> list[dict]:
    return [{k: v for k, v in g.items() if k not in ("time", "match")} for g in games]


def tiny_net_file(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    path.write_bytes(to_scriptmodule_bytes(HexzNet("conv2d", 1, 8)))
    return path


# ------------------------------------------------------------------ pairing


def test_each_board_is_played_twice_with_seats_swapped(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    result = play_match(*players(s, "mcts:4", "random"), 8, 4, seed=3, settings=s)
    games = result.games
    assert [g["game"] for g in games] == list(range(8))
    for k in range(4):
        even, odd = games[2 * k], games[2 * k + 1]
        assert even["pair"] == odd["pair"] == k
        assert even["board_seed"] == odd["board_seed"]
        assert (even["first"], even["second"]) == ("mcts:4", "random")
        assert (odd["first"], odd["second"]) == ("random", "mcts:4")
    assert len({g["board_seed"] for g in games}) == 4
    for g in games:
        p0 = 1.0 if g["result"] > 0 else 0.5 if g["result"] == 0 else 0.0
        assert g["a_points"] == (p0 if g["first"] == "mcts:4" else 1.0 - p0)
        assert g["result"] == int(np.sign(g["score"][0] - g["score"][1]))
        assert g["winner"] == (g["first"] if g["result"] > 0 else g["second"])
    pairs = result.pair_scores()
    assert pairs == [
        (games[2 * k]["a_points"] + games[2 * k + 1]["a_points"]) / 2 for k in range(4)
    ]
    summary = result.summary()
    assert summary["score"] == pytest.approx(np.mean(pairs))
    assert summary["a_wins"] + summary["draws"] + summary["a_losses"] == 8


def test_a_match_is_deterministic_for_its_seed_and_game_i_depends_only_on_seed_and_i(
    tmp_path: Path,
) -> None:
    s = settings_for(tmp_path)
    first = play_match(*players(s, "mcts:6", "mcts:3"), 6, 6, seed=11, settings=s).games
    again = play_match(*players(s, "mcts:6", "mcts:3"), 6, 6, seed=11, settings=s).games
    fewer = play_match(*players(s, "mcts:6", "mcts:3"), 2, 6, seed=11, settings=s).games
    other = play_match(*players(s, "mcts:6", "mcts:3"), 6, 6, seed=12, settings=s).games
    assert without_time(first) == without_time(again)
    assert without_time(fewer) == without_time(first)[:2]
    assert {g["board_seed"] for g in first}.isdisjoint({g["board_seed"] for g in other})


def test_temperature_changes_moves_but_stays_deterministic(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    greedy = play_match(*players(s, "mcts:8", "mcts:8"), 4, 8, seed=5, settings=s).games
    hot = [
        play_match(*players(s, "mcts:8", "mcts:8"), 4, 8, 5, s, temperature=1.0).games
        for _ in range(2)
    ]
    assert without_time(hot[0]) == without_time(hot[1])
    assert without_time(hot[0]) != without_time(greedy)


def test_bad_arguments_are_rejected_with_clear_messages(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    with pytest.raises(ValueError, match="not a checkpoint number"):
        parse_player("alphazero", s.model_name)
    with pytest.raises(ValueError, match="even"):
        play_match(*players(s, "random", "random"), 3, 4, 0, s)
    with pytest.raises(ValueError, match="runs per move"):
        play_match(*players(s, "random", "random"), 2, 0, 0, s)
    with pytest.raises(ValueError, match="checkpoint 7"):
        load_player(parse_player("7", s.model_name), s)


# ------------------------------------------------------------------ scores


def test_paired_interval_on_known_data() -> None:
    pairs = [1.0, 0.5, 0.75, 1.0, 0.25, 1.0]
    mean, low, high = paired_score(pairs)
    assert mean == pytest.approx(0.75)
    # Sample variance 0.1 over 0.75 * 0.25: deff 0.533, so n_eff = 6 / 0.533 = 11.25.
    n, z = 6 / (0.1 / 0.1875), 1.959964
    center = (0.75 + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(0.1875 / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert (low, high) == pytest.approx((center - half, center + half), abs=1e-6)
    assert wilson_interval(0.75, n) == pytest.approx((low, high))


def test_unanimous_pairs_never_give_a_zero_width_interval() -> None:
    # All won: the Wilson interval of n pairs (deff 1): low = n / (n + z^2).
    for n in (1, 3, 10, 100):
        mean, low, high = paired_score([1.0] * n)
        assert (mean, high) == (1.0, 1.0)
        assert low == pytest.approx(n / (n + 1.959964**2), abs=1e-6)
    mean, low, high = paired_score([0.0] * 10)
    assert (mean, low) == (0.0, 0.0) and high == pytest.approx(1 - 10 / (10 + 1.959964**2))
    # Every pair split: no sample variance, but the interval stays as wide as that of
    # independent games (deff 1/2) rather than collapsing.
    mean, low, high = paired_score([0.5] * 10)
    assert mean == 0.5 and low == pytest.approx(1 - high) and high - low > 0.3
    with pytest.raises(ValueError, match="no pairs"):
        paired_score([])
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        paired_score([0.5, 1.5])


def simulated_pairs(p: float, n: int, model: str, rng: np.random.Generator) -> np.ndarray:
    """Pair scores of A (true mean score p) over n boards, games won or lost (no draws).

    "independent": every game won with probability p; "first mover": A's chance is
    p + d as first player and p - d as second (pairs negatively correlated); "boards":
    each board has its own chance for A, Beta-distributed around p (positively
    correlated)."""
    if model == "independent":
        chance = np.full((n, 2), p)
    elif model == "first mover":
        d = min(0.3, p, 1 - p)
        chance = np.tile([p + d, p - d], (n, 1))
    else:
        q = rng.beta(4 * p, 4 * (1 - p), size=(n, 1)) if p < 1 else np.ones((n, 1))
        chance = np.repeat(q, 2, axis=1)
    return (rng.random((n, 2)) < chance).mean(axis=1)


@pytest.mark.parametrize("model", ["independent", "first mover", "boards"])
@pytest.mark.parametrize("p", [0.5, 0.9, 1.0])
@pytest.mark.parametrize("n", [3, 10, 30])
def test_paired_interval_coverage_by_simulation(model: str, p: float, n: int) -> None:
    rng = np.random.default_rng([n, int(100 * p), len(model)])
    trials = 1000
    covered = 0
    for _ in range(trials):
        _, low, high = paired_score(simulated_pairs(p, n, model, rng))
        covered += low <= p <= high
    # Nominal 95 %; the binomial sd of 1000 trials is 0.7 %. Observed: 0.935-1.0
    # (at p = 1 every interval reaches 1; a t interval covers 0.45 at p = 0.9, n = 3).
    assert covered >= 0.925 * trials
    if model == "independent" and p == 0.5 and n >= 10:
        assert covered <= 0.985 * trials  # not uselessly wide either


# ------------------------------------------------------------------ strength


def test_pure_mcts_clearly_beats_random(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    result = play_match(*players(s, "mcts", "random"), 20, 50, seed=0, settings=s)
    summary = result.summary()
    # Observed 0.95 at this seed (0.95-1.0 at seeds 0-5): random play is far weaker.
    assert summary["score"] > 0.75, summary
    assert summary["ci"][0] > 0.5, summary


def test_more_iterations_make_mcts_stronger(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    summary = play_match(*players(s, "mcts:100", "mcts:4"), 20, 1, seed=1, settings=s).summary()
    assert summary["score"] > 0.75, summary  # observed 0.9-1.0 at seeds 0-5


def test_uct_players_parse_with_normalised_labels(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    assert parse_player("uct:0800", s.model_name) == PlayerSpec("uct", "uct:800", iterations=800)
    assert parse_player(" uct@50", s.model_name) == PlayerSpec("uct", "uct@50", think_ms=50)
    for bad in ("uct", "uct:", "uct:5@5", "uct:-3", "uct 800"):
        with pytest.raises(ValueError, match="not a checkpoint number"):
            parse_player(bad, s.model_name)
    with pytest.raises(ValueError, match=r"iterations must be in 1\.\.1000000"):
        parse_player("uct:0", s.model_name)
    with pytest.raises(ValueError, match="iterations must be in"):
        parse_player("uct:1000001", s.model_name)
    with pytest.raises(ValueError, match=r"think time must be in 1\.\.60000 ms"):
        parse_player("uct@60001", s.model_name)


def test_uct_beats_random_and_more_iterations_make_it_stronger(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    vs_random = play_match(*players(s, "uct:100", "random"), 10, 1, seed=0, settings=s)
    # Observed 0.9-1.0 at seeds 0-3.
    assert vs_random.summary()["ci"][0] > 0.5, vs_random.summary()
    more = play_match(*players(s, "uct:1000", "uct:30"), 20, 1, seed=1, settings=s).summary()
    assert more["score"] > 0.75, more  # observed 1.0 at seeds 0-3


def test_uct_matches_are_deterministic_and_mix_with_batched_networks(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    net = tiny_net_file(tmp_path / "net.pt")
    runs = [
        play_match(*players(s, str(net), "uct:40"), 4, 8, seed=3, settings=s, uct_threads=t)
        for t in (1, 2)
    ]
    assert without_time(runs[0].games) == without_time(runs[1].games)
    assert all(g["moves"] > 10 for g in runs[0].games)
    timed = play_match(*players(s, "uct@5", "random"), 2, 1, seed=3, settings=s).games
    assert {g["a"] for g in timed} == {"uct@5"} and all(g["moves"] > 10 for g in timed)


# ------------------------------------------------------------------ neural players


def test_checkpoint_and_file_players_play_batched_games(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    repo = ModelRepository(s.repo_base_dir, s.model_name)
    repo.ensure_initial(ModelParams("conv2d", 1, 8))
    net = tiny_net_file(tmp_path / "net.pt")
    a, b = players(s, "0", str(net))
    assert a.label == "arena:0" and b.label == f"file:{net.resolve()}"
    result = play_match(a, b, 6, 4, seed=2, settings=s)
    assert len(result.games) == 6
    assert all(g["moves"] > 10 for g in result.games)
    again = play_match(a, b, 6, 4, seed=2, settings=s)
    assert [g["a_points"] for g in again.games] == [g["a_points"] for g in result.games]


def test_a_checkpoint_missing_on_disk_loads_from_redis(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    keys = Keys(TEST_PREFIX)
    s = settings_for(tmp_path)
    repo = ModelRepository(tmp_path / "elsewhere", s.model_name)
    repo.ensure_initial(ModelParams("conv2d", 1, 8))
    repo.publish(redis_client, keys, 0)
    player = load_player(parse_player("0", s.model_name), s, redis_client, keys)
    assert player.evaluator is not None
    with pytest.raises(ValueError, match="neither in"):
        load_player(parse_player("1", s.model_name), s, redis_client, keys)


# ------------------------------------------------------------------ storage, CLI, task


def test_games_and_summary_are_stored_once_per_match_id(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    keys = Keys(TEST_PREFIX)
    s = settings_for(tmp_path)
    summary = run_match("mcts:4", "random", 4, 4, 9, s, redis_client, keys, match_id="m1")
    run_match("mcts:4", "random", 4, 4, 9, s, redis_client, keys, match_id="m1")  # redelivered
    games = stored_games(redis_client, keys)
    assert sorted((g["match"], g["game"]) for g in games) == [("m1", i) for i in range(4)]
    g = next(g for g in games if g["game"] == 1)
    assert g["first"] == "random" and g["second"] == "mcts:4"
    assert set(g) >= {"a", "b", "first", "score", "result", "a_points", "runs"}
    matches = stored_matches(redis_client, keys)
    assert list(matches) == ["m1"]
    assert matches["m1"]["score"] == summary["score"]
    assert all(k.startswith(TEST_PREFIX.encode()) for k in redis_client.keys("*"))


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hexz_tasks.cli", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_hexz_arena_cli_plays_prints_and_stores(tmp_path: Path, redis_server: RedisServer) -> None:
    env = tiny_env(redis_server.url, tmp_path / "data")
    out = cli(env, "arena", "mcts:8", "random", "--games", "4", "--runs", "8", "--seed", "1")
    assert out.returncode == 0, out.stderr
    assert "mcts:8 vs random: score" in out.stdout
    games = stored_games(redis_server.client(), Keys(TEST_PREFIX))
    assert len(games) == 4 and {g["a"] for g in games} == {"mcts:8"}

    bad = cli(env, "arena", "mcts", "nobody", "--games", "4")
    assert bad.returncode == 1 and "'nobody' is not a checkpoint number" in bad.stderr
    odd = cli(env, "arena", "mcts", "random", "--games", "3")
    assert odd.returncode == 1 and "even" in odd.stderr
    quick = cli(env, "--quick-start", "arena", "mcts:8", "random", "--games", "2", "--runs", "8")
    assert quick.returncode == 0 and "mcts:8 vs random: score" in quick.stdout, quick.stderr


def test_quick_start_flag_adds_hexz_runs_settings_where_the_environment_sets_none() -> None:
    from hexz_tasks.cli import settings_for
    from hexz_tasks.launcher import QUICKSTART

    environ = {"HEXZ_RANDOM_PLAYOUTS": "3", "PATH": "/usr/bin"}
    quick, plain = settings_for(True, environ), settings_for(False, environ)
    assert quick.random_playouts == plain.random_playouts == 3  # the environment wins
    assert quick.runs_per_move == int(QUICKSTART["HEXZ_RUNS_PER_MOVE"]) != plain.runs_per_move
    assert quick.train_symmetries and not plain.train_symmetries
    assert quick == Settings.from_env({**QUICKSTART, **environ})


def test_the_match_task_runs_on_an_eval_worker(
    tmp_path: Path, redis_server: RedisServer, procs: Procs
) -> None:
    from hexz_tasks.celery import make_app
    from hexz_tasks.queues import ARENA_TASK

    env = tiny_env(redis_server.url, tmp_path / "data")
    # -I: the worker loads the arena tasks even before hexz_tasks.celery includes them.
    worker = procs.celery(
        "arena",
        ["worker", "-Q", "eval", "-n", "arena@%h", "-c", "1", "-l", "INFO",
         "-I", "hexz_tasks.arena_tasks"],
        env,
    )  # fmt: skip
    app = make_app(Settings.from_env(env))
    # Routed to the eval queue by the app's configuration.
    bad = app.send_task(ARENA_TASK, args=["mcts", "random", 3, 6, 5], task_id="bad-games")
    res = app.send_task(ARENA_TASK, args=["mcts:6", "random", 4, 6, 5])
    summary = res.get(timeout=180)
    assert summary["games"] == 4 and summary["match"] == res.id
    r = redis_server.client()
    keys = Keys(TEST_PREFIX)
    assert json.loads(r.hget(keys.arena_matches, res.id))["score"] == summary["score"]
    assert {g["match"] for g in stored_games(r, keys)} == {res.id}
    assert f"rejecting task {ARENA_TASK}[{bad.id}]: bad match arguments: games=3" in worker.log()
    app.close()
