"""Which model each part of the system plays with, decided in one place.

- Self-play and the CPU player play with :func:`chosen_checkpoint`: the newest published
  checkpoint, or with promotion gating (``HEXZ_PROMOTION_MIN_SCORE``) the promoted one
  (checkpoint 0 until a challenger passes the gate, see hexz_tasks.evaluation). The CPU
  player uses ``HEXZ_LOCAL_MODEL_PATH`` instead when it is set.
- The arena and the evaluation play named checkpoints: :func:`checkpoint_bytes`.
- A long-lived process (a self-play worker process, the servers) keeps one
  :class:`CurrentModel`, which asks :func:`chosen_checkpoint` (one small Redis key, never
  the model bytes) and loads a model only when the choice changed.

Bytes come from the model repository on this machine's disk when it has the checkpoint,
else from Redis (published TorchScript bytes, or the promoted model's, which outlive the
retirement of old published checkpoints): workers on other machines need only Redis.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import redis

from hexz_tasks.keys import Keys
from hexz_tasks.settings import Settings

log = logging.getLogger(__name__)

ModelKey = tuple[str, int]  # (model name, checkpoint)


class NoModelError(LookupError):
    """No model is published yet (the gpu worker publishes checkpoint 0 on its first tick)."""


def fetch_latest(r: redis.Redis, keys: Keys) -> tuple[str, int] | None:
    """(name, checkpoint) of the newest published model, or None."""
    raw = r.get(keys.latest_model)
    if raw is None:
        return None
    d = json.loads(raw)
    return d["name"], int(d["checkpoint"])


def promoted_checkpoint(settings: Settings, r: redis.Redis, keys: Keys) -> int | None:
    """The checkpoint promotion gating lets self-play use (None: nothing promoted yet)."""
    raw = r.get(keys.promoted_model)
    if raw is None:
        return None
    d = json.loads(raw)
    return int(d["checkpoint"]) if d["name"] == settings.model_name else None


def promote(
    settings: Settings, r: redis.Redis, keys: Keys, checkpoint: int, *, expect: int | None
) -> bool:
    """Makes `checkpoint` self-play's model if the promoted one is still `expect`
    (None: nothing promoted yet). Writes the bytes first, then the JSON, atomically."""
    data = checkpoint_bytes(settings, checkpoint, r, keys)
    with r.pipeline() as p:
        try:
            p.watch(keys.promoted_model)
            if promoted_checkpoint(settings, r, keys) != expect:
                return False
            p.multi()
            p.set(keys.promoted_model_bytes, data)
            p.set(
                keys.promoted_model,
                json.dumps({"name": settings.model_name, "checkpoint": checkpoint}),
            )
            p.publish(
                keys.events_channel, json.dumps({"event": "promoted", "checkpoint": checkpoint})
            )
            p.execute()
        except redis.WatchError:
            return False
    log.info("promoted checkpoint %d for self-play", checkpoint)
    return True


def chosen_checkpoint(settings: Settings, r: redis.Redis, keys: Keys) -> ModelKey | None:
    """(name, checkpoint) that self-play and the CPU player play with now.

    The newest published checkpoint (before anything is published: the newest in the
    repository on this disk, if any); with promotion gating the promoted one, and
    checkpoint 0 is promoted first if nothing is yet. None while there is no model.
    """
    from hexz_tasks.repository import ModelRepository

    latest = fetch_latest(r, keys)
    if latest is None:
        on_disk = ModelRepository(settings.repo_base_dir, settings.model_name).latest()
        latest = None if on_disk is None else (settings.model_name, on_disk)
    if settings.promotion_min_score is not None:
        promoted = promoted_checkpoint(settings, r, keys)
        if promoted is None and latest is not None:
            try:
                promote(settings, r, keys, 0, expect=None)
            except ValueError:
                log.warning("checkpoint 0 is gone; self-play uses the newest model")
            promoted = promoted_checkpoint(settings, r, keys)
        if promoted is not None:
            return settings.model_name, promoted
    return latest


def checkpoint_bytes(
    settings: Settings, checkpoint: int, r: redis.Redis | None = None, keys: Keys | None = None
) -> bytes:
    """A checkpoint's TorchScript bytes: from the repository on disk, else from Redis
    (published bytes, or the promoted model's). ValueError if neither has it."""
    from hexz_tasks.repository import ModelRepository

    repo = ModelRepository(settings.repo_base_dir, settings.model_name)
    path = repo.checkpoint_dir(checkpoint) / "scriptmodule.pt"
    if path.is_file():
        return path.read_bytes()
    if r is not None and keys is not None:
        data = r.get(keys.model_bytes(settings.model_name, checkpoint))
        if data is not None:
            return data
        if promoted_checkpoint(settings, r, keys) == checkpoint:
            data = r.get(keys.promoted_model_bytes)
            if data is not None:
                return data
    raise ValueError(
        f"checkpoint {checkpoint} of model {settings.model_name!r} is neither in "
        f"{repo.checkpoints_dir} nor published in Redis"
    )


class CurrentModel:
    """The model a long-lived process plays with: loaded once, swapped when the choice
    changes (a newer checkpoint, a promotion). Thread-safe.

    `local_path`: a fixed TorchScript file instead (the CPU player's
    HEXZ_LOCAL_MODEL_PATH). Models run on the CPU: HEXZ_DEVICE is the trainer's device.
    """

    def __init__(self, settings: Settings, local_path: Path | None = None) -> None:
        self.settings = settings
        self.local_path = local_path
        self.key: ModelKey | None = None
        self.evaluator: Any = None  # inference.Evaluator
        self._lock = threading.Lock()

    def refresh(self, r: redis.Redis, keys: Keys) -> bool:
        """Loads the chosen model if it changed; True if it did. NoModelError while
        there is none; ValueError if the chosen checkpoint's bytes are gone."""
        from hexz_tasks.inference import Evaluator

        with self._lock:
            if self.local_path is not None:
                if self.evaluator is not None:
                    return False
                self.evaluator = Evaluator(self.local_path.read_bytes(), "cpu")
                log.info("using the model in %s", self.local_path)
                return True
            key = chosen_checkpoint(self.settings, r, keys)
            if key is None:
                raise NoModelError("no model published yet (is a gpu worker running?)")
            if key == self.key:
                return False
            self.evaluator = Evaluator(checkpoint_bytes(self.settings, key[1], r, keys), "cpu")
            self.key = key
            log.info("loaded model %s checkpoint %d", *key)
            return True

    def describe(self) -> str:
        if self.local_path is not None:
            return str(self.local_path)
        if self.key is None:
            return "none loaded yet"
        return f"{self.key[0]} checkpoint {self.key[1]}"
