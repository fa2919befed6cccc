"""Valid synthetic training data for tests and benchmarks of the data path.

Games follow the Flagz rules of shared/spec/flagz-rules.md (a small pure-Python
implementation, good enough to make realistic boards and masks), with random visit
counts standing in for the search. Not used by the pipeline itself.
"""

from __future__ import annotations

import time

import numpy as np

from hexz_tasks import hexz_pb2
from hexz_tasks.examples import npy_bytes


def _valid(r: int, c: int) -> bool:
    return 0 <= r < 11 and 0 <= c < 10 - r % 2


def _neighbours(r: int, c: int) -> list[tuple[int, int]]:
    s = r % 2
    cand = [(r, c + 1), (r - 1, c + s), (r - 1, c - 1 + s), (r, c - 1), (r + 1, c - 1 + s),
            (r + 1, c + s)]  # fmt: skip
    return [(a, b) for a, b in cand if _valid(a, b)]


def random_board(rng: np.random.Generator) -> np.ndarray:
    """A fresh random board, (11, 11, 10) float32, player 0 in channels 0-4."""
    b = np.zeros((11, 11, 10), dtype=np.float32)
    b[4] = b[9] = 3
    for r in range(1, 11, 2):
        b[2, r, 9] = b[7, r, 9] = 1
    free = [(r, c) for r in range(11) for c in range(10 - r % 2)]
    picks = rng.choice(len(free), size=20, replace=False)
    for k, i in enumerate(picks):
        r, c = free[i]
        b[2, r, c] = b[7, r, c] = 1
        if k >= 15:
            b[10, r, c] = k - 14
    return b


def legal_moves(b: np.ndarray, p: int) -> list[tuple[int, int, int, int]]:
    o = 5 * p
    moves = []
    for r in range(11):
        for c in range(10 - r % 2):
            if b[o + 4, 0, 0] > 0 and b[o + 2, r, c] == 0:
                moves.append((0, r, c, 1))
            if b[o + 3, r, c] > 0:
                moves.append((1, r, c, int(b[o + 3, r, c])))
    return moves


def make_move(b: np.ndarray, p: int, move: tuple[int, int, int, int]) -> None:
    typ, r, c, v = move
    o = 5 * p
    if typ == 0:
        b[o, r, c] = 1
    else:
        b[o + 1, r, c] = v
    b[2, r, c] = b[7, r, c] = 1
    b[3, r, c] = b[8, r, c] = 0
    if typ == 0:
        b[o + 4] -= 1
        n = 1
    else:
        n = v + 1
    for q in _neighbours(r, c):
        if n <= 5 and b[o + 2][q] == 0:
            if b[o + 3][q] == 0 or b[o + 3][q] > n:
                b[o + 3][q] = n
        elif n == 6:
            b[o + 2][q] = 1
            b[o + 3][q] = 0
    if typ == 1:
        for q in _neighbours(r, c):
            g = b[10][q]
            if 0 < g <= b[o + 1, r, c]:
                b[10][q] = 0
                b[o + 2][q] = 0
                b[o + 3][q] = g
                make_move(b, p, (1, q[0], q[1], int(g)))


def view(b: np.ndarray, p: int) -> np.ndarray:
    return b if p == 0 else b[[5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 10]]


def game_examples(
    rng: np.random.Generator,
    runs: int = 800,
    max_moves: int = 200,
    model_key: tuple[str, int] = ("flagz", 0),
) -> list[hexz_pb2.TrainingExample]:
    """One random game as NUMPY-encoded TrainingExamples with plausible search data."""
    b = random_board(rng)
    p = 0
    examples: list[hexz_pb2.TrainingExample] = []
    for n in range(max_moves):
        moves = legal_moves(b, p)
        if not moves:
            p = 1 - p
            moves = legal_moves(b, p)
            if not moves:
                break
        mask = np.zeros((2, 11, 10), dtype=bool)
        for t, r, c, _ in moves:
            mask[t, r, c] = True
        idx = np.flatnonzero(mask.ravel())
        prior = rng.dirichlet(np.full(len(idx), 0.3))
        counts = rng.multinomial(runs - 1, prior) if runs > 1 else np.ones(len(idx), dtype=int)
        if counts.sum() == 0:
            counts[0] = 1
        probs = np.zeros(220, dtype=np.float32)
        probs[idx] = counts.astype(np.float32) / np.float32(counts.sum())
        priors = np.zeros(220, dtype=np.float32)
        priors[idx] = prior.astype(np.float32)
        chosen = int(rng.choice(len(idx), p=counts / counts.sum()))
        move = next(m for m in moves if m[0] * 110 + m[1] * 10 + m[2] == idx[chosen])
        ex = hexz_pb2.TrainingExample(
            unix_micros=int(time.time() * 1e6),
            board=npy_bytes(np.ascontiguousarray(view(b, p))),
            move_probs=npy_bytes(probs.reshape(2, 11, 10)),
            encoding=hexz_pb2.TrainingExample.NUMPY,
            turn=p,
            action_mask=npy_bytes(mask),
        )
        ex.move.CopyFrom(
            hexz_pb2.GameEngineMove(
                player_num=p + 1,
                move=n,
                row=move[1],
                col=move[2],
                cell_type=5 if move[0] == 0 else 0,
            )
        )
        ex.model_predictions.priors = npy_bytes(priors.reshape(2, 11, 10))
        ex.model_predictions.value = float(rng.uniform(-1, 1))
        ex.model_key.name, ex.model_key.checkpoint = model_key
        s = ex.stats
        s.duration_micros = int(rng.integers(1000, 100000))
        s.valid_moves = len(idx)
        s.visit_count = runs
        s.visited_children = int((counts > 0).sum())
        s.search_depth = int(rng.integers(2, 20))
        s.search_tree_size = runs
        s.branch_nodes = int(rng.integers(1, runs))
        s.min_child_vc, s.max_child_vc = int(counts.min()), int(counts.max())
        s.selected_child_vc = int(counts[chosen])
        s.selected_child_q = float(rng.uniform(-1, 1))
        s.nodes_per_depth.extend(rng.integers(1, 100, size=s.search_depth).tolist())
        s.max_visit_count_per_depth.extend(rng.integers(1, 100, size=s.search_depth).tolist())
        examples.append(ex)
        make_move(b, p, move)
        p = 1 - p
    s0, s1 = b[1].sum(), b[6].sum()
    final = 1 if s0 > s1 else -1 if s0 < s1 else 0
    for ex in examples:
        ex.result = final if ex.turn == 0 else -final
    return examples
