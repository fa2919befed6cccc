"""Engine speed: random playouts and legal-moves + make-move operations per second.

The C++ engine (timed in C++ loops, so Python call overhead does not count) next to the
pure-NumPy rules of bench/numpy_flagz.py, both measured in this run on one core; and the
UCT player's (``uct:N``) iterations per second from fresh boards, next to the random
playout rate (one iteration is one playout plus a descent and a backup). Rates
are per second of this process's CPU time (equal to wall time on an idle machine), so
other processes sharing the machine do not skew them. The last line printed is one
JSON object.

    python -m bench.engine [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable

import numpy as np

from bench.numpy_flagz import NumpyBoard
from hexz_tasks._uct import UctSearch
from hexz_tasks.engine import Board, random_games, random_playouts
from hexz_tasks.progress import timed

ORIGINAL_PLAYOUTS_PER_S = 84_000  # the original C++ engine, -O2, one core (issue 3)


def best_rate(run: Callable[[], int], seconds: float, desc: str) -> float:
    """Items per CPU second of the fastest of repeated calls of `run` (which returns
    the number of items it did) within about `seconds`: the least disturbed one."""
    best = 0.0
    deadline = time.perf_counter() + seconds
    with timed(desc, seconds):
        while True:
            t0 = time.process_time()
            items = run()
            dt = time.process_time() - t0
            best = max(best, items / dt)
            if time.perf_counter() >= deadline:
                return best


def python_api_ops(n_games: int, seed: int) -> int:
    """Moves of random games played through the Python API (legal_moves + make_move)."""
    rng = np.random.default_rng(seed)
    moves_played = 0
    for _ in range(n_games):
        b = Board.random(int(rng.integers(2**63)))
        p = 0
        while True:
            moves = b.legal_moves(p)
            if not moves:
                p = 1 - p
                moves = b.legal_moves(p)
                if not moves:
                    break
            b.make_move(p, moves[rng.integers(len(moves))])
            moves_played += 1
            p = 1 - p
    return moves_played


def uct_iterations(n_boards: int, iterations: int, seed: int) -> int:
    """Iterations of UCT searches of `iterations` each from `n_boards` fresh boards."""
    uct = UctSearch(seed)
    return sum(uct.search(Board.random(seed + k), 0, iterations) for k in range(n_boards))


def numpy_playouts(n: int, rng: np.random.Generator) -> int:
    for _ in range(n):
        NumpyBoard.random(rng).random_playout(0, rng)
    return n


def numpy_ops(n_games: int, rng: np.random.Generator) -> int:
    moves_played = 0
    for _ in range(n_games):
        b = NumpyBoard.random(rng)
        p = 0
        while True:
            moves = b.legal_moves(p)
            if not moves:
                p = 1 - p
                moves = b.legal_moves(p)
                if not moves:
                    break
            b.make_move(p, moves[rng.integers(len(moves))])
            moves_played += 1
            p = 1 - p
    return moves_played


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a short run (well under a minute)")
    args = ap.parse_args(argv)
    secs = 3.0 if args.quick else 15.0
    if hasattr(os, "sched_setaffinity"):  # one core, as the figures claim
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    seeds = iter(range(1, 1_000_000))
    playouts = best_rate(lambda: len(random_playouts(20_000, next(seeds))), secs, "C++ playouts")
    ops = best_rate(lambda: random_games(2_000, next(seeds)), secs, "C++ ops")
    api_ops = best_rate(lambda: python_api_ops(20, next(seeds)), secs / 2, "Python API ops")
    uct = best_rate(lambda: uct_iterations(4, 3200, 1000 * next(seeds)), secs, "UCT iterations")
    rng = np.random.default_rng(0)
    np_playouts = best_rate(lambda: numpy_playouts(2, rng), secs, "NumPy playouts")
    np_ops = best_rate(lambda: numpy_ops(2, rng), secs, "NumPy ops")

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; measured on one")
    print(f"C++ engine:  {playouts:12,.0f} random playouts/s from fresh boards")
    print(f"             {ops:12,.0f} legal-moves + make-move ops/s (timed in C++)")
    print(f"             {api_ops:12,.0f} legal-moves + make-move ops/s via the Python API")
    print(
        f"UCT player:  {uct:12,.0f} iterations/s (uct:3200 from fresh boards), "
        f"{uct / playouts:.2f}x the playout rate"
    )
    print(f"NumPy rules: {np_playouts:12,.1f} random playouts/s from fresh boards")
    print(f"             {np_ops:12,.0f} legal-moves + make-move ops/s")
    vs_original = playouts / ORIGINAL_PLAYOUTS_PER_S
    print(f"playouts: {playouts / np_playouts:,.0f}x NumPy, {vs_original:.2f}x the original")
    print(f"engine's {ORIGINAL_PLAYOUTS_PER_S:,}/s (target 170,000/s)")
    print(
        json.dumps(
            {
                "playouts_per_s": round(playouts),
                "ops_per_s": round(ops),
                "python_api_ops_per_s": round(api_ops),
                "uct_iterations_per_s": round(uct),
                "uct_ratio_vs_playouts": round(uct / playouts, 3),
                "numpy_playouts_per_s": round(np_playouts, 2),
                "numpy_ops_per_s": round(np_ops),
                "playouts_ratio_vs_numpy": round(playouts / np_playouts, 1),
                "ops_ratio_vs_numpy": round(ops / np_ops, 1),
                "playouts_ratio_vs_original": round(vs_original, 2),
                "quick": args.quick,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
