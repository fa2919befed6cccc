"""What the HTTP and gRPC servers share: Redis, the example store, models, the CPU player.

Models come from Redis first (Keys.latest_model and the published TorchScript bytes),
so a server on another machine than the trainer works without a shared disk; the model
repository on disk is the fallback (and the only source of older state_dicts).
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from hexz_tasks import hexz_pb2
from hexz_tasks.keys import Keys
from hexz_tasks.server.player import CpuPlayer, Unavailable
from hexz_tasks.settings import MODEL_NAME_MAX_LEN, Settings, valid_model_name

log = logging.getLogger(__name__)

# Minutes of per-minute rate counters kept (as the self-play feeder keeps them).
RATE_WINDOW_MIN = 60
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


class ModelSource:
    """The model the CPU player searches with, loaded once and swapped when a newer
    checkpoint is published (or the fixed HEXZ_LOCAL_MODEL_PATH file)."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self._lock = threading.Lock()
        self._key: tuple[str, int] | None = None
        self._model: Any = None
        self._redis_retry_at = float("-inf")

    def get(self) -> Any:
        """The current model (an inference.Evaluator); raises Unavailable if there is none.

        Asks Redis for a newer checkpoint on each call; while Redis cannot answer, a
        model already loaded keeps playing (asking again MODEL_RECHECK_AFTER_FAILURE_S
        after a failure).
        """
        settings = self.state.settings
        if settings.local_model_path is not None:
            with self._lock:
                if self._model is None:
                    self._model = self._load(settings.local_model_path.read_bytes())
                    log.info("CPU player uses %s", settings.local_model_path)
                return self._model
        now = time.monotonic()
        if self._model is not None and now < self._redis_retry_at:
            return self._model
        try:
            latest = self.state.latest_model_key()
        except redis.RedisError as e:
            if self._model is None:
                raise Unavailable(f"no model loaded and Redis is unavailable: {e}") from None
            log.warning("Redis unavailable (%s); the CPU player keeps its loaded model", e)
            self._redis_retry_at = now + MODEL_RECHECK_AFTER_FAILURE_S
            return self._model
        key = (latest.name, latest.checkpoint)
        with self._lock:
            if key != self._key:
                try:
                    _, data = self.state.model_bytes(key[0], key[1], jit=True)
                except NotFound as e:
                    raise Unavailable(f"the newest model cannot be loaded: {e}") from None
                self._model = self._load(data)
                self._key = key
                log.info("CPU player loaded %s checkpoint %d", *key)
            return self._model

    def describe(self) -> str:
        settings = self.state.settings
        if settings.local_model_path is not None:
            return str(settings.local_model_path)
        if self._key is None:
            return "none loaded yet"
        return f"{self._key[0]} checkpoint {self._key[1]}"

    @staticmethod
    def _load(data: bytes) -> Any:
        from hexz_tasks.inference import Evaluator

        return Evaluator(data)


@dataclass
class ServerState:
    settings: Settings
    redis: redis.Redis
    keys: Keys
    started: float = field(default_factory=time.time)
    models: ModelSource = field(init=False)
    player: CpuPlayer = field(init=False)

    def __post_init__(self) -> None:
        from hexz_tasks.repository import ModelRepository
        from hexz_tasks.store import ExampleStore

        # A gRPC client should hear "at capacity" soon rather than hang on a full store.
        self.store = ExampleStore(self.redis, self.keys, full_wait_s=5.0)
        self.repo = ModelRepository(self.settings.repo_base_dir, self.settings.model_name)
        from hexz_tasks.redis_server import with_timeout

        self.health_redis = with_timeout(self.redis, HEALTH_REDIS_TIMEOUT_S)
        self.models = ModelSource(self)
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
        raw = self.redis.get(self.keys.latest_model)
        if raw is not None:
            latest = json.loads(raw)
            return hexz_pb2.ModelKey(name=latest["name"], checkpoint=int(latest["checkpoint"]))
        cp = self.repo.latest()
        if cp is None:
            raise Unavailable("no model checkpoint exists yet")
        return hexz_pb2.ModelKey(name=self.settings.model_name, checkpoint=cp)

    def model_bytes(self, name: str, checkpoint: int, jit: bool) -> tuple[int, bytes]:
        """(checkpoint, bytes) of a model: TorchScript if `jit`, else a torch.save'd state_dict.

        checkpoint -1 means the newest one. Raises NotFound if it does not exist.
        """
        check_model_name(name)
        if checkpoint == -1:
            latest = self.latest_model_key()
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
        script = self.redis.get(self.keys.model_bytes(name, checkpoint))
        if script is None and (cdir / "scriptmodule.pt").is_file():
            script = (cdir / "scriptmodule.pt").read_bytes()
        if script is None:
            raise NotFound(f"model {name!r} has no checkpoint {checkpoint}")
        if jit:
            return checkpoint, script
        return checkpoint, _state_dict_bytes(script)

    def add_examples(self, batch_id: str, examples: list[hexz_pb2.TrainingExample]) -> int:
        """Stores one worker request (one game); counts it in the per-minute rates that
        the self-play tasks also feed (Keys.rates), so the status page sees both."""
        added = self.store.add_examples(batch_id, examples)
        if added:
            now = time.time()
            minute = int(now // 60)
            with self.redis.pipeline(transaction=False) as p:
                p.hincrby(self.keys.rates, f"{minute}:games", 1)
                p.hincrby(self.keys.rates, f"{minute}:examples", added)
                p.execute()
            if minute != self._pruned_minute:
                self._pruned_minute = minute
                old = [
                    f
                    for f in self.redis.hkeys(self.keys.rates)
                    if int(f.split(b":")[0]) < minute - RATE_WINDOW_MIN
                ]
                if old:
                    self.redis.hdel(self.keys.rates, *old)
        return added


def _state_dict_bytes(script: bytes) -> bytes:
    """A state_dict file from TorchScript bytes (same parameter names as model.pt)."""
    import torch

    from hexz_tasks.model import load_scriptmodule

    buf = io.BytesIO()
    torch.save(load_scriptmodule(script).state_dict(), buf)
    return buf.getvalue()
