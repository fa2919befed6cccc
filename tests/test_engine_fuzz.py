"""Bad input never crashes the engine: from_tensor and make_move fuzzed with hypothesis."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hexz_tasks.engine import Board

SHAPE = (11, 11, 10)
INVALID = np.zeros((11, 10), dtype=bool)
INVALID[1::2, 9] = True


def _played(seed: int, n: int) -> Board:
    b = Board.random(seed)
    rng = np.random.default_rng(seed)
    for k in range(n):
        moves = b.legal_moves(k % 2)
        if moves:
            b.make_move(k % 2, moves[rng.integers(len(moves))])
    return b


def _check_decoded(a: np.ndarray) -> None:
    try:
        b = Board.from_tensor(a)
    except ValueError as e:
        assert str(e)
        return
    # Accepted: the board encodes back to the input, invalid cells made blocked.
    expected = a.copy()
    expected[[2, 7]] = np.where(INVALID, 1, expected[[2, 7]])
    np.testing.assert_array_equal(b.tensor(0), expected)
    for p in (0, 1):
        assert b.num_legal_moves(p) == len(b.legal_moves(p))
    b.random_playout(0, seed=0)


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(np.float32, SHAPE, elements=st.floats(width=32, allow_nan=True)))
def test_fuzz_from_tensor_arbitrary_floats(a: np.ndarray) -> None:
    _check_decoded(a)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 50),
    st.integers(0, 120),
    st.lists(
        st.tuples(
            st.integers(0, 10),
            st.integers(0, 10),
            st.integers(0, 9),
            st.sampled_from([-1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.5, np.nan, np.inf]),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_fuzz_from_tensor_small_edits_of_real_boards(
    seed: int, n: int, edits: list[tuple[int, int, int, float]]
) -> None:
    a = _played(seed, n).tensor(seed % 2)
    for ch, r, c, v in edits:
        a[ch, r, c] = v
    _check_decoded(a)


@pytest.mark.parametrize(
    ("a", "message"),
    [
        (np.zeros((11, 11, 9), np.float32), "shape"),
        (np.zeros((1210,), np.float32), "shape"),
        (Board().tensor(0).astype(np.float64), "dtype"),
        (Board().tensor(0).astype(np.int32), "dtype"),
        ([[0.0]], "numpy array"),
        (None, "numpy array"),
    ],
)
def test_from_tensor_wrong_shape_or_type(a: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Board.from_tensor(a)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ((1, 0, 0, 7.0), "expected an integer in 0..5"),
        ((0, 0, 0, 0.5), "integer"),
        ((4, 3, 3, 2.0), "not constant"),
        ((10, 1, 9, 3.0), "invalid cell"),
        ((3, 0, 0, 2.0), "blocked cell"),  # (0, 0) is a rock on this board
    ],
)
def test_from_tensor_impossible_contents(edit: tuple[int, int, int, float], message: str) -> None:
    a = Board().tensor(0)
    a[2, 0, 0] = a[7, 0, 0] = 1
    ch, r, c, v = edit
    a[ch, r, c] = v
    with pytest.raises(ValueError, match=message):
        Board.from_tensor(a)


def test_from_tensor_two_pieces_in_a_cell() -> None:
    a = Board().tensor(0)
    a[[2, 7], 4, 4] = 1
    a[0, 4, 4] = a[6, 4, 4] = 1
    with pytest.raises(ValueError, match="more than one piece"):
        Board.from_tensor(a)


def test_from_tensor_accepts_non_contiguous_arrays() -> None:
    b = _played(3, 30)
    a = np.asfortranarray(b.tensor(0))
    assert Board.from_tensor(a) == b


moves = st.tuples(*[st.integers(-300, 300) | st.integers(-1, 11)] * 4)
odd_moves = st.one_of(
    moves,
    st.lists(st.integers(-2, 12), max_size=6),
    st.text(max_size=4),
    st.none(),
    st.tuples(st.floats(), st.integers(), st.integers(), st.integers()),
)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 30), st.integers(0, 90), st.integers(-2, 3), st.data())
def test_fuzz_make_move(seed: int, n: int, player: int, data: st.DataObject) -> None:
    b = _played(seed, n)
    legal_moves = b.legal_moves(player) if player in (0, 1) else []
    candidates = odd_moves | st.sampled_from(legal_moves) if legal_moves else odd_moves
    move = data.draw(candidates)
    before = b.tensor(0)
    legal = isinstance(move, tuple) and move in legal_moves
    try:
        b.make_move(player, move)  # type: ignore[arg-type]
    except ValueError as e:
        assert not legal and str(e)
        np.testing.assert_array_equal(b.tensor(0), before)
        return
    assert legal
    assert not np.array_equal(b.tensor(0), before)
