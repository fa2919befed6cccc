"""Property tests over random games, and the C++ engine against the pure-NumPy rules."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.numpy_flagz import NumpyBoard
from hexz_tasks.engine import Board

SWAP = [5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 10]
INVALID = np.zeros((11, 10), dtype=bool)
INVALID[1::2, 9] = True


def check_invariants(b: Board) -> None:
    t = b.tensor(0)
    np.testing.assert_array_equal(b.tensor(1), t[SWAP])
    assert set(np.unique(t).tolist()) <= {0, 1, 2, 3, 4, 5}
    occupied = (t[[0, 1, 5, 6, 10]] > 0).sum(axis=0)
    assert occupied.max() <= 1
    for p in (0, 1):
        flag, value, blocked, nxt, left = t[5 * p : 5 * p + 5]
        assert (nxt[blocked == 1] == 0).all(), "blocked cells have next 0"
        assert (left == left[0, 0]).all(), "flags-left channel is constant"
        assert left[0, 0] + flag.sum() == 3, "flags left + flags placed = 3"
        assert blocked[INVALID].all() and not nxt[INVALID].any() and not value[INVALID].any()
        assert (blocked[occupied == 1] == 1).all() and (nxt[occupied == 1] == 0).all()
        mask = b.action_mask(p)
        assert mask.sum() == b.num_legal_moves(p) == len(b.legal_moves(p))
        np.testing.assert_array_equal(mask[1], nxt > 0)
        np.testing.assert_array_equal(mask[0], (blocked == 0) & (left > 0) & ~INVALID)
    assert not t[10][INVALID].any()
    # The stored tensor round-trips.
    again = Board.from_tensor(t)
    assert again == b
    assert again.legal_moves(0) == b.legal_moves(0) and again.legal_moves(1) == b.legal_moves(1)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**64 - 1), st.randoms(use_true_random=False))
def test_invariants_hold_after_every_move(seed: int, rnd) -> None:
    b = Board.random(seed)
    check_invariants(b)
    p, n, last_score = 0, 0, (0, 0)
    while True:
        if not b.has_legal_move(p):
            p = 1 - p
            if not b.has_legal_move(p):
                break
        b.make_move(p, rnd.choice(b.legal_moves(p)))
        n += 1
        check_invariants(b)
        score = b.score()
        assert score[p] > last_score[p] or score == last_score  # flags score nothing
        assert score[1 - p] == last_score[1 - p]
        last_score = score
        p = 1 - p
    assert b.game_over() and n > 20
    s0, s1 = b.score()
    assert b.result() == (s0 > s1) - (s0 < s1)


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 2**63 - 1))
def test_numpy_rules_agree_with_the_engine(seed: int) -> None:
    """Differential: same start, same moves; legal moves and boards must agree."""
    b = Board.random(seed)
    nb = NumpyBoard(b.tensor(0))
    rng = np.random.default_rng(seed)
    p = 0
    while True:
        moves = b.legal_moves(p)
        assert moves == nb.legal_moves(p)
        if not moves:
            p = 1 - p
            moves = b.legal_moves(p)
            assert moves == nb.legal_moves(p)
            if not moves:
                break
        move = moves[rng.integers(len(moves))]
        b.make_move(p, move)
        nb.make_move(p, move)
        np.testing.assert_array_equal(b.tensor(0), nb.b)
        p = 1 - p
    assert b.score() == nb.score() and b.result() == nb.result()


def test_numpy_random_boards_follow_the_layout() -> None:
    nb = NumpyBoard.random(np.random.default_rng(0))
    board = Board.from_tensor(nb.b)
    assert sorted(nb.b[10][nb.b[10] > 0].tolist()) == [1, 2, 3, 4, 5]
    assert ((nb.b[2] == 1) & (nb.b[7] == 1)).sum() == 25
    result = nb.random_playout(0, np.random.default_rng(1))
    assert result == nb.result() and not nb.legal_moves(0) and not nb.legal_moves(1)
    assert board.num_legal_moves(0) == 85
