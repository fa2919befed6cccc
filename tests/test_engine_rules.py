"""The Flagz rules of shared/spec/flagz-rules.md, case by case, on the C++ engine."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

from hexz_tasks.engine import Board, format_board, print_random_game, random_games, random_playouts

FLAG, VALUE, BLOCKED, NEXT, FLAGS_LEFT = range(5)
GRASS = 10
VALID = [(r, c) for r in range(11) for c in range(10 - r % 2)]
INVALID = [(r, 9) for r in range(1, 11, 2)]


def empty_tensor() -> np.ndarray:
    return Board().tensor(0)


def ch(p: int, channel: int) -> int:
    return 5 * p + channel


def test_empty_board() -> None:
    b = Board()
    t = b.tensor(0)
    assert t.shape == (11, 11, 10) and t.dtype == np.float32
    assert (t[FLAGS_LEFT] == 3).all() and (t[ch(1, FLAGS_LEFT)] == 3).all()
    for r, c in INVALID:
        assert t[BLOCKED, r, c] == 1 and t[ch(1, BLOCKED), r, c] == 1
    assert t.sum() == 2 * 110 * 3 + 2 * len(INVALID)
    moves = b.legal_moves(0)
    assert moves == [(0, r, c, 1) for r, c in VALID]
    assert len(moves) == 105 == b.num_legal_moves(0)
    assert b.score() == (0, 0) and b.result() == 0


def test_random_board_layout_and_determinism() -> None:
    b = Board.random(seed=7)
    t = b.tensor(0)
    assert b == Board.random(seed=7)
    assert b != Board.random(seed=8)
    assert sorted(t[GRASS][t[GRASS] > 0].tolist()) == [1, 2, 3, 4, 5]
    both = (t[BLOCKED] == 1) & (t[ch(1, BLOCKED)] == 1)
    assert both.sum() == 15 + 5 + len(INVALID)
    assert (t[BLOCKED] == t[ch(1, BLOCKED)]).all()
    for channel in (FLAG, VALUE, NEXT, ch(1, FLAG), ch(1, VALUE), ch(1, NEXT)):
        assert not t[channel].any()
    assert (t[FLAGS_LEFT] == 3).all() and (t[ch(1, FLAGS_LEFT)] == 3).all()


def test_flag_move_blocks_cell_and_opens_neighbours_for_mover() -> None:
    b = Board()
    b.make_move(0, (0, 4, 4, 1))
    t = b.tensor(0)
    assert t[FLAG, 4, 4] == 1 and t[BLOCKED, 4, 4] == 1 and t[ch(1, BLOCKED), 4, 4] == 1
    assert (t[FLAGS_LEFT] == 2).all() and (t[ch(1, FLAGS_LEFT)] == 3).all()
    # Neighbours of (4, 4) (even row): (4,5) (3,4) (3,3) (4,3) (5,3) (5,4).
    nbrs = [(4, 5), (3, 4), (3, 3), (4, 3), (5, 3), (5, 4)]
    assert sorted(zip(*np.nonzero(t[NEXT]), strict=True)) == sorted(nbrs)
    assert all(t[NEXT][q] == 1 for q in nbrs)
    assert not t[ch(1, NEXT)].any()
    moves = b.legal_moves(0)
    assert (1, 3, 3, 1) in moves and (0, 3, 3, 1) in moves and (0, 4, 4, 1) not in moves
    # Row-major, and within a cell the flag before the normal move.
    assert moves.index((0, 3, 3, 1)) + 1 == moves.index((1, 3, 3, 1))
    assert b.num_legal_moves(0) == 104 + 6
    assert b.num_legal_moves(1) == 104


def test_odd_row_neighbours() -> None:
    b = Board()
    b.make_move(1, (0, 3, 4, 1))
    t = b.tensor(1)  # player 1's view: its pieces in channels 0-4
    nbrs = [(3, 5), (2, 5), (2, 4), (3, 3), (4, 4), (4, 5)]
    assert sorted(zip(*np.nonzero(t[NEXT]), strict=True)) == sorted(nbrs)
    assert t[FLAG, 3, 4] == 1 and b.tensor(0)[ch(1, FLAG), 3, 4] == 1


def test_normal_move_sets_next_to_value_plus_one_and_keeps_lower() -> None:
    t = empty_tensor()
    t[NEXT, 5, 5] = 2
    t[NEXT, 5, 6] = 1  # a neighbour already at 1 stays 1
    t[NEXT, 5, 4] = 5  # a neighbour at 5 drops to 3
    b = Board.from_tensor(t)
    b.make_move(0, (1, 5, 5, 2))
    after = b.tensor(0)
    assert after[VALUE, 5, 5] == 2 and after[NEXT, 5, 5] == 0
    assert after[NEXT, 5, 6] == 1 and after[NEXT, 5, 4] == 3
    assert after[NEXT, 4, 5] == 3 and after[NEXT, 6, 5] == 3
    assert (after[FLAGS_LEFT] == 3).all()  # a normal move uses no flag
    assert b.score() == (2, 0) and b.result() == 1


def test_a_five_blocks_its_neighbours_for_the_mover_only() -> None:
    t = empty_tensor()
    t[NEXT, 5, 5] = 5
    t[NEXT, 5, 6] = 2  # the mover's pending normal move next to the 5 disappears
    t[ch(1, NEXT), 5, 6] = 3  # the opponent's stays
    b = Board.from_tensor(t)
    b.make_move(0, (1, 5, 5, 5))
    after = b.tensor(0)
    nbrs = [(5, 6), (4, 6), (4, 5), (5, 4), (6, 5), (6, 6)]
    for q in nbrs:
        assert after[BLOCKED][q] == 1 and after[NEXT][q] == 0
        assert after[ch(1, BLOCKED)][q] == 0
        assert (0, *q, 1) not in b.legal_moves(0)
        assert (0, *q, 1) in b.legal_moves(1)
    assert after[ch(1, NEXT), 5, 6] == 3
    # The opponent can play there, and then it is taken for both.
    b.make_move(1, (0, 5, 6, 1))
    assert b.tensor(0)[ch(1, BLOCKED), 5, 6] == 1
    assert b.score() == (5, 0)


def test_grass_capture_chains_in_neighbour_order() -> None:
    t = empty_tensor()
    # Neighbours of (5, 5): (5,6) (4,6) (4,5) (5,4) (6,5) (6,6).
    t[NEXT, 5, 5] = 3
    for (r, c), g in {(5, 6): 2, (4, 5): 3, (6, 5): 4, (3, 6): 1, (3, 5): 2}.items():
        t[GRASS, r, c] = g
        t[BLOCKED, r, c] = t[ch(1, BLOCKED), r, c] = 1
    b = Board.from_tensor(t)
    b.make_move(0, (1, 5, 5, 3))
    after = b.tensor(0)
    # (5,6)=2 and (4,5)=3 are worth at most 3: captured; (6,5)=4 is not.
    assert after[VALUE, 5, 6] == 2 and after[VALUE, 4, 5] == 3
    assert after[GRASS, 6, 5] == 4 and after[VALUE, 6, 5] == 0
    # (4,5) holds a 3 and captures its neighbours (3,6)=1 and (3,5)=2 in turn.
    assert after[VALUE, 3, 6] == 1 and after[VALUE, 3, 5] == 2
    assert after[GRASS].sum() == 4
    for q in [(5, 6), (4, 5), (3, 6), (3, 5)]:
        assert after[BLOCKED][q] == 1 and after[ch(1, BLOCKED)][q] == 1
        assert after[NEXT][q] == 0 and after[ch(1, NEXT)][q] == 0
    # Each captured piece opened its neighbours: (2,6) is next to the captured 1.
    assert after[NEXT, 2, 6] == 2
    assert b.score() == (3 + 2 + 3 + 1 + 2, 0)
    assert not after[ch(1, NEXT)].any()


def test_flags_do_not_capture_grass() -> None:
    t = empty_tensor()
    t[GRASS, 5, 6] = 1
    t[BLOCKED, 5, 6] = t[ch(1, BLOCKED), 5, 6] = 1
    b = Board.from_tensor(t)
    b.make_move(0, (0, 5, 5, 1))
    assert b.tensor(0)[GRASS, 5, 6] == 1


def test_flags_run_out() -> None:
    b = Board()
    for k, cell in enumerate([(0, 0), (2, 2), (4, 4)]):
        assert b.flags_left(0) == 3 - k
        b.make_move(0, (0, *cell, 1))
    t = b.tensor(0)
    assert b.flags_left(0) == 0 and not t[FLAGS_LEFT].any() and (t[ch(1, FLAGS_LEFT)] == 3).all()
    assert all(m[0] == 1 for m in b.legal_moves(0))
    assert not b.action_mask(0)[0].any()
    before = b.tensor(0)
    with pytest.raises(ValueError, match="no flags left"):
        b.make_move(0, (0, 8, 8, 1))
    np.testing.assert_array_equal(b.tensor(0), before)
    assert b.legal_moves(1)[0] == (0, 0, 1, 1)  # player 1 still has flags


def test_player_without_moves_is_skipped_in_playouts() -> None:
    t = empty_tensor()
    t[BLOCKED] = t[ch(1, BLOCKED)] = 1  # every cell taken ...
    t[BLOCKED, 6, 6] = t[ch(1, BLOCKED), 6, 6] = 0  # ... but one
    t[FLAGS_LEFT] = t[ch(1, FLAGS_LEFT)] = 0
    t[NEXT, 6, 6] = 2  # only player 0 can move there
    b = Board.from_tensor(t)
    assert not b.has_legal_move(1) and b.legal_moves(1) == [] and b.num_legal_moves(1) == 0
    assert b.legal_moves(0) == [(1, 6, 6, 2)] and not b.game_over()
    assert b.random_playout(1, seed=0) == 1  # player 1 to move, skipped: player 0 plays
    assert b.tensor(0)[VALUE, 6, 6] == 2 and b.game_over()


def test_game_end() -> None:
    t = empty_tensor()
    t[BLOCKED] = t[ch(1, BLOCKED)] = 1
    t[FLAGS_LEFT] = 1  # flags left but nowhere to put them
    t[ch(1, VALUE), 0, 0] = 4
    b = Board.from_tensor(t)
    assert b.game_over() and b.legal_moves(0) == [] and b.legal_moves(1) == []
    assert not b.action_mask(0).any() and not b.action_mask(1).any()
    assert b.score() == (0, 4) and b.result() == -1
    assert b.random_playout(0, seed=1) == -1
    assert b == Board.from_tensor(t)


def test_view_swap() -> None:
    b = Board.random(seed=3)
    b.make_move(0, b.legal_moves(0)[10])
    b.make_move(1, b.legal_moves(1)[-1])
    t0, t1 = b.tensor(0), b.tensor(1)
    np.testing.assert_array_equal(t1, t0[[5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 10]])
    np.testing.assert_array_equal(b.tensor(), t0)
    np.testing.assert_array_equal(b.action_mask(1)[0], t1[BLOCKED] == 0)


def test_action_mask_matches_legal_moves() -> None:
    b = Board.random(seed=11)
    b.make_move(0, (b.legal_moves(0)[5]))
    for p in (0, 1):
        mask = b.action_mask(p)
        assert mask.shape == (2, 11, 10) and mask.dtype == np.bool_
        expected = np.zeros((2, 11, 10), dtype=bool)
        for typ, r, c, _ in b.legal_moves(p):
            expected[typ, r, c] = True
        np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize(
    ("move", "message"),
    [
        ((1, 0, 0, 1), "no normal move"),
        ((0, 1, 9, 1), "off the board"),
        ((0, 11, 0, 1), "off the board"),
        ((0, -1, 0, 1), "off the board"),
        ((2, 0, 0, 1), "type"),
        ((0, 0, 0, 2), "value 1"),
        ((0, 4, 4, 1), "blocked"),
        ((1, 4, 5, 2), "value there is 1"),
        ((0, 0, 0), "4 ints"),
        ("abcd", "4 ints"),
        ((0, 0, 0, 1000), "out of range"),
        (None, "4 ints"),
        ((0.5, 0, 0, 1), "4 ints"),
    ],
)
def test_illegal_moves_raise_and_leave_the_board_unchanged(move: object, message: str) -> None:
    b = Board()
    b.make_move(0, (0, 4, 4, 1))
    before = b.tensor(0)
    with pytest.raises(ValueError, match=message):
        b.make_move(0, move)  # type: ignore[arg-type]
    np.testing.assert_array_equal(b.tensor(0), before)


@pytest.mark.parametrize("player", [-1, 2, "x", None, 0.5])
def test_bad_player_raises(player: object) -> None:
    b = Board()
    with pytest.raises(ValueError, match="player must be 0 or 1"):
        b.legal_moves(player)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="player must be 0 or 1"):
        b.make_move(player, (0, 0, 0, 1))  # type: ignore[arg-type]
    assert b == Board()


def test_moves_accept_numpy_integers() -> None:
    b = Board()
    b.make_move(np.int64(0), tuple(np.array([0, 2, 3, 1], dtype=np.int32)))
    assert b.tensor(0)[FLAG, 2, 3] == 1


def test_copy_is_independent() -> None:
    b = Board.random(seed=5)
    for c in (b.copy(), copy.copy(b), copy.deepcopy(b), pickle.loads(pickle.dumps(b))):
        assert c == b
        c.make_move(0, c.legal_moves(0)[0])
        assert c != b


def test_random_playout_plays_to_the_end() -> None:
    b = Board.random(seed=9)
    again = b.copy()
    result = b.random_playout(0, seed=42)
    assert result in (-1, 0, 1) and result == b.result() and b.game_over()
    assert again.random_playout(0, seed=42) == result and again == b
    s0, s1 = b.score()
    assert result == (s0 > s1) - (s0 < s1)


def test_batch_playouts_and_games() -> None:
    results = random_playouts(200, seed=1)
    assert results.shape == (200,) and results.dtype == np.int8
    assert set(results.tolist()) <= {-1, 0, 1}
    assert len(set(results.tolist())) > 1
    np.testing.assert_array_equal(results, random_playouts(200, seed=1))
    moves = random_games(20, seed=1)
    assert 20 * 40 < moves < 20 * 110  # about 77 moves a game
    with pytest.raises(ValueError):
        random_playouts(-1)


def test_print_random_game(capsys: pytest.CaptureFixture[str]) -> None:
    assert print_random_game(5) == 0
    out = capsys.readouterr().out
    assert "game over after" in out and "move 1: player 0" in out
    assert print_random_game(5) == 0
    assert capsys.readouterr().out == out  # the seed fixes the game
    text = format_board(Board())
    assert text.count("\n") == 10 and text.count(".") == 105


def test_playouts_in_threads_match_sequential_ones() -> None:
    """random_playout(s) release the GIL; boards in other threads are unaffected."""
    from concurrent.futures import ThreadPoolExecutor

    expected = [random_playouts(300, seed=s).tolist() for s in range(4)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda s: random_playouts(300, seed=s).tolist(), range(4)))
    assert got == expected
