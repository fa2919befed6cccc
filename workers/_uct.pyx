# distutils: language = c++
"""The game server's CPU player (plain UCT, random rollouts; C++ in workers/engine/uct.cc).

hexz_tasks.arena plays it as ``uct:N`` / ``uct@MS``; the GIL is released while it searches.
"""

import os

import numpy as np

from libc.stdint cimport int64_t, uint64_t

from cboard cimport Board, Move
from cuct cimport Uct
from hexz_tasks._engine cimport Board as PyBoard

BOARD_SHAPE = (11, 11, 10)


cdef Board _board_from(board) except *:
    """A C++ board from a hexz_tasks.engine.Board or an (11, 11, 10) stored tensor."""
    if isinstance(board, PyBoard):
        return (<PyBoard>board).c
    a = np.ascontiguousarray(board, dtype=np.float32)
    if a.shape != BOARD_SHAPE:
        raise ValueError(f"board must have shape {BOARD_SHAPE}, got {a.shape}")
    cdef const float[:, :, ::1] v = a
    return Board.FromTensor(&v[0, 0, 0])


cdef class UctSearch:
    """One UCT player: search(board, player, iterations, think_ms), then read the root's
    children and best_child() (highest Q). Each search builds a new tree."""

    cdef Uct* c
    cdef readonly double uct_c

    def __cinit__(self, seed=None, *, double uct_c=1.0):
        if not uct_c >= 0:
            raise ValueError(f"uct_c must be >= 0, got {uct_c}")
        cdef uint64_t s = (
            int.from_bytes(os.urandom(8), "little") if seed is None
            else int(seed) & 0xFFFFFFFFFFFFFFFF
        )
        self.c = new Uct(s, uct_c)
        self.uct_c = uct_c

    def __dealloc__(self):
        del self.c

    def search(self, board, int player, iterations=0, think_ms=0.0) -> int:
        """Searches `board` with `player` to move for `iterations` iterations and/or
        `think_ms` milliseconds (0 = no limit; at least one must be set). Returns the
        iterations run."""
        if iterations < 0 or think_ms < 0:
            raise ValueError(f"iterations and think_ms must be >= 0, got {iterations}, {think_ms}")
        if iterations == 0 and think_ms == 0:
            raise ValueError("set iterations or think_ms")
        cdef Board b = _board_from(board)
        cdef int64_t n = iterations
        cdef int64_t micros = <int64_t>(think_ms * 1000.0)
        if think_ms > 0 and micros == 0:
            micros = 1
        with nogil:
            n = self.c.Search(b, player, n, micros)
        return n

    def best_child(self) -> int:
        """The root child with the highest Q (first of equals): the move played."""
        if self.c.NumChildren() == 0:
            raise ValueError("no search has run")
        return self.c.BestChild()

    def best_move(self) -> tuple[int, int, int, int]:
        """(typ, r, c, value) of best_child()."""
        cdef Move m = self.c.child(self.best_child()).move
        return (m.typ, m.r, m.c, m.value)

    def children(self) -> dict:
        """Root children in creation order (flag moves, then normal moves, row-major):
        moves (n, 4) [typ, r, c, value], count, wins, q (NumPy arrays)."""
        cdef int n = self.c.NumChildren()
        moves = np.zeros((n, 4), dtype=np.int32)
        count = np.zeros(n, dtype=np.int32)
        wins = np.zeros(n, dtype=np.int32)
        q = np.zeros(n, dtype=np.float64)
        cdef int i
        cdef Move m
        for i in range(n):
            node = &self.c.child(i)
            m = node.move
            moves[i] = (m.typ, m.r, m.c, m.value)
            count[i] = node.count
            wins[i] = node.wins
            q[i] = node.Q()
        return {"moves": moves, "count": count, "wins": wins, "q": q}

    @property
    def iterations(self) -> int:
        """Iterations of the last search (the root's count)."""
        return self.c.iterations()

    @property
    def tree_size(self) -> int:
        return self.c.TreeSize()
