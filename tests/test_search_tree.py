"""The search tree of shared/spec/selfplay-and-training.md, on built positions.

Networks here are plain functions (boards, masks) -> (priors, values), so every
number the search sees is known exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

from hexz_tasks._search import Search
from hexz_tasks.engine import Board

X = (2, 2)  # player 0 may play a 3 here
Y = (6, 6)  # player 0 may play a 2 here, player 1 a 5


def built_position() -> np.ndarray:
    """Player 0 (score 3) to move against player 1 (score 5); no flags left; every cell
    is blocked except X and Y, far apart.

    Playing Y first takes player 1's only move: player 1 is skipped, player 0 also
    plays X and wins 8:5. Playing X first lets player 1 take Y and win 6:10.
    """
    t = np.zeros((11, 11, 10), dtype=np.float32)
    t[2] = t[7] = 1  # blocked for both everywhere
    t[1, 9, 1] = 3  # a 3 of player 0
    t[6, 0, 8] = 5  # a 5 of player 1
    t[2][X], t[3][X] = 0, 3
    t[2][Y], t[3][Y] = 0, 2
    t[7][Y], t[8][Y] = 0, 5
    return t


def position(seed: int, n_moves: int) -> tuple[Board, int]:
    """The board after `n_moves` random moves, and the player to move."""
    rng = np.random.default_rng(seed)
    b, p = Board.random(seed), 0
    for _ in range(n_moves):
        moves = b.legal_moves(p)
        b.make_move(p, moves[rng.integers(len(moves))])
        p = 1 - p if b.has_legal_move(1 - p) else p
    return b, p


def uniform(boards: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An uninformative network: uniform priors over legal moves, value 0."""
    m = masks.reshape(len(masks), -1).astype(np.float32)
    return m / np.maximum(m.sum(1, keepdims=True), 1), np.zeros(len(masks), np.float32)


def constant_value(v: float):
    def evaluate(boards: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        priors, _ = uniform(boards, masks)
        return priors, np.full(len(masks), v, np.float32)

    return evaluate


def child_index(search: Search, cell: tuple[int, int]) -> int:
    moves = search.children()["moves"]
    return next(i for i, m in enumerate(moves) if (m[1], m[2]) == cell)


def test_built_position_is_what_it_claims() -> None:
    b = Board.from_tensor(built_position())
    assert b.score() == (3, 5)
    assert sorted(b.legal_moves(0)) == [(1, *X, 3), (1, *Y, 2)]
    assert b.legal_moves(1) == [(1, *Y, 5)]
    win = b.copy()
    win.make_move(0, (1, *Y, 2))
    assert not win.has_legal_move(1)
    win.make_move(0, (1, *X, 3))
    assert win.game_over() and win.result() == 1
    lose = b.copy()
    lose.make_move(0, (1, *X, 3))
    lose.make_move(1, (1, *Y, 5))
    assert lose.game_over() and lose.result() == -1


@pytest.mark.parametrize("greedy", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_uninformative_network_finds_the_winning_move(greedy: bool, seed: int) -> None:
    s = Search(built_position(), 0, seed)
    s.run(uniform, 30, greedy=greedy)
    best = s.most_visited_child()
    c = s.children()
    assert tuple(c["moves"][best]) == (1, *Y, 2)
    # The network's 0 on the first visit, then the terminal win on every later one.
    assert c["wins"][best] == c["visits"][best] - 1
    # Only the root, X and Y are evaluated; all other runs end in terminal positions.
    assert s.evaluations == 3


def test_the_winning_move_on_a_random_board_position() -> None:
    """A real position: with the win one move away, the search plays it."""
    b = Board.from_tensor(built_position())
    b.make_move(0, (1, *Y, 2))  # player 1 is now stuck, player 0 to move again
    s = Search(b, 1, seed=0)  # player 1 is passed in but cannot move: the root skips
    s.run(uniform, 5)
    assert s.root_player == 0
    assert s.children()["moves"].tolist() == [[1, *X, 3]]
    assert s.children()["q"][0] == 1.0


def test_values_are_backed_up_with_the_right_sign_through_skipped_turns() -> None:
    v = 0.5  # every non-terminal position looks good for its player to move
    s = Search(built_position(), 0, seed=1)
    s.run(constant_value(v), 60)
    c = s.children()
    iy, ix = child_index(s, Y), child_index(s, X)
    # After Y player 1 is skipped: the next player is player 0 again, so the network's
    # +v (player 0's view) counts for player 0, the mover of Y; then every further
    # visit reaches the terminal win (+1).
    assert c["next_turn"][iy] == 0
    k = c["visits"][iy]
    assert k >= 2
    assert c["wins"][iy] == pytest.approx(v + (k - 1) * 1.0)
    # After X player 1 moves: +v is player 1's view, -v for player 0; then the loss.
    assert c["next_turn"][ix] == 1
    k = c["visits"][ix]
    assert k >= 2
    assert c["wins"][ix] == pytest.approx(-v - (k - 1) * 1.0)
    # The root holds the network's value for player 0, Q values stay in [-1, 1].
    assert s.root_value == v
    assert np.all(np.abs(c["q"]) <= 1.0)


def test_visit_counts_add_up() -> None:
    s = Search(Board.random(7), 0, seed=3)
    evals = s.run(constant_value(-0.1), 200)
    c = s.children()
    assert s.root_visits == 200 == s.counted_runs
    assert s.reused_runs == 0
    # The first run expands the root; every later run passes through one child.
    assert c["visits"].sum() == s.root_visits - 1
    assert evals == s.evaluations <= 200
    stats = s.stats()
    assert stats["visit_count"] == 200
    assert stats["valid_moves"] == s.num_children == len(Board.random(7).legal_moves(0))
    assert stats["max_child_vc"] == c["visits"].max()
    assert stats["min_child_vc"] == c["visits"].min()
    assert stats["visited_children"] == (c["visits"] > 0).sum()
    assert sum(stats["nodes_per_depth"]) == stats["search_tree_size"] == s.tree_size
    assert stats["nodes_per_depth"][:2] == [1, s.num_children]
    assert stats["max_visit_count_per_depth"][0] == 200


def test_reused_runs_are_not_counted() -> None:
    s = Search(Board.random(11), 0, seed=5)
    s.run(uniform, 300)
    best = s.most_visited_child()
    kept_visits = s.children()["visits"][best]
    assert kept_visits > 10
    s.make_move(best)
    # The kept subtree: children stay, visits and wins are zeroed.
    assert s.root_visits == 0 and s.num_children > 0
    assert s.children()["visits"].sum() == 0 and s.children()["wins"].sum() == 0
    assert s.stats()["max_visit_count_per_depth"] == [0] * len(s.stats()["nodes_per_depth"])
    evals = s.run(uniform, 50)
    assert s.counted_runs == 50
    assert s.reused_runs > 0
    assert s.root_visits == 50 + s.reused_runs
    assert s.children()["visits"].sum() == s.root_visits - 1
    # Counted runs are expansions or terminal positions; reused runs cost nothing.
    assert evals == s.evaluations <= 50


def test_dirichlet_noise_is_mixed_in_with_weight_one_quarter_once_per_move() -> None:
    board = Board.random(5)
    s = Search(board, 0, seed=9, dirichlet_concentration=0.35)
    boards = np.zeros((1, 11, 11, 10), np.float32)
    masks = np.zeros((1, 2, 11, 10), bool)
    s.start_move(40, noise=True)
    assert s.advance(boards, masks)
    priors, values = uniform(boards, masks)
    s.feed(priors[0], values[0])
    p = 1.0 / s.num_children
    mixed = s.children()["prior"]
    d = (mixed - 0.75 * p) / 0.25  # the Dirichlet sample
    assert np.all(d >= -1e-6)
    assert d.sum() == pytest.approx(1.0, abs=1e-5)
    assert d.std() > 0.01  # concentration 0.35 is far from uniform
    while s.advance(boards, masks):
        priors, values = uniform(boards, masks)
        s.feed(priors[0], values[0])
    assert np.array_equal(s.children()["prior"], mixed)  # once per move
    # Without noise the priors are the network's.
    plain = Search(board, 0, seed=9, dirichlet_concentration=0.35)
    plain.run(uniform, 40, noise=False)
    assert np.allclose(plain.children()["prior"], p)


def test_noise_on_a_reused_root_is_mixed_at_the_start_of_the_move() -> None:
    s = Search(Board.random(6), 0, seed=2, dirichlet_concentration=0.35)
    s.run(uniform, 200, noise=True)
    s.make_move(s.most_visited_child())
    assert s.num_children > 0
    before = s.children()["prior"]
    s.start_move(10, noise=True)
    d = (s.children()["prior"] - 0.75 * before) / 0.25
    assert np.all(d >= -1e-6)
    assert d.sum() == pytest.approx(1.0, abs=1e-5)


def test_suggest_mode_descends_by_puct_only() -> None:
    """Greedy runs never sample by prior: with a fixed network they are deterministic
    up to the children's random creation order, so the visit counts per move match."""
    board = Board.random(12)
    counts = []
    for seed in (1, 2):
        s = Search(board, 0, seed)
        s.run(constant_value(0.0), 100, greedy=True)
        c = s.children()
        counts.append(dict(zip(map(tuple, c["moves"].tolist()), c["visits"].tolist(), strict=True)))
    assert sum(counts[0].values()) == 99
    assert sorted(counts[0].values()) == sorted(counts[1].values())


def test_bad_use_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="shape"):
        Search(np.zeros((3, 3)), 0)
    with pytest.raises(ValueError, match="channel 0"):
        Search(np.full((11, 11, 10), 7, np.float32), 0)
    with pytest.raises(ValueError, match="player"):
        Search(Board.random(1), 2)
    s = Search(Board.random(1), 0)
    with pytest.raises(ValueError, match="advance"):
        s.feed(np.zeros(220, np.float32), 0.0)
    with pytest.raises(ValueError, match="no children"):
        s.most_visited_child()


def test_transpositions_take_the_cached_evaluation() -> None:
    seen: dict[bytes, int] = {}

    def counting(boards: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        key = boards.tobytes()
        seen[key] = seen.get(key, 0) + 1
        return uniform(boards, masks)

    s = Search(*position(4, 10), seed=4)
    s.run(counting, 400)
    assert s.cache_hits > 0
    assert max(seen.values()) == 1  # no position reached the network twice
    assert s.evaluations == len(seen)
    assert s.counted_runs == 400 >= s.evaluations + s.cache_hits
