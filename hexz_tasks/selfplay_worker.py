"""A self-play worker process: game slots that outlive tasks, played in slices.

Each self-play pool process keeps one open-ended driver with ``games_in_flight`` game
slots (:class:`SelfPlayProcess`, made on its first task). A task is a slice
(:func:`run_slice`): it advances the slots batch by batch until its budget is spent (or
it stored ``max_games`` games), stores every game the moment it finishes under an id
unique to that game (``<process id>:<game index>``, the process id random), and returns.
Games in progress continue in the process's next slice; a finished game's slot starts a
new game at once, so every batch is full. A process that dies loses only its
unfinished games, and no game is stored twice (each id is written once; the store's
done markers make a retried write a no-op).

Fresh models: between batches, at most every MODEL_CHECK_INTERVAL_S, the process asks
hexz_tasks.model_source which checkpoint to play with (one small Redis key) and swaps
its evaluator when that changed; games in flight go on with the new network, and each
example records the checkpoint that searched its move.

Backpressure: a finished game the store refuses (full: the trainer is behind or
stopped) stays in the process. The slice then plays no new moves (no CPU burnt on
games that could not be stored) and retries with backoff until its budget is spent;
the next slice stores such games before it plays on.

Progress: every HEARTBEAT_S the process writes a JSON entry to Keys.selfplay_progress
(games in flight, moves played and per second, batches, mean batch occupancy, the
checkpoint it plays with, games stored, finished games waiting for room in the store);
`hexz status` and the status page show it from the first batch on, long before the
first game finishes.

Stopping: between batches the slice checks hexz_tasks.stop_flag and returns early, so
a worker asked to stop acknowledges its task within a batch.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import time
from typing import Any

import numpy as np
import redis

from hexz_tasks.errors import ModelError
from hexz_tasks.keys import Keys
from hexz_tasks.layout import BOARD_SHAPE, MASK_SHAPE
from hexz_tasks.model_source import CurrentModel, NoModelError
from hexz_tasks.rates import record_game
from hexz_tasks.selfplay import GameRecord, make_driver
from hexz_tasks.settings import Settings
from hexz_tasks.stop_flag import slice_running, stop_requested
from hexz_tasks.store import ExampleStore, StoreFullError, StoreNotReadyError

log = logging.getLogger(__name__)

# How often a process asks which checkpoint to play with (one small Redis GET).
MODEL_CHECK_INTERVAL_S = 1.0
# How often a process writes its progress entry (readers drop entries older than
# worker_registry.PROGRESS_STALE_S).
HEARTBEAT_S = 5.0
# Backoff between attempts to store a game while the store is full.
STORE_RETRY_FIRST_S = 0.5
STORE_RETRY_MAX_S = 8.0
# Longest single sleep while waiting (for a model, a training, the store): the stop flag
# is checked at least this often.
WAIT_STEP_S = 0.5


class SelfPlayProcess:
    """The driver, its games and this process's model, kept across slices."""

    def __init__(self, settings: Settings) -> None:
        import torch

        # One pool process per core: more torch threads per process only fight.
        torch.set_num_threads(settings.inference_threads or 1)
        self.settings = settings
        self.id = secrets.token_hex(8)
        self.pid = os.getpid()
        self.driver = make_driver(settings, None, None)
        slots = self.driver.capacity
        self.boards = np.zeros((slots, *BOARD_SHAPE), dtype=np.float32)
        self.masks = np.zeros((slots, *MASK_SHAPE), dtype=bool)
        self.model = CurrentModel(settings)
        self.unstored: list[GameRecord] = []  # finished, not taken by the store yet
        self.games_stored = 0
        self.examples_stored = 0
        self.evaluations_stored = 0  # network evaluations the stored games needed
        self.batches = 0
        self.batch_rows = 0
        self.state = "starting"
        self.started = time.time()
        self._next_model_check = 0.0
        self._next_heartbeat = 0.0
        self._last_beat = (time.monotonic(), 0, 0, 0)  # time, moves, batches, rows

    def game_id(self, game: GameRecord) -> str:
        return f"{self.id}:{game.index}"

    def run_slice(
        self, r: redis.Redis, keys: Keys, budget_s: float, max_games: int = 0
    ) -> dict[str, Any]:
        """Advances the games for `budget_s` seconds (or until `max_games` > 0 games were
        stored); returns a summary of the slice."""
        deadline = time.monotonic() + budget_s
        store = ExampleStore.for_producer(self.settings, r, keys, full_wait_s=0.0)
        out: dict[str, Any] = {"process": self.id, "stored": 0, "examples": 0, "batches": 0}
        batches0 = self.batches
        with slice_running():
            ready = self._store_finished(store, r, keys, deadline, out) and self._wait_for_model(
                r, keys, deadline
            )
            while ready and not self._slice_over(deadline, max_games, out):
                self._maybe_swap_model(r, keys)
                if self._wait_while_training(r, keys, deadline):
                    continue
                self.state = "playing"
                n = self._prepare_batch()
                # Games that finished in it are stored before anything else happens.
                if not self._store_finished(store, r, keys, deadline, out):
                    break  # the store is full: the prepared batch waits for the next slice
                self._evaluate_batch(n)
                self._heartbeat(r, keys)
            self._heartbeat(r, keys, force=True)
        out["batches"] = self.batches - batches0
        out["unstored"] = len(self.unstored)
        out["checkpoint"] = self.model.key[1] if self.model.key else None
        out["stopped"] = stop_requested()
        return out

    def _slice_over(self, deadline: float, max_games: int, out: dict[str, Any]) -> bool:
        return (
            stop_requested()
            or time.monotonic() >= deadline
            or (max_games > 0 and out["stored"] >= max_games)
        )

    def _prepare_batch(self) -> int:
        """The driver advances every slot to its next leaf (games that finish go to
        self.unstored, their slots start new games); returns the batch size."""
        n = self.driver.pending  # a batch prepared by an earlier slice, not evaluated yet
        if n == 0:
            n = self.driver.prepare(self.boards, self.masks)
            self.unstored.extend(GameRecord(**g) for g in self.driver.take_finished())
        return n

    def _evaluate_batch(self, n: int) -> None:
        priors, values = self.model.evaluator(self.boards[:n], self.masks[:n])
        self.driver.feed(priors, values)
        self.batches += 1
        self.batch_rows += n

    def _store_finished(
        self, store: ExampleStore, r: redis.Redis, keys: Keys, deadline: float, out: dict
    ) -> bool:
        """Stores the finished games, oldest first; while the store is full, retries with
        backoff until `deadline`. False if games remain unstored."""
        delay = STORE_RETRY_FIRST_S
        while self.unstored:
            game = self.unstored[0]
            try:
                added = store.add_game(self.game_id(game), game.columns)
            except StoreFullError as e:  # or not set up by the trainer yet
                if time.monotonic() + delay > deadline or stop_requested():
                    return False
                state = "store not ready" if isinstance(e, StoreNotReadyError) else "store full"
                if self.state != state:
                    log.warning(
                        "%s: keeping %d finished game(s) and pausing until the trainer makes room",
                        e,
                        len(self.unstored),
                    )
                self.state = state
                self._heartbeat(r, keys)
                _sleep(delay)
                delay = min(2 * delay, STORE_RETRY_MAX_S)
                continue
            self.unstored.pop(0)
            if added:
                record_game(r, keys, added)
                self.games_stored += 1
                self.examples_stored += added
                self.evaluations_stored += game.evaluations
                out["stored"] += 1
                out["examples"] += added
        return True

    def _wait_for_model(self, r: redis.Redis, keys: Keys, deadline: float) -> bool:
        """Loads the first model, waiting for one to be published until `deadline`."""
        while self.model.key is None:
            try:
                self._swap_model(r, keys)
            except (NoModelError, ValueError, ModelError) as e:
                if not isinstance(e, NoModelError):  # gone or unloadable: a newer may come
                    log.warning("cannot load the chosen model: %s", e)
                self.state = "waiting for a model"
                self._heartbeat(r, keys)
                if time.monotonic() + WAIT_STEP_S > deadline or stop_requested():
                    return False
                _sleep(WAIT_STEP_S)
        return True

    def _maybe_swap_model(self, r: redis.Redis, keys: Keys) -> None:
        now = time.monotonic()
        if now < self._next_model_check:
            return
        self._next_model_check = now + MODEL_CHECK_INTERVAL_S
        try:
            self._swap_model(r, keys)
        except (NoModelError, ValueError, ModelError) as e:  # e.g. bytes retired meanwhile
            log.warning("keeping checkpoint %s: %s", self.model.key, e)

    def _swap_model(self, r: redis.Redis, keys: Keys) -> None:
        if self.model.refresh(r, keys):
            assert self.model.key is not None
            self.driver.model_name, self.driver.checkpoint = self.model.key

    def _wait_while_training(self, r: redis.Redis, keys: Keys, deadline: float) -> bool:
        """With suspend_while_training: True (after a pause) while a training runs."""
        if not self.settings.suspend_while_training or not r.exists(keys.training_active):
            return False
        self.state = "paused while training"
        self._heartbeat(r, keys)
        _sleep(min(WAIT_STEP_S, max(0.0, deadline - time.monotonic())))
        return True

    def progress(self) -> dict[str, Any]:
        """This process's progress entry (see the module docstring)."""
        now = time.monotonic()
        moves = self.driver.moves_played
        t0, moves0, batches0, rows0 = self._last_beat
        self._last_beat = (now, moves, self.batches, self.batch_rows)
        batches = self.batches - batches0
        return {
            "host": socket.gethostname(),
            "pid": self.pid,
            "state": self.state,
            "games_in_flight": self.driver.capacity,
            "games_started": self.driver.games_started,
            "games_finished": self.driver.games_finished,
            "games_stored": self.games_stored,
            "examples_stored": self.examples_stored,
            "evaluations_stored": self.evaluations_stored,
            "unstored": len(self.unstored),
            "unstored_examples": sum(g.num_examples for g in self.unstored),
            "moves": moves,
            "moves_per_s": round((moves - moves0) / max(now - t0, 1e-9), 2),
            "evaluations": self.driver.evaluations,
            "batches": self.batches,
            "batch_rows": self.batch_rows,
            "occupancy": (
                round((self.batch_rows - rows0) / (batches * self.driver.capacity), 4)
                if batches
                else None
            ),
            "checkpoint": self.model.key[1] if self.model.key else None,
            "started": self.started,
            "updated": time.time(),
        }

    def _heartbeat(self, r: redis.Redis, keys: Keys, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_heartbeat:
            return
        self._next_heartbeat = now + HEARTBEAT_S
        r.hset(keys.selfplay_progress, self.id, json.dumps(self.progress()))


def _sleep(seconds: float) -> None:
    """Sleeps up to `seconds`, returning early once a stop is requested."""
    end = time.monotonic() + seconds
    while not stop_requested() and (left := end - time.monotonic()) > 0:
        time.sleep(min(left, WAIT_STEP_S))


_process: SelfPlayProcess | None = None


def run_slice(
    settings: Settings, r: redis.Redis, keys: Keys, budget_s: float, max_games: int = 0
) -> dict[str, Any]:
    """One self-play task: a slice of this process's self-play (see the module docstring)."""
    global _process
    if _process is None or _process.pid != os.getpid():
        _process = SelfPlayProcess(settings)
    return _process.run_slice(r, keys, budget_s, max_games)
