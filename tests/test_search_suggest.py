"""suggest_move: a SuggestMoveRequest in the game server's format in, a response out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_search_tree import Y, built_position, position

from hexz_tasks import hexz_pb2
from hexz_tasks.engine import Board, encode_proto
from hexz_tasks.model import HexzNet
from hexz_tasks.settings import Settings
from hexz_tasks.suggest import suggest_move

FIXTURE_MODEL = Path(__file__).resolve().parent / "data" / "original-conv2d5-scriptmodule.pt"
FIELD = hexz_pb2.Field
FINAL = hexz_pb2.SuggestMoveStats.ScoreKind.Value("FINAL")
MCTS_PRIOR = hexz_pb2.SuggestMoveStats.ScoreKind.Value("MCTS_PRIOR")


def request(board: Board, player: int, move_number: int = 9, **limits: int) -> bytes:
    req = hexz_pb2.SuggestMoveRequest(game_engine_state=encode_proto(board, player, move_number))
    req.max_think_time_ms = limits.get("max_think_time_ms", 0)
    req.max_iterations = limits.get("max_iterations", 0)
    return req.SerializeToString()


@pytest.fixture(scope="module")
def tiny_net() -> HexzNet:
    torch.manual_seed(1)
    return HexzNet("conv2d", 1, 8)


def test_suggest_move_answers_a_real_request() -> None:
    board, player = position(3, 9)
    resp = hexz_pb2.SuggestMoveResponse.FromString(
        suggest_move(FIXTURE_MODEL, request(board, player, 9, max_iterations=60), Settings())
    )
    legal = board.legal_moves(player)
    m = resp.move
    assert m.player_num == player + 1 and m.move == 9
    assert m.cell_type in (FIELD.FLAG, FIELD.NORMAL)
    typ = 0 if m.cell_type == FIELD.FLAG else 1
    assert any(mv[:3] == (typ, m.row, m.col) for mv in legal)
    # Every legal move is listed once, FINAL score first, then MCTS_PRIOR.
    listed = {(0 if s.type == FIELD.FLAG else 1, s.row, s.col) for s in resp.move_stats.moves}
    assert listed == {mv[:3] for mv in legal}
    assert len(resp.move_stats.moves) == len(legal)
    finals, priors = [], []
    for s in resp.move_stats.moves:
        assert [sc.kind for sc in s.scores] == [FINAL, MCTS_PRIOR]
        finals.append(s.scores[0].score)
        priors.append(s.scores[1].score)
    assert sum(finals) == pytest.approx(1.0, abs=1e-5)
    assert sum(priors) == pytest.approx(1.0, abs=1e-5)
    best = resp.move_stats.moves[int(np.argmax(finals))]
    assert (best.row, best.col, best.type) == (m.row, m.col, m.cell_type)
    assert -1 <= resp.move_stats.value <= 1 and resp.move_stats.value != 0


def test_suggest_move_with_a_time_limit(tiny_net: HexzNet) -> None:
    board, player = position(4, 20)
    resp = hexz_pb2.SuggestMoveResponse.FromString(
        suggest_move(tiny_net, request(board, player, max_think_time_ms=100), Settings())
    )
    assert resp.move.player_num == player + 1
    assert sum(s.scores[0].score for s in resp.move_stats.moves) == pytest.approx(1.0, abs=1e-5)


def test_suggest_move_finds_the_winning_move() -> None:
    """The built position of test_search_tree: Y wins, X loses, whatever the network."""
    board = Board.from_tensor(built_position())
    resp = hexz_pb2.SuggestMoveResponse.FromString(
        suggest_move(FIXTURE_MODEL, request(board, 0, max_iterations=40), Settings())
    )
    assert (resp.move.row, resp.move.col, resp.move.cell_type) == (*Y, FIELD.NORMAL)


def test_settings_cap_the_request(tiny_net: HexzNet) -> None:
    board, player = position(5, 4)
    capped = Settings(max_suggest_iterations=2)
    resp = hexz_pb2.SuggestMoveResponse.FromString(
        suggest_move(tiny_net, request(board, player, max_iterations=10_000), capped)
    )
    # Two runs: the root's expansion and one child visit, which takes the whole share.
    finals = sorted(s.scores[0].score for s in resp.move_stats.moves)
    assert finals[-1] == 1.0 and finals[-2] == 0.0


def test_bad_requests_are_value_errors(tiny_net: HexzNet) -> None:
    board, player = position(6, 4)
    good = hexz_pb2.SuggestMoveRequest.FromString(request(board, player, max_iterations=5))
    with pytest.raises(ValueError, match="SuggestMoveRequest"):
        suggest_move(tiny_net, b"\xff\xff\xff", Settings())
    with pytest.raises(ValueError, match="no game_engine_state"):
        suggest_move(tiny_net, hexz_pb2.SuggestMoveRequest(max_iterations=5).SerializeToString())
    neither = hexz_pb2.SuggestMoveRequest()
    neither.CopyFrom(good)
    neither.max_iterations = 0
    with pytest.raises(ValueError, match="both are 0"):
        suggest_move(tiny_net, neither.SerializeToString(), Settings())
    broken = hexz_pb2.SuggestMoveRequest()
    broken.CopyFrom(good)
    broken.game_engine_state.flagz.board.turn = 3
    with pytest.raises(ValueError, match="turn"):
        suggest_move(tiny_net, broken.SerializeToString(), Settings())
    classic = hexz_pb2.SuggestMoveRequest(
        max_iterations=5,
        game_engine_state=hexz_pb2.GameEngineState(classic=hexz_pb2.GameEngineClassicState()),
    )
    with pytest.raises(ValueError, match="flagz"):
        suggest_move(tiny_net, classic.SerializeToString(), Settings())


def test_player_without_a_legal_move_is_a_client_error(tiny_net: HexzNet) -> None:
    """The server's looser rules can hand the turn to a stuck player."""
    board = Board.from_tensor(built_position())
    board.make_move(0, (1, 6, 6, 2))  # player 1's only move is gone
    with pytest.raises(ValueError, match="player to move has no legal move"):
        suggest_move(tiny_net, request(board, 1, max_iterations=5), Settings())
