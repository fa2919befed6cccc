"""Self-play games: the many-games driver, play_games and the examples it produces."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from hexz_tasks import codec, hexz_pb2
from hexz_tasks._search import SelfPlay
from hexz_tasks.cli import main
from hexz_tasks.engine import Board
from hexz_tasks.examples import decode_array, from_columns
from hexz_tasks.layout import SWAP_PLAYERS
from hexz_tasks.model import HexzNet, ModelError, to_scriptmodule_bytes
from hexz_tasks.selfplay import GameRecord, play_games, selfplay_to_archive
from hexz_tasks.settings import Settings

FIXTURE_MODEL = Path(__file__).resolve().parent / "data" / "original-conv2d5-scriptmodule.pt"
TINY = Settings(
    runs_per_move=12,
    runs_per_fast_move=4,
    fast_move_prob=0.5,
    dirichlet_concentration=0.35,
    games_in_flight=3,
)


def uniform(boards: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m = masks.reshape(len(masks), -1).astype(np.float32)
    return m / np.maximum(m.sum(1, keepdims=True), 1), np.zeros(len(masks), np.float32)


def drive(driver: SelfPlay, evaluate=uniform) -> list[dict]:
    """Runs a driver to the end; returns its games in the order they finished, each
    with its examples decoded ("batch") next to its columns."""
    boards = np.zeros((driver.capacity, 11, 11, 10), np.float32)
    masks = np.zeros((driver.capacity, 2, 11, 10), bool)
    games = []
    while True:
        n = driver.prepare(boards, masks)
        games += [{**g, "batch": codec.decode(g["columns"])} for g in driver.take_finished()]
        if n == 0:
            return games
        assert 0 < n <= driver.capacity
        assert masks[:n].reshape(n, -1).any(axis=1).all(), "a leaf without legal moves"
        driver.feed(*evaluate(boards[:n], masks[:n]))


@pytest.fixture(scope="module")
def tiny_net() -> HexzNet:
    torch.manual_seed(0)
    return HexzNet("conv2d", 1, 8)


@pytest.fixture(scope="module")
def games(tiny_net: HexzNet) -> list[GameRecord]:
    return list(play_games(tiny_net, 4, TINY, seed=42, model_key=("tiny", 7)))


def load(data: bytes) -> np.ndarray:
    return decode_array(data, hexz_pb2.TrainingExample.NUMPY, "test")


def test_every_game_is_played_once_and_streams_out(games: list[GameRecord]) -> None:
    assert sorted(g.index for g in games) == [0, 1, 2, 3]
    for g in games:
        assert g.result in (-1, 0, 1)
        assert g.result == int(np.sign(g.score[0] - g.score[1]))
        assert g.num_examples == g.num_moves - g.fast_moves - g.forced_moves
        assert g.evaluations > 0
        codec.check(g.columns, f"game {g.index}")


def test_examples_have_the_wire_format(games: list[GameRecord]) -> None:
    for g in games:
        examples = from_columns(g.columns)
        root_q = codec.decode(g.columns).root_q
        for n, ex in enumerate(examples):
            assert ex.encoding == hexz_pb2.TrainingExample.NUMPY
            board, mask = load(ex.board), load(ex.action_mask)
            probs, priors = load(ex.move_probs), load(ex.model_predictions.priors)
            assert board.shape == (11, 11, 10) and board.dtype == np.float32
            assert mask.shape == (2, 11, 10) and mask.dtype == np.bool_
            assert probs.shape == priors.shape == (2, 11, 10)
            assert probs.dtype == priors.dtype == np.float32
            # The policy target: normalised visits on legal moves only.
            assert probs.sum() == pytest.approx(1.0, abs=1e-5)
            assert np.all(probs[~mask] == 0)
            assert priors.sum() == pytest.approx(1.0, abs=2e-3)  # float16 in the store
            assert np.all(priors[~mask] == 0)
            # The board is from the view of the player to move: their mask matches.
            b = Board.from_tensor(board if ex.turn == 0 else board[list(SWAP_PLAYERS)])
            assert np.array_equal(b.action_mask(ex.turn), mask)
            # The move played was legal, by the player to move.
            assert ex.move.player_num == ex.turn + 1
            typ = 0 if ex.move.cell_type == hexz_pb2.Field.FLAG else 1
            assert ex.move.cell_type in (hexz_pb2.Field.FLAG, hexz_pb2.Field.NORMAL)
            assert mask[typ, ex.move.row, ex.move.col]
            assert n == 0 or ex.move.move > examples[n - 1].move.move
            # The result is the final one from the player to move's view.
            assert ex.result == (g.result if ex.turn == 0 else -g.result)
            assert -1 <= ex.model_predictions.value <= 1
            assert -1 <= root_q[n] <= 1  # the search value, which the wire format lacks
            assert ex.model_key.name == "tiny" and ex.model_key.checkpoint == 7
            assert ex.unix_micros > 1_600_000_000 * 10**6
            s = ex.stats
            assert s.valid_moves == mask.sum()
            assert s.visit_count >= TINY.runs_per_move
            assert s.min_child_vc <= s.selected_child_vc <= s.max_child_vc
            assert s.visited_children == np.count_nonzero(probs)
            assert sum(s.nodes_per_depth) == s.search_tree_size
            assert len(s.max_visit_count_per_depth) == len(s.nodes_per_depth)
            assert -1 <= s.selected_child_q <= 1


def test_first_moves_are_full_and_both_players_get_examples(games: list[GameRecord]) -> None:
    for g in games:
        assert g.columns["move"][:6, 1].tolist() == list(range(6))
        assert set(g.columns["turn"].tolist()) == {0, 1}


def test_examples_name_the_checkpoint_the_driver_had_when_they_were_made() -> None:
    d = SelfPlay(1, 1, 5, runs_per_move=3, model_name="net", checkpoint=3)
    boards = np.zeros((1, 11, 11, 10), np.float32)
    masks = np.zeros((1, 2, 11, 10), bool)
    steps, games = 0, []
    while (n := d.prepare(boards, masks)) > 0:
        steps += 1
        if steps == 30:
            d.checkpoint = 4  # a new network from here on
        d.feed(*uniform(boards[:n], masks[:n]))
        games += d.take_finished()
    games += d.take_finished()
    (g,) = games
    ckpt = g["columns"]["model_ckpt"].tolist()
    assert d.checkpoint == 4 and ckpt == sorted(ckpt) and set(ckpt) == {3, 4}
    assert codec.names_of(g["columns"]) == ["net"]


def test_same_seed_same_games(tiny_net: HexzNet, games: list[GameRecord]) -> None:
    def strip(g: GameRecord) -> dict[str, list]:
        timing = ("unix_micros", "duration_micros")
        return {k: v.tolist() for k, v in g.columns.items() if k not in timing}

    again = list(play_games(tiny_net, 4, TINY, seed=42, model_key=("tiny", 7)))
    by_index = {g.index: strip(g) for g in games}
    assert {g.index: strip(g) for g in again} == by_index
    other = list(play_games(tiny_net, 2, TINY, seed=43))
    assert [strip(g) for g in sorted(other, key=lambda g: g.index)] != [by_index[0], by_index[1]]


def test_game_i_depends_only_on_seed_and_index() -> None:
    """With a network whose outputs do not depend on the batch, the games are the same
    whatever the number of games in flight."""

    def play(in_flight: int) -> dict[int, list]:
        d = SelfPlay(5, in_flight, 3, runs_per_move=6, runs_per_fast_move=2, fast_move_prob=0.3)
        return {g["index"]: g["columns"]["move"].tolist() for g in drive(d)}

    one = play(1)
    assert sorted(one) == [0, 1, 2, 3, 4]
    assert play(2) == one == play(5)


def test_fraction_of_fast_moves_follows_the_setting() -> None:
    for prob in (0.0, 0.3, 1.0):
        d = SelfPlay(6, 6, 1, runs_per_move=3, runs_per_fast_move=2, fast_move_prob=prob)
        games = drive(d)
        # Forced moves (one legal move) are played without a search, never fast.
        eligible = sum(max(g["num_moves"] - 6, 0) - g["forced_moves"] for g in games)
        fast = sum(g["fast_moves"] for g in games)
        assert eligible > 200
        for g in games:
            assert codec.num_rows(g["columns"]) == (
                g["num_moves"] - g["fast_moves"] - g["forced_moves"]
            )
        if prob == 0.0:
            assert fast == 0
        elif prob == 1.0:
            assert fast == eligible
        else:
            # Binomial(eligible, 0.3): 5 standard deviations either side.
            sd = (eligible * prob * (1 - prob)) ** 0.5
            assert abs(fast - prob * eligible) < 5 * sd


def test_games_stream_out_before_the_last_one_starts() -> None:
    """A slot whose game ended starts the next game at once (no waves)."""
    d = SelfPlay(8, 2, 5, runs_per_move=2, runs_per_fast_move=1)
    boards = np.zeros((2, 11, 11, 10), np.float32)
    masks = np.zeros((2, 2, 11, 10), bool)
    first_finished_at = None
    while (n := d.prepare(boards, masks)) > 0:
        if d.take_finished() and first_finished_at is None:
            first_finished_at = d.games_started
        assert n == 2 or d.games_started == 8  # full batches until no game is left
        d.feed(*uniform(boards[:n], masks[:n]))
    assert first_finished_at is not None and first_finished_at <= 4
    assert d.games_finished == 8


def test_max_moves_and_stuck_settings_end_games_early() -> None:
    short = drive(SelfPlay(3, 3, 9, runs_per_move=2, max_moves_per_game=10))
    assert all(g["num_moves"] == 10 for g in short)
    for g in short:
        assert g["result"] == int(np.sign(g["score"][0] - g["score"][1]))
    full = drive(SelfPlay(4, 4, 9, runs_per_move=2))
    stuck = drive(SelfPlay(4, 4, 9, runs_per_move=2, end_game_when_stuck=True))
    assert sum(g["num_moves"] for g in stuck) < sum(g["num_moves"] for g in full)
    for g in stuck:
        assert g["result"] == int(np.sign(g["score"][0] - g["score"][1]))


def test_sampled_moves_play_the_most_visited_child_afterwards() -> None:
    def is_top(g: dict) -> list[bool]:
        probs = g["batch"].move_probs.reshape(-1, 2, 11, 10)
        moves = g["columns"]["move"]  # player_num, move, row, col, cell_type
        typ = (moves[:, 4] != hexz_pb2.Field.FLAG).astype(int)
        return [
            float(p[t, m[2], m[3]]) == float(p.max())
            for p, t, m in zip(probs, typ, moves, strict=True)
        ]

    greedy = drive(SelfPlay(4, 4, 9, runs_per_move=8, sampled_moves=3))
    for g in greedy:
        assert all(is_top(g)[3:]), "after move 3 every move is the most visited child"
    drawn = drive(SelfPlay(4, 4, 9, runs_per_move=8))
    assert not all(top for g in drawn for top in is_top(g)[3:])
    with pytest.raises(ValueError, match="sampled_moves"):
        SelfPlay(1, 1, 1, sampled_moves=-1)


def test_resign_threshold_ends_a_game_with_a_loss() -> None:
    def gloomy(boards, masks):  # every position looks lost for the player to move
        priors, _ = uniform(boards, masks)
        return priors, np.full(len(masks), -0.9, np.float32)

    games = drive(SelfPlay(2, 2, 4, runs_per_move=4, resign_threshold=0.5), gloomy)
    for g in games:
        assert g["resigned"] and g["num_moves"] == 1
        assert g["result"] == -1  # player 0 resigned at move 0
        assert g["batch"].results.tolist() == [-1.0]


def test_random_playouts_evaluate_leaves() -> None:
    games = drive(SelfPlay(2, 2, 4, runs_per_move=4, random_playouts=2))
    for g in games:
        values = g["columns"]["value"]
        assert np.all(np.abs(values) <= 1)
        assert np.any(values != 0)  # playout results, not the network's 0


def test_driver_rejects_bad_feeds() -> None:
    d = SelfPlay(2, 2, 1, runs_per_move=2)
    boards = np.zeros((2, 11, 11, 10), np.float32)
    masks = np.zeros((2, 2, 11, 10), bool)
    n = d.prepare(boards, masks)
    with pytest.raises(ValueError, match="rows"):
        d.feed(np.zeros((n + 1, 220), np.float32), np.zeros(n + 1, np.float32))
    with pytest.raises(ValueError, match="rows"):
        d.prepare(boards[:1], masks[:1])


def test_an_open_ended_driver_keeps_every_slot_playing_and_records_checkpoints() -> None:
    d = SelfPlay(None, 3, 5, runs_per_move=2, max_moves_per_game=12, model_name="m")
    boards = np.zeros((3, 11, 11, 10), np.float32)
    masks = np.zeros((3, 2, 11, 10), bool)
    d.checkpoint = 4
    games: list[dict] = []
    while len(games) < 12:
        n = d.prepare(boards, masks)
        assert n == 3 and d.pending == 3  # a finished game's slot started the next one
        with pytest.raises(ValueError, match="not fed yet"):
            d.prepare(boards, masks)
        games += d.take_finished()
        if len(games) >= 4:
            d.checkpoint = 5
        d.feed(*uniform(boards[:n], masks[:n]))
    assert d.pending == 0 and d.games_started == d.games_finished + 3 > 12
    assert len({g["index"] for g in games}) == len(games)
    assert d.moves_played >= sum(g["num_moves"] for g in games)
    checkpoints = [set(g["columns"]["model_ckpt"].tolist()) for g in games]
    assert checkpoints[0] == {4} and checkpoints[-1] == {5}
    # The model key of each example is the checkpoint that searched its move.
    examples = from_columns(games[-1]["columns"])
    assert [e.model_key.checkpoint for e in examples] == [5] * len(examples)
    assert all(e.model_key.name == "m" for e in examples)
    d.model_name = None
    unnamed: list[dict] = []
    while not unnamed:
        n = d.prepare(boards, masks)
        unnamed = d.take_finished()
        d.feed(*uniform(boards[:n], masks[:n]))
    assert not from_columns(unnamed[0]["columns"])[0].HasField("model_key")


def test_the_original_fixture_model_plays_a_game() -> None:
    settings = Settings(runs_per_move=6, runs_per_fast_move=2, fast_move_prob=0.5)
    (game,) = play_games(FIXTURE_MODEL, 1, settings, seed=1)
    assert game.num_moves > 20 and game.num_examples
    assert (np.abs(game.columns["value"]) > 1e-3).any()


def test_hexz_selfplay_writes_an_archive(
    tmp_path: Path, tiny_net: HexzNet, monkeypatch, capsys
) -> None:
    model = tmp_path / "model.pt"
    model.write_bytes(to_scriptmodule_bytes(tiny_net))
    out = tmp_path / "games.gz"
    for name, value in [("RUNS_PER_MOVE", "4"), ("GAMES_IN_FLIGHT", "2")]:
        monkeypatch.setenv(f"HEXZ_{name}", value)
    assert main(["selfplay", "--games", "3", "--model", str(model), "--out", str(out)]) == 0
    req = hexz_pb2.AddTrainingExamplesRequest.FromString(gzip.decompress(out.read_bytes()))
    assert req.execution_id and req.worker_config.runs_per_move == 4
    assert req.worker_config.prediction_batch_size == 2
    assert len(req.examples) > 3 * 10
    assert "selfplay: 3 games, " in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["games.gz", "model.pt"]  # no temp


def test_selfplay_to_archive_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="TorchScript"):
        selfplay_to_archive(tmp_path / "missing.pt", 1, tmp_path / "x.gz", TINY)
    with pytest.raises(ValueError, match="games"):
        selfplay_to_archive(FIXTURE_MODEL, 0, tmp_path / "x.gz", TINY)
    with pytest.raises(FileNotFoundError):
        selfplay_to_archive(FIXTURE_MODEL, 1, tmp_path / "no" / "x.gz", TINY)


def test_eval_cache_saves_evaluations_without_changing_the_games() -> None:
    def play(cache: bool) -> list[dict]:
        d = SelfPlay(3, 3, 8, runs_per_move=60, runs_per_fast_move=10, eval_cache=cache)
        return sorted(drive(d), key=lambda g: g["index"])

    cached, plain = play(True), play(False)
    for a, b in zip(cached, plain, strict=True):
        assert a["columns"]["move"].tolist() == b["columns"]["move"].tolist()
        assert np.array_equal(a["columns"]["counts"], b["columns"]["counts"])
        assert a["cache_hits"] > 0 and b["cache_hits"] == 0
        assert a["evaluations"] + a["cache_hits"] == b["evaluations"]


def test_on_step_reports_progress_and_can_stop_play(tiny_net: HexzNet) -> None:
    seen: list[dict] = []

    def on_step(stats: dict) -> bool:
        seen.append(dict(stats))
        return len(seen) == 5

    stats: dict = {}
    games = list(play_games(tiny_net, 3, TINY, seed=1, stats=stats, on_step=on_step))
    assert games == [] and len(seen) == 5  # stopped long before any game ended
    assert [s["evaluations"] for s in seen] == sorted(s["evaluations"] for s in seen)
    assert stats["games_started"] == 3 and stats["inference_s"] > 0
