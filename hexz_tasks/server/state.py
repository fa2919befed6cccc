"""What the HTTP and gRPC servers share: Redis, the example store, models, the CPU player.

The CPU player plays with what hexz_tasks.model_source chooses (the newest published
checkpoint, the promoted one under promotion gating, or HEXZ_LOCAL_MODEL_PATH). Models
served by FetchModel come from Redis first (Keys.latest_model and the published
TorchScript bytes), so a server on another machine than the trainer works without a
shared disk; the model repository on disk is the fallback (and the only source of
older state_dicts).
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from hexz_tasks import hexz_pb2
from hexz_tasks.errors import ModelError
from hexz_tasks.keys import Keys
from hexz_tasks.model_source import (
    CurrentModel,
    NoModelError,
    checkpoint_bytes,
    chosen_checkpoint,
    fetch_latest,
)
from hexz_tasks.rates import prune, record_game
from hexz_tasks.server.player import CpuPlayer, Unavailable
from hexz_tasks.settings import MODEL_NAME_MAX_LEN, Settings, valid_model_name

log = logging.getLogger(__name__)

# Redis calls on request paths fail after this, so a hung Redis frees the server's threads.
REQUEST_REDIS_TIMEOUT_S = 1.0
# /healthz must answer within a second whatever Redis does.
HEALTH_REDIS_TIMEOUT_S = 0.4
# After Redis failed to say which checkpoint is newest, the CPU player plays on with its
# loaded model this long before it asks again (each ask may cost a request timeout).
MODEL_RECHECK_AFTER_FAILURE_S = 5.0


class NotFound(LookupError):
    """No such model or checkpoint (gRPC NOT_FOUND)."""


def check_model_name(name: str) -> str:
    """Model names become directory names: refuse anything that could leave the repository.

    A name longer than any model can have is NotFound (no such model); other bad names
    are ValueError. Messages quote at most the start of the name, never a server path.
    """
    if len(name) > MODEL_NAME_MAX_LEN:
        raise NotFound(f"no model named {name[:MODEL_NAME_MAX_LEN]!r}... (names are short)")
    if not valid_model_name(name):
        raise ValueError(f"not a valid model name: {name!r}")
    return name


class CpuPlayerModel:
    """The CPU player's model (hexz_tasks.model_source.CurrentModel), as the server needs it."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.current = CurrentModel(state.settings, state.settings.local_model_path)
        self._redis_retry_at = float("-inf")

    def get(self) -> Any:
        """The current model (an inference.Evaluator); raises Unavailable if there is none.

        Asks Redis which checkpoint to play on each call; while Redis cannot answer, a
        model already loaded keeps playing (asking again MODEL_RECHECK_AFTER_FAILURE_S
        after a failure).
        """
        now = time.monotonic()
        if self.current.evaluator is not None and now < self._redis_retry_at:
            return self.current.evaluator
        try:
            self.current.refresh(self.state.redis, self.state.keys)
        except NoModelError:
            raise Unavailable("no model checkpoint exists yet") from None
        except redis.RedisError as e:
            if self.current.evaluator is None:
                raise Unavailable(f"no model loaded and Redis is unavailable: {e}") from None
            log.warning("Redis unavailable (%s); the CPU player keeps %s", e, self.describe())
            self._redis_retry_at = now + MODEL_RECHECK_AFTER_FAILURE_S
        except (ValueError, ModelError) as e:
            if self.current.evaluator is None:
                raise Unavailable(f"the chosen model cannot be loaded: {e}") from None
            log.warning("CPU player keeps %s: %s", self.current.describe(), e)
        return self.current.evaluator

    def describe(self) -> str:
        return self.current.describe()


@dataclass
class ServerState:
    settings: Settings
    redis: redis.Redis
    keys: Keys
    started: float = field(default_factory=time.time)
    models: CpuPlayerModel = field(init=False)
    player: CpuPlayer = field(init=False)

    def __post_init__(self) -> None:
        from hexz_tasks.repository import ModelRepository
        from hexz_tasks.store import ExampleStore

        # A gRPC client should hear "at capacity" soon rather than hang on a full store.
        self.store = ExampleStore.for_producer(
            self.settings, self.redis, self.keys, full_wait_s=5.0
        )
        self.repo = ModelRepository(self.settings.repo_base_dir, self.settings.model_name)
        from hexz_tasks.redis_server import with_timeout

        self.health_redis = with_timeout(self.redis, HEALTH_REDIS_TIMEOUT_S)
        self.models = CpuPlayerModel(self)
        self._pruned_minute = 0
        self.player = CpuPlayer(self.settings, self.models.get)

    @classmethod
    def create(cls, settings: Settings, client: redis.Redis | None = None) -> ServerState:
        """State with `client`, else a client whose calls fail within a second (no
        retries): a request never waits long for a Redis that is down or hung."""
        if client is None:
            from hexz_tasks.redis_server import connect

            client = connect(settings, retries=0, timeout_s=REQUEST_REDIS_TIMEOUT_S)
        return cls(settings, client, Keys(settings.key_prefix))

    def _repo(self, name: str) -> Any:
        if name == self.settings.model_name:
            return self.repo
        from hexz_tasks.repository import ModelRepository

        return ModelRepository(self.settings.repo_base_dir, check_model_name(name))

    def latest_model_key(self) -> hexz_pb2.ModelKey:
        """The newest published checkpoint (Redis), else the newest on disk."""
        latest = fetch_latest(self.redis, self.keys)
        if latest is not None:
            return hexz_pb2.ModelKey(name=latest[0], checkpoint=latest[1])
        cp = self.repo.latest()
        if cp is None:
            raise Unavailable("no model checkpoint exists yet")
        return hexz_pb2.ModelKey(name=self.settings.model_name, checkpoint=cp)

    def selfplay_model_key(self) -> hexz_pb2.ModelKey:
        """The checkpoint self-play should play with (hexz_tasks.model_source): what the
        original workers are told to use; the newest one unless promotion gating holds
        it back."""
        key = chosen_checkpoint(self.settings, self.redis, self.keys)
        if key is None:
            raise Unavailable("no model checkpoint exists yet")
        return hexz_pb2.ModelKey(name=key[0], checkpoint=key[1])

    def model_bytes(self, name: str, checkpoint: int, jit: bool) -> tuple[int, bytes]:
        """(checkpoint, bytes) of a model: TorchScript if `jit`, else a torch.save'd state_dict.

        checkpoint -1 means the one self-play should play with. Raises NotFound if it does
        not exist.
        """
        check_model_name(name)
        if checkpoint == -1:
            latest = self.selfplay_model_key()
            if name == latest.name:
                checkpoint = latest.checkpoint
            else:
                cp = self._repo(name).latest()
                if cp is None:
                    raise NotFound(f"model {name!r} has no checkpoints")
                checkpoint = cp
        cdir = self._repo(name).checkpoint_dir(checkpoint)
        if not jit and (cdir / "model.pt").is_file():
            return checkpoint, (cdir / "model.pt").read_bytes()
        try:  # disk, published bytes, or the promoted model's
            settings = self.settings.replace(model_name=name)
            script = checkpoint_bytes(settings, checkpoint, self.redis, self.keys)
        except ValueError:
            raise NotFound(f"model {name!r} has no checkpoint {checkpoint}") from None
        if jit:
            return checkpoint, script
        return checkpoint, _state_dict_bytes(script)

    def add_examples(self, batch_id: str, examples: list[hexz_pb2.TrainingExample]) -> int:
        """Stores one worker request (one game); counts it in the per-minute rates that
        the self-play tasks also feed (Keys.rates), so the status page sees both."""
        added = self.store.add_examples(batch_id, examples)
        if added:
            now = time.time()
            record_game(self.redis, self.keys, added, now)
            if int(now // 60) != self._pruned_minute:
                self._pruned_minute = int(now // 60)
                prune(self.redis, self.keys, now)
        return added


def _state_dict_bytes(script: bytes) -> bytes:
    """A state_dict file from TorchScript bytes (same parameter names as model.pt)."""
    import torch

    from hexz_tasks.model import load_scriptmodule

    buf = io.BytesIO()
    torch.save(load_scriptmodule(script).state_dict(), buf)
    return buf.getvalue()
