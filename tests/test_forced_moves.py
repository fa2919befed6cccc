"""No wasted searches: a position with one legal move is played at once, gives no
example in self-play, and is answered at once by the CPU player."""

from __future__ import annotations

import numpy as np
import torch
from test_search_fpu import Y, double_move_position
from test_search_suggest import request

from hexz_tasks import hexz_pb2
from hexz_tasks.engine import Board
from hexz_tasks.examples import decode_array, from_columns
from hexz_tasks.inference import Evaluator
from hexz_tasks.model import HexzNet
from hexz_tasks.selfplay import play_games
from hexz_tasks.settings import Settings
from hexz_tasks.suggest import suggest_move


def next_player(board: Board, mover: int) -> int:
    return 1 - mover if board.has_legal_move(1 - mover) else mover


def test_selfplay_plays_forced_moves_without_examples() -> None:
    """Replays each game from its examples: every move between two examples (and after
    the last) is the only legal move of the player to move; every example has a choice."""
    torch.manual_seed(0)
    settings = Settings(runs_per_move=8, games_in_flight=4, dirichlet_concentration=0.35)
    forced = 0
    for game in play_games(HexzNet("conv2d", 1, 8), 8, settings, seed=3):
        forced_before = forced
        examples = from_columns(game.columns)
        first = examples[0]
        assert first.move.move == 0 and first.turn == 0
        board = Board.from_tensor(decode_array(first.board, first.encoding, "board"))
        p, number = 0, 0
        for ex in examples:
            while number < ex.move.move:
                (move,) = board.legal_moves(p)  # forced: exactly one
                board.make_move(p, move)
                forced += 1
                p, number = next_player(board, p), number + 1
            assert ex.turn == p
            np.testing.assert_array_equal(
                decode_array(ex.board, ex.encoding, "board"), board.tensor(p)
            )
            assert decode_array(ex.action_mask, ex.encoding, "mask").sum() >= 2
            typ = 0 if ex.move.cell_type == hexz_pb2.Field.FLAG else 1
            (move,) = [m for m in board.legal_moves(p) if m[:3] == (typ, ex.move.row, ex.move.col)]
            board.make_move(p, move)
            p, number = next_player(board, p), number + 1
        while not board.game_over():
            (move,) = board.legal_moves(p)
            board.make_move(p, move)
            forced += 1
            p, number = next_player(board, p), number + 1
        assert number == game.num_moves
        assert forced - forced_before == game.forced_moves
        assert board.score() == game.score
    assert forced > 0  # forced moves are common near the end of a game


class CountingEvaluator(Evaluator):
    """The real evaluator, counting its batches."""

    calls = 0

    def __call__(self, boards: np.ndarray, masks: np.ndarray):
        self.calls += 1
        return super().__call__(boards, masks)


def test_the_cpu_player_answers_a_forced_move_at_once() -> None:
    """Y is player 0's only move; after it player 0 moves again (A or B): a search would
    evaluate those positions too."""
    board = Board.from_tensor(double_move_position())
    assert board.legal_moves(0) == [(1, *Y, 1)]
    torch.manual_seed(0)
    evaluator = CountingEvaluator(HexzNet("conv2d", 1, 8))
    resp = hexz_pb2.SuggestMoveResponse.FromString(
        suggest_move(evaluator, request(board, 0, max_iterations=50))
    )
    assert evaluator.calls == 1  # the root's value, nothing else
    assert (resp.move.row, resp.move.col) == Y and resp.move.player_num == 1
    (only,) = resp.move_stats.moves
    assert [s.score for s in only.scores] == [1.0, 1.0]
    assert -1 <= resp.move_stats.value <= 1
    # With a choice, the same request searches.
    board.make_move(0, (1, *Y, 1))
    searched = CountingEvaluator(HexzNet("conv2d", 1, 8))
    suggest_move(searched, request(board, 0, max_iterations=50))
    assert searched.calls > 1
