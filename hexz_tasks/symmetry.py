"""The board's symmetries, and training on a random one of each example.

The hex board (11 rows; 10 cells on even rows, 9 on odd ones) and the rules are
invariant under the left-right mirror (row r, column c -> column 9 - c on even rows,
8 - c on odd rows), the up-down mirror (r -> 10 - r; rows keep their parity) and their
composition (tests/test_symmetry.py checks it on random games). Each is a fixed
permutation of the 110 cell slots (invalid slots stay put); the board's channels and
the two 110-cell planes of moves (flags, normal moves) permute with it.

:func:`random_symmetries` applies an independent random one (the identity included) to
each example of a decoded training batch with the precomputed index arrays (about 0.5 ms
for a batch of 256 on one core).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from hexz_tasks.codec import Batch

ROWS, COLS = 11, 10
CELLS = ROWS * COLS
NAMES = ("identity", "left-right", "up-down", "both")


def _permutations() -> np.ndarray:
    """(4, 110): perm[k][i] = the cell that symmetry k maps cell i to (and from: each is
    its own inverse)."""
    out = np.tile(np.arange(CELLS), (len(NAMES), 1))
    for r in range(ROWS):
        width = COLS - r % 2
        for c in range(width):
            lr, ud = (r, width - 1 - c), (ROWS - 1 - r, c)
            both = (ROWS - 1 - r, width - 1 - c)
            for k, (r2, c2) in enumerate((lr, ud, both), start=1):
                out[k, r * COLS + c] = r2 * COLS + c2
    out.setflags(write=False)
    return out


PERMUTATIONS = _permutations()


def transform(a: np.ndarray, k: int) -> np.ndarray:
    """`a` under symmetry k (a new array). Its last axes are cells: (11, 10) (boards
    (..., 11, 11, 10), masks (..., 2, 11, 10)), 220 (two move planes) or 110."""
    if a.shape[-2:] == (ROWS, COLS):
        flat = a.reshape(*a.shape[:-2], CELLS)
    elif a.shape[-1] in (CELLS, 2 * CELLS):
        flat = a.reshape(*a.shape[:-1], -1, CELLS)
    else:
        raise ValueError(f"no cell axes in shape {a.shape}")
    return flat[..., PERMUTATIONS[k]].reshape(a.shape)


def transform_move(move: tuple[int, int, int, int], k: int) -> tuple[int, int, int, int]:
    """A move (typ, r, c, value) under symmetry k."""
    typ, r, c, value = move
    cell = int(PERMUTATIONS[k, r * COLS + c])
    return (typ, cell // COLS, cell % COLS, value)


def random_symmetries(b: Batch, rng: np.random.Generator) -> Batch:
    """A copy of a decoded training batch (boards (n, 11, 11, 10), masks (n, 2, 11, 10),
    move_probs (n, 220); other fields are kept) with each example under its own
    uniformly drawn symmetry."""
    n = len(b.boards)
    drawn = rng.integers(0, len(NAMES), size=n)
    groups = [(np.flatnonzero(drawn == k), PERMUTATIONS[k]) for k in range(len(NAMES))]

    def gather(a: np.ndarray) -> np.ndarray:
        cells = a.reshape(n, -1, CELLS)
        out = np.empty_like(cells)
        for rows, perm in groups:  # one gather per symmetry: 4x faster than per row
            out[rows] = cells[rows][:, :, perm]
        return out.reshape(a.shape)

    return dataclasses.replace(
        b, boards=gather(b.boards), masks=gather(b.masks), move_probs=gather(b.move_probs)
    )
