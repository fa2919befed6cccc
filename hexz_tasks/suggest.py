"""The CPU player's answer to one SuggestMoveRequest (the game server's format): the
request checked and capped at the server's limits, a search, the most visited move.

The HTTP and gRPC servers (hexz_tasks.server.player) run it on a bounded number of
requests at once; torch and the engine are imported only when a move is searched.
"""

from __future__ import annotations

import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from google.protobuf.message import DecodeError

from hexz_tasks import hexz_pb2
from hexz_tasks.layout import WIRE_CELL_TYPE_FLAG, WIRE_CELL_TYPE_NORMAL
from hexz_tasks.settings import Settings

if TYPE_CHECKING:
    import torch

    from hexz_tasks.inference import Evaluate

# Requests beyond these are a client's bug, not something to cap silently: an hour of
# thinking, or more iterations than an int32 holds.
ABSURD_THINK_TIME_MS = 3_600_000
ABSURD_ITERATIONS = 2**31 - 1
# A SuggestMoveRequest is a few kB; anything this big is not one (HTTP and gRPC).
MAX_REQUEST_BYTES = 1 << 20


class ClientError(ValueError):
    """The request is wrong; the message says what (HTTP 400 / INVALID_ARGUMENT)."""


def parse_request(body: bytes) -> hexz_pb2.SuggestMoveRequest:
    """Parses and checks a SuggestMoveRequest; raises ClientError saying what is wrong."""
    if len(body) > MAX_REQUEST_BYTES:
        raise ClientError(f"request is {len(body)} bytes, at most {MAX_REQUEST_BYTES} accepted")
    req = hexz_pb2.SuggestMoveRequest()
    try:
        req.ParseFromString(body)
    except DecodeError as e:
        raise ClientError(f"body is not a serialized SuggestMoveRequest: {e}") from None
    kind = req.game_engine_state.WhichOneof("state")
    if kind is None:
        raise ClientError("SuggestMoveRequest has no game_engine_state (expected a flagz game)")
    if kind != "flagz":
        raise ClientError(f"unknown game type {kind!r}: only flagz is supported")
    if not req.game_engine_state.flagz.HasField("board"):
        raise ClientError("game_engine_state.flagz has no board")
    if req.max_think_time_ms < 0:
        raise ClientError(f"max_think_time_ms must be >= 0, got {req.max_think_time_ms}")
    if req.max_iterations < 0:
        raise ClientError(f"max_iterations must be >= 0, got {req.max_iterations}")
    if req.max_think_time_ms > ABSURD_THINK_TIME_MS:
        raise ClientError(
            f"max_think_time_ms={req.max_think_time_ms} is absurd (more than an hour); "
            f"this server thinks at most {ABSURD_THINK_TIME_MS} ms"
        )
    if req.max_iterations > ABSURD_ITERATIONS:
        raise ClientError(f"max_iterations={req.max_iterations} is out of range")
    if req.max_think_time_ms == 0 and req.max_iterations == 0:
        raise ClientError("set max_think_time_ms or max_iterations (both are 0)")
    return req


def cap_request(
    req: hexz_pb2.SuggestMoveRequest, settings: Settings, waited_ms: int = 0
) -> hexz_pb2.SuggestMoveRequest:
    """A copy with think time/iterations capped at the server's limits.

    Time already spent waiting for a search slot is taken off the think time so the
    answer still arrives within what the client asked for (at least 1 ms remains).
    """
    capped = hexz_pb2.SuggestMoveRequest()
    capped.CopyFrom(req)
    if req.max_think_time_ms > 0:
        think = min(req.max_think_time_ms, settings.max_think_time_ms)
        capped.max_think_time_ms = max(1, think - waited_ms)
    if req.max_iterations > 0:
        capped.max_iterations = min(req.max_iterations, settings.max_suggest_iterations)
    return capped


def suggest_move(
    model: Evaluate | torch.nn.Module | str | Path | bytes,
    request: bytes,
    settings: Settings | None = None,
) -> bytes:
    """Answers a serialized SuggestMoveRequest with a serialized SuggestMoveResponse.

    Searches by highest PUCT only (no noise) for the request's think time, or its
    iterations when the time is 0, both capped by settings.max_think_time_ms and
    max_suggest_iterations; answers the most visited root child. A position with one
    legal move is answered at once (one run: the root's evaluation). Raises ValueError
    with a clear message for bad input. Pass an inference.Evaluator to reuse it across
    requests (building one from a module or file takes a second or more).
    """
    return answer(model, parse_request(bytes(request)), settings)


def answer(
    model: Evaluate | torch.nn.Module | str | Path | bytes,
    req: hexz_pb2.SuggestMoveRequest,
    settings: Settings | None = None,
) -> bytes:
    """suggest_move for a request parse_request has checked."""
    from hexz_tasks._search import Search
    from hexz_tasks.engine import Board
    from hexz_tasks.inference import as_evaluator
    from hexz_tasks.selfplay import search_kwargs

    settings = settings if settings is not None else Settings.from_env()
    board, player = Board.from_proto(req.game_engine_state.SerializeToString())
    if not board.has_legal_move(player):
        raise ValueError("player to move has no legal move")
    if req.max_think_time_ms > 0:
        think_ms = min(req.max_think_time_ms, settings.max_think_time_ms)
        iterations = settings.max_suggest_iterations
    else:
        think_ms = settings.max_think_time_ms
        iterations = min(req.max_iterations, settings.max_suggest_iterations)
    if board.num_legal_moves(player) == 1:
        iterations = 1
    evaluator = as_evaluator(model, settings.device)
    seed = zlib.crc32(req.SerializeToString(deterministic=True))
    search = Search(board, player, seed, **search_kwargs(settings))
    search.run(evaluator, iterations, greedy=True, deadline=time.monotonic() + think_ms / 1000.0)
    children = search.children()
    visits = children["visits"].astype(np.float64)
    total = visits.sum()
    share = visits / total if total > 0 else children["prior"].astype(np.float64)
    best = int(np.argmax(share))  # first of equals, like the search
    typ, r, c, _ = (int(x) for x in children["moves"][best])
    resp = hexz_pb2.SuggestMoveResponse(
        move=hexz_pb2.GameEngineMove(
            player_num=player + 1,
            move=req.game_engine_state.flagz.board.move,
            row=r,
            col=c,
            cell_type=_cell_type(typ),
        ),
        move_stats=hexz_pb2.SuggestMoveStats(value=search.root_value),
    )
    kinds = hexz_pb2.SuggestMoveStats.ScoreKind
    for i in range(search.num_children):
        ctyp, cr, cc, _ = (int(x) for x in children["moves"][i])
        resp.move_stats.moves.append(
            hexz_pb2.SuggestMoveStats.ScoredMove(
                row=cr,
                col=cc,
                type=_cell_type(ctyp),
                scores=[
                    hexz_pb2.SuggestMoveStats.Score(
                        kind=kinds.Value("FINAL"), score=float(share[i])
                    ),
                    hexz_pb2.SuggestMoveStats.Score(
                        kind=kinds.Value("MCTS_PRIOR"), score=float(children["prior"][i])
                    ),
                ],
            )
        )
    return resp.SerializeToString()


def _cell_type(typ: int) -> int:
    return WIRE_CELL_TYPE_FLAG if typ == 0 else WIRE_CELL_TYPE_NORMAL
