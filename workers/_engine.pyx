# distutils: language = c++
"""The Flagz board (C++ engine in workers/engine) for Python.

Public names are re-exported by hexz_tasks.engine; see that module for the API.
"""

import operator
import os

import numpy as np

from libc.stdint cimport int8_t, uint8_t, uint64_t
from libcpp.vector cimport vector

from cboard cimport Board as CBoard, Move, Rng
cimport cboard

ROWS = cboard.kRows
COLS = cboard.kCols
CHANNELS = cboard.kChannels

# The C++ layout constants (workers/engine/layout.h) under hexz_tasks.layout's names,
# for the test that the two agree.
LAYOUT = {
    "ROWS": cboard.kRows,
    "COLS": cboard.kCols,
    "CELLS": cboard.kCells,
    "VALID_CELLS": cboard.kValidCells,
    "INITIAL_FLAGS": cboard.kInitialFlags,
    "CHANNELS": cboard.kChannels,
    "PLAYER_CHANNELS": cboard.kPlayerChannels,
    "CH_FLAG": cboard.kChFlag,
    "CH_VALUE": cboard.kChValue,
    "CH_BLOCKED": cboard.kChBlocked,
    "CH_NEXT": cboard.kChNext,
    "CH_FLAGS_LEFT": cboard.kChFlagsLeft,
    "CH_GRASS": cboard.kChGrass,
    "MOVE_TYPES": cboard.kMoveTypes,
    "POLICY_SIZE": cboard.kPolicySize,
    "MASK_BYTES": cboard.kMaskBytes,
    "PACK_FLAG_SHIFT": cboard.kPackFlagShift,
    "PACK_BLOCKED_SHIFT": cboard.kPackBlockedShift,
    "PACK_VALUE_SHIFT": cboard.kPackValueShift,
    "PACK_NEXT_SHIFT": cboard.kPackNextShift,
    "GRASS_BYTES": cboard.kGrassBytes,
    "WIRE_CELL_TYPE_FLAG": cboard.kWireCellTypeFlag,
    "WIRE_CELL_TYPE_NORMAL": cboard.kWireCellTypeNormal,
}

cdef uint64_t _MASK64 = 0xFFFFFFFFFFFFFFFF


cdef uint64_t _seed(seed) except? 0:
    """A 64-bit seed: the given int (mod 2**64), or fresh OS entropy for None."""
    if seed is None:
        return int.from_bytes(os.urandom(8), "little")
    return operator.index(seed) & _MASK64


cdef int _player(player) except -1:
    try:
        p = operator.index(player)
    except TypeError:
        raise ValueError(f"player must be 0 or 1, got {player!r}") from None
    if p != 0 and p != 1:
        raise ValueError(f"player must be 0 or 1, got {player!r}")
    return p


cdef Move _move(move) except *:
    cdef Move m
    try:
        if isinstance(move, (str, bytes)):
            raise TypeError
        typ, r, c, value = (operator.index(x) for x in move)
    except (TypeError, ValueError):
        raise ValueError(f"a move is (typ, r, c, value) of 4 ints, got {move!r}") from None
    for x in (typ, r, c, value):
        if not -128 <= x <= 127:
            raise ValueError(f"illegal move {move!r}: component out of range")
    m.typ = typ
    m.r = r
    m.c = c
    m.value = value
    return m


cdef Board wrap_board(const CBoard& b):
    cdef Board out = Board.__new__(Board)
    out.c = b
    return out


cdef class Board:
    """A Flagz board: player 0 is stored in channels 0-4 of the tensor."""

    def __init__(self):
        """An empty board: no pieces, no rocks, 3 flags each, invalid cells blocked."""
        self.c = CBoard()

    @staticmethod
    def random(seed=None):
        """A fresh random board (15 rocks, 5 grass cells valued 1..5)."""
        cdef Rng rng = Rng(_seed(seed))
        return wrap_board(CBoard.Random(rng))

    @staticmethod
    def from_tensor(a):
        """Decodes a stored (11, 11, 10) float32 board; ValueError if it is impossible."""
        if not isinstance(a, np.ndarray):
            raise ValueError(f"expected a numpy array, got {type(a).__name__}")
        if a.shape != (CHANNELS, ROWS, COLS):
            raise ValueError(f"board shape must be (11, 11, 10), got {a.shape}")
        if a.dtype != np.float32:
            raise ValueError(f"board dtype must be float32, got {a.dtype}")
        cdef const float[:, :, ::1] view = np.ascontiguousarray(a)
        return wrap_board(CBoard.FromTensor(&view[0, 0, 0]))

    @staticmethod
    def from_proto(data):
        """Decodes a serialized GameEngineState; returns (board, player to move)."""
        from hexz_tasks.engine import decode_proto

        tensor, player = decode_proto(data)
        return Board.from_tensor(tensor), player

    def tensor(self, player=0):
        """The (11, 11, 10) float32 tensor from `player`'s view."""
        cdef int p = _player(player)
        out = np.empty((CHANNELS, ROWS, COLS), dtype=np.float32)
        cdef float[:, :, ::1] view = out
        self.c.Encode(p, &view[0, 0, 0])
        return out

    def packed(self, player):
        """(cells (2, 110), grass (55,), flags_left (2,)) uint8: the example store's
        packed board from `player`'s view (hexz_tasks.layout)."""
        cdef int p = _player(player)
        cells = np.empty((2, cboard.kCells), dtype=np.uint8)
        grass = np.empty(cboard.kGrassBytes, dtype=np.uint8)
        flags_left = np.empty(2, dtype=np.uint8)
        cdef uint8_t[:, ::1] cv = cells
        cdef uint8_t[::1] gv = grass
        cdef uint8_t[::1] fv = flags_left
        self.c.Pack(p, &cv[0, 0], &gv[0], &fv[0])
        return cells, grass, flags_left

    def action_mask(self, player):
        """The (2, 11, 10) bool mask of legal moves: [0] flags, [1] normal moves."""
        cdef int p = _player(player)
        out = np.empty((2, ROWS, COLS), dtype=np.bool_)
        cdef uint8_t[:, :, ::1] view = out.view(np.uint8)
        self.c.ActionMask(p, &view[0, 0, 0])
        return out

    def legal_moves(self, player):
        """Legal moves of `player` as (typ, r, c, value), row-major, flag first."""
        cdef int p = _player(player)
        cdef vector[Move] moves
        cdef size_t k
        self.c.LegalMoves(p, moves)
        out = []
        for k in range(moves.size()):
            out.append((moves[k].typ, moves[k].r, moves[k].c, moves[k].value))
        return out

    def num_legal_moves(self, player):
        return self.c.NumLegalMoves(_player(player))

    def has_legal_move(self, player):
        return self.c.HasLegalMove(_player(player))

    def game_over(self):
        """True when neither player has a legal move."""
        return self.c.GameOver()

    def flags_left(self, player):
        return self.c.FlagsLeft(_player(player))

    def make_move(self, player, move):
        """Plays `move` for `player`; ValueError (board unchanged) if it is illegal."""
        cdef int p = _player(player)
        cdef Move m = _move(move)
        self.c.MakeMoveChecked(p, m)

    def score(self):
        """(player 0's score, player 1's score): the sums of their piece values."""
        s = self.c.Score()
        return (s[0], s[1])

    def result(self):
        """+1 if player 0 scored more, -1 if less, 0 on a tie."""
        return self.c.Result()

    def copy(self):
        return wrap_board(self.c)

    def random_playout(self, player_to_move, seed=None):
        """Plays uniformly random moves on this board until neither player can
        move (the board is changed); returns the result from player 0's view."""
        cdef int p = _player(player_to_move)
        cdef Rng rng = Rng(_seed(seed))
        cdef int result
        with nogil:
            result = self.c.RandomPlayout(p, rng)
        return result

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()

    def __eq__(self, other):
        if not isinstance(other, Board):
            return NotImplemented
        return bool(np.array_equal(self.tensor(0), (<Board> other).tensor(0)))

    __hash__ = None

    def __reduce__(self):
        return (Board.from_tensor, (self.tensor(0),))

    def __repr__(self):
        s = self.score()
        return f"<Board flags_left={self.flags_left(0)},{self.flags_left(1)} score={s[0]}:{s[1]}>"


def random_playouts(n, seed=None):
    """Results (int8, player 0's view) of `n` random playouts, each from a fresh
    random board with player 0 to move; all in C++ with the GIL released."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    cdef Py_ssize_t count = n, k
    cdef Rng rng = Rng(_seed(seed))
    cdef CBoard b
    out = np.empty(count, dtype=np.int8)
    cdef int8_t[::1] res = out
    with nogil:
        for k in range(count):
            b = CBoard.Random(rng)
            res[k] = b.RandomPlayout(0, rng)
    return out


def random_games(n, seed=None):
    """Plays `n` random games from fresh boards through the generic path (list the
    legal moves, then a checked make-move, each turn) in C++; returns the number of
    moves played. Used to time legal-moves + make-move operations."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    cdef Py_ssize_t count = n, k
    cdef long total = 0
    cdef int p
    cdef Rng rng = Rng(_seed(seed))
    cdef CBoard b
    cdef vector[Move] moves
    with nogil:
        for k in range(count):
            b = CBoard.Random(rng)
            p = 0
            while True:
                b.LegalMoves(p, moves)
                if moves.size() == 0:
                    p ^= 1
                    b.LegalMoves(p, moves)
                    if moves.size() == 0:
                        break
                b.MakeMoveChecked(p, moves[rng.Below(moves.size())])
                total += 1
                p ^= 1
    return total
