"""The Flagz board (rules and encoding of shared/spec/flagz-rules.md).

The board itself is C++ (workers/engine/board.cc) behind a Cython wrapper; this module
is its public face and adds the decoder for boards that arrive from the game server.

The layout constants are hexz_tasks.layout's (re-exported here).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from google.protobuf.message import DecodeError

from hexz_tasks import hexz_pb2
from hexz_tasks._engine import Board, random_games, random_playouts
from hexz_tasks.layout import (
    CH_BLOCKED,
    CH_FLAG,
    CH_FLAGS_LEFT,
    CH_GRASS,
    CH_NEXT,
    CH_VALUE,
    CHANNELS,
    COLS,
    INITIAL_FLAGS,
    PLAYER_CHANNELS,
    POLICY_SIZE,
    ROWS,
    VALID_CELLS,
)

__all__ = [
    "CHANNELS",
    "COLS",
    "POLICY_SIZE",
    "ROWS",
    "Board",
    "decode_proto",
    "encode_proto",
    "format_board",
    "print_random_game",
    "random_games",
    "random_moves",
    "random_playouts",
    "random_position",
]


_CellType = hexz_pb2.Field.CellType
_FLAG_TYPE = _CellType.Value("FLAG")  # also the index of flags in ResourceInfo.num_pieces
_VALID_CELLS = [(r, c) for r in range(ROWS) for c in range(COLS - r % 2)]


def _invalid_cell_mask() -> np.ndarray:
    mask = np.zeros((ROWS, COLS), dtype=bool)
    mask[1::2, COLS - 1] = True
    return mask


_INVALID = _invalid_cell_mask()


def decode_proto(data: bytes) -> tuple[np.ndarray, int]:
    """Decodes a serialized GameEngineState (flagz) into the stored (11, 11, 10) tensor
    and the player to move (0 or 1), as the spec's "Boards arriving from the game
    server" section says. ValueError naming the problem on any invalid input."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValueError(f"expected serialized GameEngineState bytes, got {type(data).__name__}")
    state = hexz_pb2.GameEngineState()
    try:
        state.ParseFromString(bytes(data))
    except (DecodeError, RuntimeError, ValueError) as e:
        raise ValueError(f"not a serialized GameEngineState: {e}") from None
    if state.WhichOneof("state") != "flagz":
        raise ValueError(f"GameEngineState holds {state.WhichOneof('state')}, not flagz")
    board = state.flagz.board
    if board.turn not in (1, 2):
        raise ValueError(f"board.turn must be 1 or 2, got {board.turn}")
    if len(board.flat_fields) != VALID_CELLS:
        raise ValueError(
            f"board.flat_fields must hold {VALID_CELLS} cells, got {len(board.flat_fields)}"
        )
    if len(board.resources) != 2:
        raise ValueError(f"board.resources must have 2 entries, got {len(board.resources)}")
    t = np.zeros((CHANNELS, ROWS, COLS), dtype=np.float32)
    for p, res in enumerate(board.resources):
        if len(res.num_pieces) <= _FLAG_TYPE:
            raise ValueError(
                f"board.resources[{p}].num_pieces has {len(res.num_pieces)} counts, "
                f"need at least {_FLAG_TYPE + 1}"
            )
        flags = res.num_pieces[_FLAG_TYPE]
        if not 0 <= flags <= INITIAL_FLAGS:
            raise ValueError(f"player {p + 1} has {flags} flags left, expected 0..3")
        t[PLAYER_CHANNELS * p + CH_FLAGS_LEFT] = flags
    for (r, c), f in zip(_VALID_CELLS, board.flat_fields, strict=True):
        where = f"cell ({r}, {c})"
        if f.type == _CellType.Value("NORMAL") and f.value == 0:
            for p in range(2):
                nv = f.next_val[p] if p < len(f.next_val) else 0
                if nv > 0:
                    if nv > 5:
                        raise ValueError(f"{where}: next_val[{p}] = {nv}, expected at most 5")
                    t[PLAYER_CHANNELS * p + CH_NEXT, r, c] = nv
                if f.blocked >> p & 1:
                    t[PLAYER_CHANNELS * p + CH_BLOCKED, r, c] = 1
            continue
        # Every piece blocks both players.
        t[CH_BLOCKED, r, c] = t[PLAYER_CHANNELS + CH_BLOCKED, r, c] = 1
        if f.type == _CellType.Value("NORMAL") or f.type == _CellType.Value("FLAG"):
            if f.owner not in (1, 2):
                kind = "FLAG" if f.type == _FLAG_TYPE else "NORMAL"
                raise ValueError(f"{where}: {kind} owner must be 1 or 2, got {f.owner}")
            p = f.owner - 1
            if f.type == _FLAG_TYPE:
                t[PLAYER_CHANNELS * p + CH_FLAG, r, c] = 1
            elif not 0 < f.value <= 5:
                raise ValueError(f"{where}: NORMAL value must be 0..5, got {f.value}")
            else:
                t[PLAYER_CHANNELS * p + CH_VALUE, r, c] = f.value
        elif f.type == _CellType.Value("GRASS"):
            if not 0 < f.value <= 5:
                raise ValueError(f"{where}: GRASS value must be 1..5, got {f.value}")
            t[CH_GRASS, r, c] = f.value
        elif f.type != _CellType.Value("ROCK"):
            raise ValueError(f"{where}: cell type {f.type} is not allowed in Flagz")
    t[CH_BLOCKED][_INVALID] = 1
    t[PLAYER_CHANNELS + CH_BLOCKED][_INVALID] = 1
    return t, board.turn - 1


def encode_proto(board: Board, player: int, move_number: int = 0) -> hexz_pb2.GameEngineState:
    """The GameEngineState (flagz, RUNNING) the game server would send for `board` with
    `player` (0 or 1) to move at move `move_number`: the inverse of decode_proto.

    An empty cell blocked for both players with no next value is written as ROCK (it
    decodes the same as a NORMAL cell with both blocked bits)."""
    t = board.tensor(0)
    state = hexz_pb2.GameEngineState()
    b = state.flagz.board
    b.turn, b.move, b.state = player + 1, move_number, hexz_pb2.Board.RUNNING
    for p in range(2):
        counts = [0] * (_FLAG_TYPE + 1)
        counts[_FLAG_TYPE] = int(t[PLAYER_CHANNELS * p + CH_FLAGS_LEFT, 0, 0])
        b.resources.add().num_pieces.extend(counts)
    for r, c in _VALID_CELLS:
        f = b.flat_fields.add()
        if t[CH_GRASS, r, c]:
            f.type, f.value = _CellType.Value("GRASS"), int(t[CH_GRASS, r, c])
        elif t[CH_FLAG, r, c] or t[PLAYER_CHANNELS + CH_FLAG, r, c]:
            f.type, f.owner = _FLAG_TYPE, 1 if t[CH_FLAG, r, c] else 2
        elif t[CH_VALUE, r, c] or t[PLAYER_CHANNELS + CH_VALUE, r, c]:
            f.type, f.owner = _CellType.Value("NORMAL"), 1 if t[CH_VALUE, r, c] else 2
            f.value = int(t[CH_VALUE, r, c] + t[PLAYER_CHANNELS + CH_VALUE, r, c])
        elif (
            t[CH_BLOCKED, r, c]
            and t[PLAYER_CHANNELS + CH_BLOCKED, r, c]
            and not (t[CH_NEXT, r, c] or t[PLAYER_CHANNELS + CH_NEXT, r, c])
        ):
            f.type = _CellType.Value("ROCK")
        else:
            f.type = _CellType.Value("NORMAL")
            f.blocked = int(t[CH_BLOCKED, r, c] > 0) | (
                int(t[PLAYER_CHANNELS + CH_BLOCKED, r, c] > 0) << 1
            )
            f.next_val.extend([int(t[CH_NEXT, r, c]), int(t[PLAYER_CHANNELS + CH_NEXT, r, c])])
    return state


def format_board(board: Board) -> str:
    """A compact text board, one line per row, odd rows indented (hex layout).

    ``F``/``f`` flag of player 0/1, ``1``-``5`` player 0's pieces, ``a``-``e`` player 1's
    (a = 1), ``*`` grass, ``#`` rock (or a free cell blocked for both), ``.`` free.
    """
    t = board.tensor(0)
    lines = []
    for r in range(ROWS):
        cells = []
        for c in range(COLS - r % 2):
            if t[0, r, c]:
                s = "F"
            elif t[5, r, c]:
                s = "f"
            elif t[1, r, c]:
                s = str(int(t[1, r, c]))
            elif t[6, r, c]:
                s = "abcde"[int(t[6, r, c]) - 1]
            elif t[CH_GRASS, r, c]:
                s = "*"
            elif t[2, r, c] and t[7, r, c]:
                s = "#"
            else:
                s = "."
            cells.append(s)
        lines.append(" " * (r % 2) + " ".join(cells))
    return "\n".join(lines)


def random_moves(
    board: Board, rng: np.random.Generator, player: int = 0, max_moves: int | None = None
) -> Iterator[tuple[int, tuple[int, int, int, int]]]:
    """Plays uniformly random legal moves on `board` (changed in place), `player` first,
    until the game ends or after `max_moves`; yields (player, move) after each move. A
    player without a legal move passes."""
    n = 0
    while max_moves is None or n < max_moves:
        if not board.has_legal_move(player):
            player = 1 - player
            if not board.has_legal_move(player):
                return
        moves = board.legal_moves(player)
        move = moves[int(rng.integers(len(moves)))]
        board.make_move(player, move)
        yield player, move
        player = 1 - player
        n += 1


def random_position(rng: np.random.Generator, max_moves: int) -> tuple[Board, int]:
    """A fresh random board after up to `max_moves` random moves, and the player to move
    (one with a legal move, unless the game is over)."""
    board, player = Board.random(int(rng.integers(2**62))), 0
    for last, _ in random_moves(board, rng, 0, max_moves):
        player = 1 - last
    if not board.has_legal_move(player):
        player = 1 - player
    return board, player


def print_random_game(seed: int | None = None) -> int:
    """Plays one game of uniformly random moves from a fresh random board and prints
    each move, the board after it and the final score (for ``hexz play``)."""
    rng = np.random.default_rng(seed)
    board = Board.random(int(rng.integers(2**63)))
    print("F/f flag of player 0/1, 1-5 player 0's pieces, a-e player 1's (a = 1),")
    print("* grass, # rock (or a free cell blocked for both), . free")
    print(format_board(board))
    n = 0
    for n, (player, (typ, r, c, value)) in enumerate(random_moves(board, rng), 1):
        what = "flag" if typ == 0 else f"piece {value}"
        print(f"\nmove {n}: player {player} places a {what} at ({r}, {c})")
        print(format_board(board))
    s0, s1 = board.score()
    outcome = {1: "player 0 wins", -1: "player 1 wins", 0: "a tie"}[board.result()]
    print(f"\ngame over after {n} moves: score {s0}:{s1}, {outcome}")
    return 0
