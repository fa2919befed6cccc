"""Leaf values mixed with random playouts (HEXZ_RANDOM_PLAYOUTS, HEXZ_RANDOM_PLAYOUT_WEIGHT):
(1 - w) * the network's value + w * the playouts' mean result; w = 1 (the reference)
replaces the network's value."""

from __future__ import annotations

import numpy as np
import pytest
from test_search_tree import X, Y, built_position, constant_value, position

from hexz_tasks._search import Search
from hexz_tasks.arena import Player, play_match
from hexz_tasks.players import parse_baseline
from hexz_tasks.selfplay import search_kwargs
from hexz_tasks.settings import Settings, SettingsError


def first_visits(weight: float, playouts: int = 1) -> dict[tuple[int, int], float]:
    """Each root child of the built position after one visit: its wins (player 0's view).

    Every playout after Y ends 8:5 for player 0 (player 1 is stuck, player 0 plays X);
    every playout after X ends 6:10 (player 1 takes Y). The network says 0.2 for the
    player to move everywhere."""
    s = Search(
        built_position(), 0, seed=3, uct_c=10.0, random_playouts=playouts,
        random_playout_weight=weight,
    )  # fmt: skip
    s.run(constant_value(0.2), 3, greedy=True)  # the root, then each child once
    children = s.children()
    assert children["visits"].tolist() == [1, 1]
    cells = [(int(m[1]), int(m[2])) for m in children["moves"]]
    return dict(zip(cells, children["wins"].tolist(), strict=True))


@pytest.mark.parametrize("weight", [0.0, 0.25, 1.0])
def test_the_leaf_value_is_the_mix(weight: float) -> None:
    wins = first_visits(weight)
    mixed = (1 - weight) * 0.2 + weight * 1.0  # for the player to move at the leaf
    # After Y player 1 is stuck: player 0 moves again, and 0.2 and the win are its.
    assert wins[Y] == pytest.approx(mixed)
    # After X player 1 moves: 0.2 and the win are player 1's.
    assert wins[X] == pytest.approx(-mixed)


def test_without_playouts_the_weight_does_nothing() -> None:
    assert first_visits(0.5, playouts=0) == pytest.approx({X: -0.2, Y: 0.2})


def children_of(eval_cache: bool) -> tuple[dict[str, np.ndarray], int]:
    s = Search(
        *position(4, 10), seed=4, random_playouts=1, random_playout_weight=0.5,
        eval_cache=eval_cache,
    )  # fmt: skip
    s.run(constant_value(0.3), 400)
    return s.children(), s.cache_hits


def test_a_transposition_mixes_the_network_value_with_its_own_playout() -> None:
    """The cache hands out the network's value, not the other node's mixed one: the
    search is the same with and without it (the playouts draw the same numbers)."""
    cached, hits = children_of(eval_cache=True)
    plain, no_hits = children_of(eval_cache=False)
    assert hits > 0 and no_hits == 0
    np.testing.assert_array_equal(cached["visits"], plain["visits"])
    np.testing.assert_array_equal(cached["wins"], plain["wins"])


def test_the_setting_reaches_the_search_and_is_checked() -> None:
    assert search_kwargs(Settings.from_env({}))["random_playout_weight"] == 1.0
    s = Settings.from_env({"HEXZ_RANDOM_PLAYOUTS": "1", "HEXZ_RANDOM_PLAYOUT_WEIGHT": "0.4"})
    assert search_kwargs(s)["random_playout_weight"] == pytest.approx(0.4)
    for bad in ("-0.5", "1.01", "nan"):
        with pytest.raises(SettingsError, match="HEXZ_RANDOM_PLAYOUT_WEIGHT"):
            Settings.from_env({"HEXZ_RANDOM_PLAYOUT_WEIGHT": bad})
    with pytest.raises(ValueError, match="random_playout_weight"):
        Search(built_position(), 0, random_playout_weight=2.0)


def test_the_arenas_pure_mcts_ignores_the_mix() -> None:
    """Pure MCTS has no network value to mix: its playouts are its values whatever the
    setting (else, at weight 0, every leaf would be worth 0)."""
    players = [Player(parse_baseline("mcts:40")), Player(parse_baseline("random"))]
    games = [
        play_match(*players, 4, 40, 7, Settings(random_playout_weight=w)).games for w in (1.0, 0.0)
    ]
    key = [(g["score"], g["moves"]) for g in games[0]]
    assert key == [(g["score"], g["moves"]) for g in games[1]]
