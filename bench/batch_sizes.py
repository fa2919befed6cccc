"""Evaluator throughput against batch size: the measurement behind HEXZ_GAMES_IN_FLIGHT.

For each batch size N (games in flight), on one thread (one self-play process per core):
- bare: the Evaluator (ONNX Runtime on a CPU) on batches of N realistic positions;
- selfplay: network evaluations per second of an open-ended self-play driver with N slots
  at 800 runs per move (search and Python glue included).
Conv2d 5x128 with the original fixture weights. Sizes are measured in interleaved rounds
so that a busy machine affects all alike; each figure is the median over the rounds.
``share_of_best`` is each size's self-play rate over the best size's.

The first game finishes after about N x 30,000 evaluations (800 runs per move), so the
default is the smallest N whose self-play rate is within a few per cent of the best.

    python -m bench.batch_sizes [--quick] [--sizes 1,4,8,16,32,64,128] [--threads 1]

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.selfplay import FIXTURE
from hexz_tasks.inference import Evaluator, throughput
from hexz_tasks.layout import BOARD_SHAPE, MASK_SHAPE
from hexz_tasks.selfplay import make_driver
from hexz_tasks.settings import Settings


class Driver:
    """An open-ended self-play driver with its batch buffers."""

    def __init__(self, games_in_flight: int, seed: int) -> None:
        self.driver = make_driver(Settings(games_in_flight=games_in_flight), None, seed)
        self.boards = np.zeros((games_in_flight, *BOARD_SHAPE), dtype=np.float32)
        self.masks = np.zeros((games_in_flight, *MASK_SHAPE), dtype=bool)

    def evals_per_s(self, evaluator: Evaluator, seconds: float) -> float:
        d = self.driver
        start, evals = time.perf_counter(), d.evaluations
        while time.perf_counter() - start < seconds:
            n = d.prepare(self.boards, self.masks)
            d.take_finished()
            priors, values = evaluator(self.boards[:n], self.masks[:n])
            d.feed(priors, values)
        return (d.evaluations - evals) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="under a minute")
    ap.add_argument("--sizes", default="1,4,8,16,32,64,128")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=None, help="per size and round")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rounds = args.rounds or (1 if args.quick else 5)
    seconds = args.seconds or (1.0 if args.quick else 5.0)
    torch.set_num_threads(args.threads)
    evaluator = Evaluator(FIXTURE)
    drivers = {n: Driver(n, seed=n) for n in sizes}
    bare: dict[int, list[float]] = {n: [] for n in sizes}
    selfplay: dict[int, list[float]] = {n: [] for n in sizes}
    for r in range(rounds):
        for n in sizes:
            bare[n].append(throughput(evaluator, n, seconds))
            selfplay[n].append(drivers[n].evals_per_s(evaluator, seconds))
        print(
            f"round {r}: " + ", ".join(f"{n}: {selfplay[n][-1]:.0f}" for n in sizes),
            file=sys.stderr,
            flush=True,
        )
    sp = {n: statistics.median(v) for n, v in selfplay.items()}
    best = max(sp.values())
    print(json.dumps({
        "inference_mode": evaluator.mode,
        "threads": args.threads,
        "rounds": rounds,
        "bare_evals_per_s": {n: round(statistics.median(v)) for n, v in bare.items()},
        "selfplay_evals_per_s": {n: round(v) for n, v in sp.items()},
        "share_of_best": {n: round(v / best, 3) for n, v in sp.items()},
        "quick": args.quick,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
