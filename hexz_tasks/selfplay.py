"""Self-play games (the CPU player's move is in hexz_tasks.suggest).

The search and the games run in C++ (hexz_tasks._search); this module runs the
network on the driver's batches. Finished games come out as the example store's
columns (hexz_tasks.codec); `hexz selfplay` writes them as TrainingExample protobufs
(shared/spec/wire-format.md, NUMPY encoding).
"""

from __future__ import annotations

import gzip
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hexz_tasks import codec, hexz_pb2, progress
from hexz_tasks._search import SelfPlay
from hexz_tasks.examples import from_columns
from hexz_tasks.files import atomic_write
from hexz_tasks.inference import Evaluate, Evaluator, as_evaluator
from hexz_tasks.layout import BOARD_SHAPE, MASK_SHAPE
from hexz_tasks.settings import Settings


@dataclass
class GameRecord:
    """One finished self-play game."""

    index: int  # order in which the game was started (0..n_games-1)
    columns: codec.Columns  # its examples, as ExampleStore.add_game takes them
    result: int  # +1 / 0 / -1 from player 0's view
    score: tuple[int, int]
    num_moves: int
    evaluations: int = 0  # network evaluations the game needed
    cache_hits: int = 0  # leaves expanded from a transposition instead
    fast_moves: int = 0
    forced_moves: int = 0  # one legal move: played without a search, no example
    resigned: bool = False

    @property
    def num_examples(self) -> int:
        return codec.num_rows(self.columns)


def search_kwargs(settings: Settings) -> dict[str, Any]:
    """The search settings as keyword arguments of _search.Search / SelfPlay."""
    return {
        "uct_c": settings.uct_c,
        "initial_root_q_value": settings.initial_root_q_value,
        "initial_q_penalty": settings.initial_q_penalty,
        "dirichlet_concentration": settings.dirichlet_concentration,
        "random_playouts": settings.random_playouts,
        "random_playout_weight": settings.random_playout_weight,
        "end_game_when_stuck": settings.end_game_when_stuck,
        "eval_cache": settings.eval_cache,
        "fpu_reference": settings.fpu_reference,
    }


def _seed(seed: int | None) -> int:
    return int.from_bytes(os.urandom(8), "little") if seed is None else seed


def make_driver(
    settings: Settings,
    n_games: int | None,
    seed: int | None,
    model_key: tuple[str, int] | None = None,
) -> SelfPlay:
    """The C++ self-play driver with the settings' search parameters; `n_games` None:
    open-ended (a self-play worker process keeps one for its whole life). Examples name
    `model_key` (model name, checkpoint); set ``driver.checkpoint`` when the network
    changes."""
    name, checkpoint = model_key if model_key is not None else (None, 0)
    return SelfPlay(
        n_games,
        settings.games_in_flight,
        _seed(seed),
        runs_per_move=settings.runs_per_move,
        runs_per_fast_move=settings.runs_per_fast_move,
        fast_move_prob=settings.fast_move_prob,
        max_moves_per_game=settings.max_moves_per_game,
        sampled_moves=settings.sampled_moves,
        resign_threshold=settings.resign_threshold,
        model_name=name,
        checkpoint=checkpoint,
        **search_kwargs(settings),
    )


def play_games(
    model: Evaluate | torch.nn.Module | str | Path | bytes,
    n_games: int,
    settings: Settings,
    seed: int | None = None,
    model_key: tuple[str, int] | None = None,
    *,
    stats: dict[str, Any] | None = None,
    on_step: Callable[[dict[str, Any]], bool | None] | None = None,
) -> Iterator[GameRecord]:
    """Plays `n_games` self-play games, `settings.games_in_flight` at a time, and yields
    each as soon as it finishes. Game i depends only on (seed, i) and the network.

    `model` is an inference.Evaluator (or what makes one) or any function with its
    signature. Examples name `model_key` (name, checkpoint) as their model, if given.
    `stats`, if given, is updated in place with running totals (evaluations,
    inference_s, games_started, games_finished, examples of finished games,
    examples_recorded including games in progress) and `on_step(stats)` is
    called after every batch, for progress reports and benchmarks; if it returns
    True, play stops (games still running are dropped).
    """
    if n_games < 0:
        raise ValueError(f"n_games must be >= 0, got {n_games}")
    if settings.inference_threads > 0:
        torch.set_num_threads(settings.inference_threads)
    evaluator = as_evaluator(model, settings.device)
    driver = make_driver(settings, n_games, seed, model_key)
    boards = np.zeros((driver.capacity, *BOARD_SHAPE), dtype=np.float32)
    masks = np.zeros((driver.capacity, *MASK_SHAPE), dtype=bool)
    stats = stats if stats is not None else {}
    stats.update(inference_s=0.0, examples=0)
    while True:
        n = driver.prepare(boards, masks)
        stats["evaluations"] = driver.evaluations
        stats["games_started"] = driver.games_started
        stats["games_finished"] = driver.games_finished
        stats["examples_recorded"] = driver.examples_recorded
        for game in driver.take_finished():
            record = GameRecord(**game)
            stats["examples"] += record.num_examples
            yield record
        if n == 0:
            return
        start = time.perf_counter()
        priors, values = evaluator(boards[:n], masks[:n])
        stats["inference_s"] += time.perf_counter() - start
        driver.feed(priors, values)
        if on_step is not None and on_step(stats):
            return


def worker_config(settings: Settings) -> hexz_pb2.WorkerConfig:
    """The WorkerConfig describing this process's self-play settings."""
    return hexz_pb2.WorkerConfig(
        device=settings.device,
        worker_threads=torch.get_num_threads(),
        fibers_per_thread=settings.games_in_flight,
        prediction_batch_size=settings.games_in_flight,
        runs_per_move=settings.runs_per_move,
        uct_c=settings.uct_c,
        initial_root_q_value=settings.initial_root_q_value,
        initial_q_penalty=settings.initial_q_penalty,
        dirichlet_concentration=settings.dirichlet_concentration,
        fast_move_prob=settings.fast_move_prob,
        runs_per_fast_move=settings.runs_per_fast_move,
    )


def selfplay_to_archive(
    model_path: str | Path,
    games: int,
    out: str | Path,
    settings: Settings,
    seed: int | None = None,
) -> int:
    """`hexz selfplay`: plays `games` games and writes one gzip-compressed
    AddTrainingExamplesRequest to `out` (atomically). Shows progress on a terminal.
    Returns 0 (the exit status)."""
    if games < 1:
        raise ValueError(f"--games must be positive, got {games}")
    out = Path(out)
    if not out.parent.is_dir():
        raise FileNotFoundError(f"output directory {out.parent} does not exist")
    if settings.inference_threads > 0:
        torch.set_num_threads(settings.inference_threads)
    evaluator = Evaluator(model_path, settings.device)
    req = hexz_pb2.AddTrainingExamplesRequest(
        execution_id=str(uuid.uuid4()), worker_config=worker_config(settings)
    )
    start = time.monotonic()
    stats: dict[str, Any] = {}
    with progress.bar(games, "self-play", unit="game") as shown:

        def on_step(stats: dict[str, Any]) -> None:
            elapsed = max(time.monotonic() - start, 1e-9)
            shown.set_postfix_str(
                f"{stats['examples']} examples, {stats['evaluations'] / elapsed:.0f} evals/s",
                refresh=False,
            )

        for record in play_games(evaluator, games, settings, seed, stats=stats, on_step=on_step):
            req.examples.extend(from_columns(record.columns))
            shown.update()
    atomic_write(out, gzip.compress(req.SerializeToString()))
    print(
        f"selfplay: {games} games, {len(req.examples)} examples, "
        f"{stats['evaluations']} evaluations in {time.monotonic() - start:.0f} s; wrote {out}",
        file=sys.stderr,
    )
    return 0
