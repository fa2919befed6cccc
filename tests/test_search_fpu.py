"""First-play urgency after a double move (a stuck player is skipped), on a built position.

The parent's Q is from the view of the player who made the parent's move; an unvisited
child's move is made by the parent's player to move. After a double move both are the
same player, so the parent's Q must not be negated (HEXZ_FPU_REFERENCE keeps the
reference's rule, which negates whenever parent and child have different next_turn).
"""

from __future__ import annotations

import numpy as np
import pytest

from hexz_tasks._search import Search
from hexz_tasks.engine import Board
from hexz_tasks.selfplay import search_kwargs
from hexz_tasks.settings import Settings

Y = (5, 4)  # player 0 may play a 1 here, player 1 too (its only move)
A, B = (5, 5), (5, 3)  # neighbours of Y: player 0 may play a 2 there once Y is taken
A_INDEX, B_INDEX = 110 + 55, 110 + 53  # policy indices of the normal moves at A and B


def double_move_position() -> np.ndarray:
    """Player 0 to move, no flags, every cell blocked except Y (both players), A and B
    (player 0, no next value yet). After Y player 1 is stuck: player 0 moves again."""
    t = np.zeros((11, 11, 10), dtype=np.float32)
    t[2] = t[7] = 1
    t[2][Y], t[3][Y] = 0, 1
    t[7][Y], t[8][Y] = 0, 1
    t[2][A] = t[2][B] = 0
    return t


def test_the_position_has_a_double_move() -> None:
    b = Board.from_tensor(double_move_position())
    assert b.legal_moves(0) == [(1, *Y, 1)] and b.legal_moves(1) == [(1, *Y, 1)]
    b.make_move(0, (1, *Y, 1))
    assert not b.has_legal_move(1)
    assert sorted(b.legal_moves(0)) == [(1, *B, 2), (1, *A, 2)]


def network(boards: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values by the number of player 0's pieces (player 0 is always to move here):
    0.9 after Y, 0.0 after Y and A (or B); priors uniform, except after Y: all on A."""
    n = len(boards)
    priors = masks.reshape(n, -1).astype(np.float32)
    priors /= np.maximum(priors.sum(1, keepdims=True), 1)
    values = np.zeros(n, np.float32)
    for k in range(n):
        pieces = int(np.count_nonzero(boards[k, 1]))  # the player to move's values
        if pieces == 1:
            values[k] = 0.9
            priors[k] = 0
            priors[k, A_INDEX] = 1
    return priors, values


@pytest.mark.parametrize("reference", [False, True])
def test_first_play_urgency_after_a_double_move(reference: bool) -> None:
    """Run 1 expands the root (one child, Y), run 2 expands Y (0.9 for player 0, who
    moves again), run 3 expands A (prior 1; value 0.0). Run 4 at Y (Q 0.45 for player 0):
    A scores 0 + 0.1 * 1 * sqrt(2) / 2 = 0.07; unvisited B scores its first-play urgency,
    0.45 - 0.3 = 0.15 (fixed: B is tried) or -0.45 - 0.3 = -0.75 (reference: A again,
    one level deeper)."""
    s = Search(double_move_position(), 0, seed=1, uct_c=0.1, fpu_reference=reference)
    s.run(network, 4, greedy=True)
    stats = s.stats()
    assert stats["nodes_per_depth"][:3] == [1, 1, 2]
    if reference:
        assert stats["max_visit_count_per_depth"][2] == 2  # A twice, B never
        assert stats["search_depth"] == 3
    else:
        assert stats["max_visit_count_per_depth"][2] == 1  # A and B once each
        assert stats["search_depth"] == 2


def test_without_a_double_move_both_rules_agree() -> None:
    """Where turns alternate, both rules negate: the searches are identical."""
    board = Board.random(21)
    children = []
    for reference in (False, True):
        s = Search(board, 0, seed=4, fpu_reference=reference)
        s.run(network, 200)
        children.append(s.children())
    assert np.array_equal(children[0]["visits"], children[1]["visits"])
    assert np.array_equal(children[0]["wins"], children[1]["wins"])


def test_the_setting_reaches_the_search() -> None:
    assert search_kwargs(Settings.from_env({}))["fpu_reference"] is False
    on = Settings.from_env({"HEXZ_FPU_REFERENCE": "true"})
    assert search_kwargs(on)["fpu_reference"] is True
