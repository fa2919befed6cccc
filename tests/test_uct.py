"""The game server's CPU player (shared/spec/uct-baseline.md) on built positions.

In the built position every line of play after the root's move is forced, so each root
child's result is fixed and the root's statistics can be recomputed exactly by the short
re-statement of the spec's UCB rule below.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest

from hexz_tasks._uct import UctSearch
from hexz_tasks.engine import Board

W = (4, 4)  # player 0 may play a 3 here (capturing the grass 3 at G), player 1 a 1
G = (4, 5)
LS = [(8, 2), (8, 6), (2, 7)]  # player 0 may play a 1 here; nobody else may


def built_position(p1_score: int) -> np.ndarray:
    """Player 0 (score 3) to move, player 1 with `p1_score` (5 or 6); no flags left;
    every other cell is blocked for both.

    Playing W first takes player 1's only move: player 0 wins 12:p1_score. Any L first
    lets player 1 take W (+1), and player 0 ends with 6: a loss (p1_score 6) or a draw (5).
    """
    t = np.zeros((11, 11, 10), dtype=np.float32)
    t[2] = t[7] = 1  # blocked for both everywhere
    t[1, 10, 0] = 3  # a 3 of player 0
    t[6, 0, 0] = 5  # a 5 of player 1 (and a 1 for score 6)
    if p1_score == 6:
        t[6, 0, 8] = 1
    t[10][G] = 3
    t[2][W], t[3][W] = 0, 3
    t[7][W], t[8][W] = 0, 1
    for cell in LS:
        t[2][cell], t[3][cell] = 0, 1
    return t


@pytest.mark.parametrize("p1_score, l_result", [(6, -1), (5, 0)])
def test_built_position_is_what_it_claims(p1_score: int, l_result: int) -> None:
    b = Board.from_tensor(built_position(p1_score))
    assert b.score() == (3, p1_score)
    assert sorted(b.legal_moves(0)) == sorted([(1, *W, 3)] + [(1, *c, 1) for c in LS])
    assert b.legal_moves(1) == [(1, *W, 1)]
    win = b.copy()
    win.make_move(0, (1, *W, 3))
    assert not win.has_legal_move(1)
    assert win.score() == (9, p1_score)
    for first in LS:
        other = b.copy()
        other.make_move(0, (1, *first, 1))
        other.make_move(1, (1, *W, 1))
        assert not other.has_legal_move(1)
        for cell in LS:
            if cell != first:
                other.make_move(0, (1, *cell, 1))
        assert other.game_over() and other.result() == l_result


@pytest.mark.parametrize("seed", range(8))
def test_the_one_move_win_is_found_at_small_n(seed: int) -> None:
    u = UctSearch(seed)
    assert u.search(Board.from_tensor(built_position(6)), 0, iterations=4) == 4
    assert u.best_move() == (1, *W, 3)
    c = u.children()
    best = u.best_child()
    assert c["q"][best] == 1.0 and c["count"][best] == c["wins"][best] >= 1
    assert c["count"].sum() == 4


def restated_root_statistics(
    results: list[int], first: int, iterations: int, c: float = 1.0
) -> tuple[list[int], list[int]]:
    """The spec's root statistics when child i always scores results[i] (its mover's
    view) and the first iteration picked child `first`: counts and wins per child."""
    count = [0] * len(results)
    wins = [0] * len(results)
    count[first], wins[first] = 1, results[first]
    for n in range(1, iterations):  # n: the root's count before this iteration
        best, best_ucb = 0, -math.inf
        for i in range(len(results)):
            if count[i] == 0:
                ucb = 0.5 + c * math.sqrt(math.log(n))
            else:
                ucb = 0.5 + wins[i] / (2.0 * count[i]) + c * math.sqrt(math.log(n) / count[i])
            if ucb > best_ucb:  # the first of equals
                best, best_ucb = i, ucb
        count[best] += 1
        wins[best] += results[best]
    return count, wins


@pytest.mark.parametrize("p1_score, l_result", [(6, -1), (5, 0)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_root_statistics_match_the_worked_example(p1_score: int, l_result: int, seed: int) -> None:
    board = Board.from_tensor(built_position(p1_score))
    probe = UctSearch(seed)
    probe.search(board, 0, iterations=1)
    first = int(np.flatnonzero(probe.children()["count"])[0])  # the random expansion pick
    u = UctSearch(seed)
    u.search(board, 0, iterations=60)
    c = u.children()
    results = [1 if tuple(m) == (1, *W, 3) else l_result for m in c["moves"]]
    count, wins = restated_root_statistics(results, first, 60)
    assert c["count"].tolist() == count
    assert c["wins"].tolist() == wins
    assert c["q"] == pytest.approx(
        [0.5 + w / (2 * n) if n else 0.0 for w, n in zip(wins, count, strict=True)]
    )
    # The losing (or drawn) moves are still tried, as UCB1 demands, but rarely.
    assert min(count) >= 1 and max(count) == count[results.index(1)] > 30


def test_children_are_flag_moves_then_normal_moves_row_major() -> None:
    rng = np.random.default_rng(5)
    b, p = Board.random(5), 0
    for _ in range(6):  # a flag each (no normal move yet), then normal moves
        moves = b.legal_moves(p)
        pick = [m for m in moves if m[0] == 1] or moves
        b.make_move(p, pick[rng.integers(len(pick))])
        p = 1 - p
    assert b.flags_left(p) == 2
    assert {m[0] for m in b.legal_moves(p)} == {0, 1}
    u = UctSearch(1)
    u.search(b, p, iterations=50)
    moves = [tuple(m) for m in u.children()["moves"].tolist()]
    legal = b.legal_moves(p)
    assert moves == [m for m in legal if m[0] == 0] + [m for m in legal if m[0] == 1]
    assert u.iterations == 50 == int(u.children()["count"].sum())


def test_a_search_is_deterministic_for_its_seed() -> None:
    b = Board.random(9)
    runs = []
    for _ in range(2):
        u = UctSearch(42)
        u.search(b, 0, iterations=500)
        runs.append(u.children())
    assert np.array_equal(runs[0]["count"], runs[1]["count"])
    assert np.array_equal(runs[0]["wins"], runs[1]["wins"])
    other = UctSearch(43)
    other.search(b, 0, iterations=500)
    assert not np.array_equal(other.children()["wins"], runs[0]["wins"])


def test_think_time_bounds_the_search() -> None:
    u = UctSearch(3)
    t0 = time.monotonic()
    n = u.search(Board.random(3), 0, think_ms=30)
    elapsed = time.monotonic() - t0
    assert 0.03 <= elapsed < 1.0
    assert n == u.iterations > 10
    # With both limits, the first one reached ends the search.
    assert u.search(Board.random(3), 0, iterations=20, think_ms=10_000) == 20


def test_the_gil_is_released_while_searching() -> None:
    u = UctSearch(4)
    done = threading.Event()

    def search() -> None:
        u.search(Board.random(4), 0, think_ms=300)
        done.set()

    thread = threading.Thread(target=search)
    thread.start()
    ticks = 0
    while not done.is_set():
        ticks += 1
        time.sleep(0.001)
    thread.join(5)
    # Holding the GIL, the search would have blocked this loop for its 300 ms.
    assert ticks > 20


def test_bad_use_is_a_value_error() -> None:
    b = Board.from_tensor(built_position(6))
    u = UctSearch(0)
    with pytest.raises(ValueError, match="player must be 0 or 1"):
        u.search(b, 2, iterations=5)
    stuck = b.copy()
    stuck.make_move(0, (1, *W, 3))
    with pytest.raises(ValueError, match="player 1 has no legal move"):
        u.search(stuck, 1, iterations=5)
    with pytest.raises(ValueError, match="set iterations or think_ms"):
        u.search(b, 0)
    with pytest.raises(ValueError, match=">= 0"):
        u.search(b, 0, iterations=-1)
    with pytest.raises(ValueError, match="shape"):
        u.search(np.zeros((3, 3)), 0, iterations=5)
    with pytest.raises(ValueError, match="no search has run"):
        UctSearch(0).best_child()
    with pytest.raises(ValueError, match="uct_c"):
        UctSearch(0, uct_c=-1.0)
