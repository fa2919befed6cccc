"""Names of every Redis key and channel the project uses, in one place.

All keys start with the configured prefix (HEXZ_KEY_PREFIX, default "hexz") so that
several runs, and the tests, can share one Redis without touching each other's data.
Celery's own keys (its queues, unacknowledged messages, results) live under
:attr:`Keys.celery_prefix` (kombu's ``global_keyprefix``): a worker's ``-Q selfplay``
names the queue, Redis holds it at ``<prefix>:celery:selfplay``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "hexz"

    # --- example store ---
    @property
    def examples_stream(self) -> str:
        """Append-only stream of stored games (compact example bytes)."""
        return f"{self.prefix}:examples"

    def game_done(self, game_id: str) -> str:
        """Marks a game as stored, so a redelivered task adds it once."""
        return f"{self.prefix}:game:{game_id}"

    @property
    def counters(self) -> str:
        """Hash of counters that survive restarts (examples, games, ...)."""
        return f"{self.prefix}:counters"

    # --- models ---
    @property
    def latest_model(self) -> str:
        """JSON {"name": ..., "checkpoint": N} of the newest published checkpoint."""
        return f"{self.prefix}:model:latest"

    def model_bytes(self, name: str, checkpoint: int) -> str:
        """TorchScript bytes of a published checkpoint, for workers on other machines."""
        return f"{self.prefix}:model:{name}:{checkpoint}:scriptmodule"

    # --- training ---
    @property
    def training_lock(self) -> str:
        return f"{self.prefix}:training:lock"

    @property
    def training_active(self) -> str:
        """Set while a training runs (suspend_while_training reads it)."""
        return f"{self.prefix}:training:active"

    @property
    def training_runs(self) -> str:
        """List of JSON statistics, one per finished training run."""
        return f"{self.prefix}:training:runs"

    @property
    def training_budget(self) -> str:
        """JSON of the newest estimate of a training run's time against its time limit
        (hexz_tasks.training_budget): ok, warning, refused, timed out or unknown."""
        return f"{self.prefix}:training:budget"

    @property
    def training_timeout(self) -> str:
        """JSON {"samples", "seconds", "limit_s", "device", "checkpoint", "time"} of the
        newest training that hit its time limit."""
        return f"{self.prefix}:training:timeout"

    @property
    def events_channel(self) -> str:
        """Pub/sub channel of JSON events {"event": "training_started" | "training_done", ...}."""
        return f"{self.prefix}:events"

    # --- tasks ---
    def task_attempts(self, task_id: str) -> str:
        """Redelivery counter of a task, to cap message loops on worker loss."""
        return f"{self.prefix}:task:{task_id}:attempts"

    @property
    def selfplay_running(self) -> str:
        """Hash task id -> JSON {"started", "pid", "host"} of self-play tasks now running."""
        return f"{self.prefix}:selfplay:running"

    @property
    def selfplay_progress(self) -> str:
        """Hash process id -> JSON progress of one self-play process (games in flight, moves,
        occupancy, checkpoint, ...), refreshed every few seconds while it plays."""
        return f"{self.prefix}:selfplay:progress"

    @property
    def workers(self) -> str:
        """Hash worker name -> JSON {"queues", "concurrency", "seen"}, refreshed by live workers."""
        return f"{self.prefix}:workers"

    @property
    def rates(self) -> str:
        """Hash "<unix minute>:games" / "<unix minute>:examples" -> count, for rates."""
        return f"{self.prefix}:stats:per_minute"

    # --- Celery's keys (hexz_tasks.celery sets them as kombu's global_keyprefix) ---
    @property
    def celery_prefix(self) -> str:
        """Prefix of every key of Celery's broker and result backend."""
        return f"{self.prefix}:celery:"

    def queue(self, name: str) -> str:
        """The Redis list that holds Celery queue `name` (hexz_tasks.queues)."""
        return self.celery_prefix + name

    @property
    def unacked(self) -> str:
        """Hash of the messages delivered to workers and not yet acknowledged."""
        return self.celery_prefix + "unacked"

    # --- arena ---
    @property
    def arena_games(self) -> str:
        """Hash "<match id>:<game>" -> JSON of one arena game (players, first mover, score,
        result)."""
        return f"{self.prefix}:arena:games"

    @property
    def arena_matches(self) -> str:
        """Hash match id -> JSON summary of a finished match (score, 95 % interval)."""
        return f"{self.prefix}:arena:matches"

    def arena_claim(self, match_id: str) -> str:
        """Held (with expiry) by the worker playing an automatic evaluation match."""
        return f"{self.prefix}:arena:claim:{match_id}"

    @property
    def checkpoint_metrics(self) -> str:
        """Hash checkpoint -> JSON offline metrics on the held-out examples."""
        return f"{self.prefix}:arena:metrics"

    @property
    def promoted_model(self) -> str:
        """JSON {"name", "checkpoint"} self-play uses when promotion gating is on."""
        return f"{self.prefix}:model:promoted"

    @property
    def promoted_model_bytes(self) -> str:
        """TorchScript bytes of the promoted checkpoint (kept after older ones are retired)."""
        return f"{self.prefix}:model:promoted:scriptmodule"
