"""Replays the 100 recorded games of the reference engine move by move."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from hexz_tasks.engine import Board

FIXTURES = Path(__file__).resolve().parent / "data"
GAMES_FILE = FIXTURES / "flagz-reference-games.jsonl.gz"


def _load_games() -> list[dict]:
    with gzip.open(GAMES_FILE, "rt") as f:
        return [json.loads(line) for line in f]


GAMES = _load_games()


def _tensor(flat: list[int]) -> np.ndarray:
    return np.asarray(flat, dtype=np.float32).reshape(11, 11, 10)


def test_all_100_games_are_there() -> None:
    assert len(GAMES) == 100


@pytest.mark.parametrize("game", GAMES, ids=lambda g: f"seed{g['seed']}")
def test_reference_game_replays_exactly(game: dict) -> None:
    board = Board.from_tensor(_tensor(game["initial"]))
    np.testing.assert_array_equal(board.tensor(0), _tensor(game["initial"]))
    player = 0
    for k, step in enumerate(game["steps"]):
        # The turn order follows the rules: the other player unless they cannot move.
        if not board.has_legal_move(player):
            player = 1 - player
        assert step["turn"] == player, f"step {k}: wrong player to move"
        moves = board.legal_moves(player)
        # The fixture's order is its own (sorted as text); the engine's is row-major,
        # flag first. Compare the sets, with no duplicates on either side.
        assert len(set(moves)) == len(moves) == len(step["moves"]), f"step {k}: counts differ"
        assert set(moves) == {tuple(m) for m in step["moves"]}, f"step {k}: legal moves differ"
        assert moves == sorted(moves, key=lambda m: (m[1], m[2], m[0]))
        assert board.num_legal_moves(player) == len(moves)
        mask = board.action_mask(player)
        assert mask.sum() == len(moves)
        assert all(mask[t, r, c] for t, r, c, _ in moves)
        board.make_move(player, tuple(step["move"]))
        after = _tensor(step["after"])
        if not np.array_equal(board.tensor(0), after):
            diff = np.argwhere(board.tensor(0) != after)
            pytest.fail(f"step {k}: board differs at [channel, row, col] {diff[:5].tolist()}")
        player = 1 - player
    assert board.game_over()
    assert not board.has_legal_move(0) and not board.has_legal_move(1)
    assert list(board.score()) == game["score"]
    assert board.result() == game["result"]
