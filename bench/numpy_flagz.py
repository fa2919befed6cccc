"""A straightforward pure-NumPy implementation of the Flagz rules.

It works directly on the stored (11, 11, 10) float32 tensor, as shared/spec/flagz-rules.md
describes it: the baseline of bench/engine.py and the second opinion of the differential
tests against the C++ engine. Written for clarity, not speed.
"""

from __future__ import annotations

import numpy as np

ROWS, COLS, CHANNELS = 11, 10, 11
FLAG, VALUE, BLOCKED, NEXT, FLAGS_LEFT = range(5)  # + 5 * player
GRASS = 10

Move = tuple[int, int, int, int]


def _valid(r: int, c: int) -> bool:
    return 0 <= r < ROWS and 0 <= c < COLS - r % 2


VALID_CELLS = [(r, c) for r in range(ROWS) for c in range(COLS) if _valid(r, c)]
INVALID = np.ones((ROWS, COLS), dtype=bool)
for _r, _c in VALID_CELLS:
    INVALID[_r, _c] = False


def neighbours(r: int, c: int) -> list[tuple[int, int]]:
    """The valid neighbours of (r, c) in the spec's order."""
    s = r % 2
    cand = [(r, c + 1), (r - 1, c + s), (r - 1, c - 1 + s), (r, c - 1), (r + 1, c - 1 + s),
            (r + 1, c + s)]  # fmt: skip
    return [(nr, nc) for nr, nc in cand if _valid(nr, nc)]


NEIGHBOURS = {(r, c): neighbours(r, c) for r, c in VALID_CELLS}


class NumpyBoard:
    """The board as one float32 tensor, player 0 in channels 0-4."""

    def __init__(self, tensor: np.ndarray | None = None) -> None:
        if tensor is None:
            tensor = np.zeros((CHANNELS, ROWS, COLS), dtype=np.float32)
            tensor[FLAGS_LEFT] = tensor[5 + FLAGS_LEFT] = 3
            tensor[BLOCKED][INVALID] = tensor[5 + BLOCKED][INVALID] = 1
        self.b = tensor.astype(np.float32, copy=True)

    @classmethod
    def random(cls, rng: np.random.Generator) -> NumpyBoard:
        """15 rocks, then 5 grass cells valued 1..5, on distinct random free cells."""
        board = cls()
        b = board.b
        for k in range(20):
            free = np.argwhere(b[BLOCKED] == 0)
            r, c = free[rng.integers(len(free))]
            b[BLOCKED, r, c] = b[5 + BLOCKED, r, c] = 1
            if k >= 15:
                b[GRASS, r, c] = k - 14
        return board

    def copy(self) -> NumpyBoard:
        return NumpyBoard(self.b)

    def legal_moves(self, p: int) -> list[Move]:
        """Row-major, flag before normal move within a cell."""
        b, o = self.b, 5 * p
        flags = b[o + FLAGS_LEFT, 0, 0] > 0
        moves: list[Move] = []
        for r, c in VALID_CELLS:
            if flags and b[o + BLOCKED, r, c] == 0:
                moves.append((0, r, c, 1))
            if b[o + NEXT, r, c] > 0:
                moves.append((1, r, c, int(b[o + NEXT, r, c])))
        return moves

    def make_move(self, p: int, move: Move) -> None:
        typ, r, c, v = move
        b, o = self.b, 5 * p
        if typ == 0:
            b[o + FLAG, r, c] = 1
        else:
            b[o + VALUE, r, c] = v
        b[BLOCKED, r, c] = b[5 + BLOCKED, r, c] = 1
        b[NEXT, r, c] = b[5 + NEXT, r, c] = 0
        if typ == 0:
            b[o + FLAGS_LEFT] -= 1
            n = 1
        else:
            n = v + 1
        for q in NEIGHBOURS[r, c]:
            if n <= 5:
                if b[o + BLOCKED][q] == 0 and (b[o + NEXT][q] == 0 or b[o + NEXT][q] > n):
                    b[o + NEXT][q] = n
            else:
                b[o + BLOCKED][q] = 1
                b[o + NEXT][q] = 0
        if typ == 0:
            return
        for q in NEIGHBOURS[r, c]:
            g = int(b[GRASS][q])
            if 0 < g <= b[o + VALUE, r, c]:
                b[GRASS][q] = 0
                b[o + BLOCKED][q] = 0
                b[o + NEXT][q] = g
                self.make_move(p, (1, q[0], q[1], g))

    def score(self) -> tuple[int, int]:
        return int(self.b[VALUE].sum()), int(self.b[5 + VALUE].sum())

    def result(self) -> int:
        s0, s1 = self.score()
        return (s0 > s1) - (s0 < s1)

    def random_playout(self, p: int, rng: np.random.Generator) -> int:
        """Uniformly random moves until neither player can move; the result."""
        while True:
            moves = self.legal_moves(p)
            if not moves:
                p = 1 - p
                moves = self.legal_moves(p)
                if not moves:
                    return self.result()
            self.make_move(p, moves[rng.integers(len(moves))])
            p = 1 - p
