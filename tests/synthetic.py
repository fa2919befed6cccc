"""Synthetic training data for tests and benchmarks of the data path.

Games of the real self-play driver (C++ rules and search) with a random stand-in for the
network, so boards, masks, visit counts and statistics are what self-play makes, fast:
as the example store's columns (what ExampleStore.add_game takes) and as protobuf
TrainingExamples (the edge format).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from hexz_tasks import codec, hexz_pb2
from hexz_tasks.examples import from_columns
from hexz_tasks.inference import Evaluate
from hexz_tasks.layout import POLICY_SIZE
from hexz_tasks.selfplay import play_games
from hexz_tasks.settings import Settings


def random_network(seed: int) -> Evaluate:
    """Priors: a softmax of random logits over the legal moves; values uniform in
    -0.5..0.5. Deterministic for a seed and a sequence of calls."""
    rng = np.random.default_rng(seed)

    def evaluate(boards: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(boards)
        logits = rng.normal(0, 2, (n, POLICY_SIZE)).astype(np.float32)
        legal = masks.reshape(n, POLICY_SIZE)
        e = np.where(legal, np.exp(logits - logits.max(axis=1, keepdims=True)), 0)
        priors = e / np.maximum(e.sum(axis=1, keepdims=True), 1e-30)
        return priors.astype(np.float32), rng.uniform(-0.5, 0.5, n).astype(np.float32)

    return evaluate


def game_columns(
    n_games: int,
    seed: int = 0,
    runs: int = 40,
    max_moves: int = 200,
    model: tuple[str, int] = ("flagz", 0),
) -> list[codec.Columns]:
    """`n_games` games (in game order) of `runs` runs per move, as store columns."""
    settings = Settings(
        runs_per_move=runs,
        max_moves_per_game=max_moves,
        games_in_flight=max(1, n_games),
        dirichlet_concentration=0.3,
    )
    games = play_games(random_network(seed), n_games, settings, seed=seed, model_key=model)
    return [g.columns for g in sorted(games, key=lambda g: g.index)]


def game_examples(
    n_games: int, seed: int = 0, **options: Any
) -> list[list[hexz_pb2.TrainingExample]]:
    """The games of :func:`game_columns` (same arguments) as NUMPY-encoded examples."""
    return [from_columns(c) for c in game_columns(n_games, seed, **options)]


def row_keys(cols: codec.Columns) -> list[bytes]:
    """One fingerprint per example (board, mask, move, time): compares examples by identity,
    so a test can tell which games a dataset holds and that it holds each once."""
    return [
        hashlib.blake2b(
            b"".join(
                cols[name][i].tobytes()
                for name in ("board_cells", "board_grass", "mask", "move", "unix_micros")
            ),
            digest_size=16,
        ).digest()
        for i in range(codec.num_rows(cols))
    ]
