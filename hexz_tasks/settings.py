"""All settings in one place, read from ``HEXZ_<NAME>`` environment variables.

Defaults follow shared/spec/selfplay-and-training.md. Parsing is strict: a malformed
value or an unknown ``HEXZ_*`` variable fails at start-up with a message naming the
variable, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_type_hints
from urllib.parse import urlsplit, urlunsplit

from hexz_tasks.architectures import ARCHITECTURES
from hexz_tasks.players import parse_baseline

ENV_PREFIX = "HEXZ_"

# Settings whose values are never written (settings.json) or shown (status page, logs).
SECRET_SETTINGS = frozenset({"flower_basic_auth", "grpc_token"})
MASK = "***"

# Model names become directory names and Redis keys: letters, digits, ".", "_", "-".
MODEL_NAME_MAX_LEN = 64
_MODEL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

# Variables that other programs of the Hexz family read from the same environment;
# they are not ours to validate.
FOREIGN_VARIABLES = frozenset({"HEXZ_TRAINING_SERVER_ADDR"})

# How long a self-play slice may run past its budget: its last batch, storing the games
# that batch finished, a model swap (building an evaluator takes seconds).
SLICE_OVERRUN_S = 30.0
# Celery's soft time limit of a task, as a share of its hard limit: the task gets
# SoftTimeLimitExceeded there, and is killed at the hard limit.
SOFT_LIMIT_FRACTION = 0.9
# A pessimistic CPU speed for one self-play process (one thread): a twentieth of what
# ONNX Runtime reached on one core of the 2-core development machines (conv2d 5x128:
# 66 M multiply-accumulates per evaluation at 500-1,400 evaluations/s).
SLOW_CPU_MACS_PER_S = 2e9

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class SettingsError(ValueError):
    """A setting has a bad value; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    # --- Self-play search (the reference algorithm's settings) ---
    runs_per_move: int = 800
    runs_per_fast_move: int = 100
    fast_move_prob: float = 0.0
    uct_c: float = 1.5
    initial_root_q_value: float = -0.2
    initial_q_penalty: float = 0.3
    dirichlet_concentration: float = 0.0
    # > 0: each leaf's value is mixed with the mean result of this many random playouts,
    # (1 - w) * network value + w * playouts, w = random_playout_weight (1, the reference:
    # the playouts replace the network's value).
    random_playouts: int = 0
    random_playout_weight: float = 1.0
    # Resign (end the game, the player to move loses) once the root value of the
    # player to move falls below this; None = off.
    resign_threshold: float | None = None
    max_moves_per_game: int = 200
    # Self-play moves (plies) 0 .. n - 1 are drawn in proportion to root visits, later
    # ones take the most visited child: less noisy game results for the value target.
    # None = every move is drawn (the reference: temperature 1 for the whole game).
    sampled_moves: int | None = None
    # End a self-play game once the player to move is stuck and behind (the result
    # cannot change any more). Off by default, as in the reference.
    end_game_when_stuck: bool = False
    # Reuse the network output of a position already expanded in the current search
    # tree (a transposition) instead of evaluating it again. Same search, fewer
    # evaluations; off = evaluate every leaf like the reference.
    eval_cache: bool = True
    # First-play urgency of an unvisited child as the reference computes it: the parent's
    # Q negated whenever parent and child have different next_turn, which is wrong after
    # a double move (the parent's mover moves again). False: negated iff the parent's
    # mover differs from its player to move (the child's mover).
    fpu_reference: bool = False
    suspend_while_training: bool = False
    # Games a self-play process keeps in flight, advanced together (one network batch per
    # step); a finished game's slot starts a new game at once, and the games outlive the
    # tasks (slices). Why 16: on one core ONNX Runtime runs conv2d 5x128 at the same
    # speed from batches of about 16 up (1,400 evaluations/s here at batch 16, 64 and
    # 128 alike; 1,100 at batch 1; bench/batch_sizes.py), while the first games finish
    # only after about games_in_flight x 30,000 evaluations (800 runs per move): at
    # 1,400/s 6 minutes with 16 slots, 46 with 128. Later games stream out at the
    # same rate either way, and fewer slots keep each game's examples closer to the
    # newest checkpoint. With many inference threads or a GPU, raise it.
    games_in_flight: int = 16
    # Wall-clock budget of one self-play task (a slice): it advances the process's games
    # for this long, storing each game as it finishes, then returns. Short enough that a
    # stopping worker or a redelivered task loses little, long enough that task overhead
    # (a message, an acknowledgement) is negligible.
    selfplay_slice_s: float = 60.0
    # Torch intra-op threads for inference in a self-play process (0 = torch default).
    inference_threads: int = 0

    # --- Model and training ---
    data_dir: Path = Path("hexz-data")
    # Defaults to <data_dir> when unset (the spec's model_repo_base_dir).
    model_repo_base_dir: Path | None = None
    model_name: str = "flagz"
    # A name in hexz_tasks.architectures.ARCHITECTURES.
    model_type: str = "conv2d"
    model_blocks: int = 5
    model_filters: int = 128
    batch_size: int = 4096
    training_mode: Literal["window", "replay"] = "window"
    training_trigger_threshold: int = 100
    training_examples_window_size: int = 2**20
    num_epochs: int = 7
    replay_buffer_size: int = 2**16
    replay_buffer_reuse: int = 3
    optimizer: Literal["adam", "sgd"] = "adam"
    learning_rate: float = 1e-3
    adam_weight_decay: float = 1e-4
    sgd_momentum: float = 0.9
    # Step-down schedule "step:lr,step:lr,..." in optimiser steps, e.g.
    # "0:0.2,20000:0.02,40000:0.002"; empty = constant learning_rate.
    lr_schedule: str = ""
    device: str = "cpu"
    shuffle: bool = True
    pin_memory: bool = False
    # Train on a random symmetry of each example (the left-right mirror, the up-down
    # mirror, their composition or none); off = the examples as played (the reference).
    train_symmetries: bool = False
    # The value head's target: (1 - w) * game result + w * the root's search value
    # (root_q; the result alone where an example has none). 0 = the result only (the
    # reference); the search value is less noisy than one game's result.
    value_target_q_weight: float = 0.0
    # Seconds between beat ticks of the training task.
    training_check_interval_s: float = 5.0
    # The training lock's lifetime unless its holder refreshes it (every third of it): a
    # killed trainer blocks the next training for at most this long. Short enough that a
    # replaced gpu worker trains on one of its first ticks, long enough that a trainer
    # whose Redis stalls for a few seconds keeps its lock.
    training_lock_ttl_s: float = 20.0

    # --- Arena and ratings (hexz_tasks.arena, hexz_tasks.ratings) ---
    # Runs (or pure-MCTS playouts) per move and games per match (even: each board is
    # played twice, seats swapped) of the automatic checkpoint evaluation.
    arena_runs_per_move: int = 100
    arena_games: int = 20
    # Players without a model (hexz_tasks.players: mcts[:N], uct:N, uct@MS, random) that
    # each evaluated checkpoint meets, comma-separated (empty: none).
    arena_baselines: str = "mcts"
    # 0 = play the most visited move; > 0 = sample by visits ** (1 / temperature).
    arena_temperature: float = 0.0
    # Seconds between beat ticks of the automatic evaluation (one match per tick at most).
    arena_interval_s: float = 60.0
    # Self-play switches to a new checkpoint only once it scores at least this against the
    # one self-play uses now; None = always the newest.
    promotion_min_score: float | None = None

    # --- Infrastructure ---
    # None: the project starts and manages its own redis-server in data_dir.
    redis_url: str | None = None
    key_prefix: str = "hexz"
    # Bound on examples waiting in Redis for the trainer to drain them (about 150 bytes
    # each): producers refuse to store beyond it, and the self-play feeder stops queueing
    # slices once the store is near it.
    max_pending_examples: int = 1_000_000
    # Lifetime of a done marker (one Redis key per stored game or gRPC batch, ~130 bytes).
    # It only has to outlive a retried write of the same game or request, as a game id is
    # unique to its game: the Redis client retries a write for minutes at most, a process
    # retries a game the store did not acknowledge in its next slice, a gRPC worker
    # resends a failed request. An hour covers these with room for a Redis restart (the
    # expiry runs on the wall clock); at ~17 games/s its markers take ~8 MB (a week's:
    # ~1.4 GB).
    done_marker_ttl_s: float = 3600.0
    # Seconds a producer waits for Redis to fsync each stored game or batch to its AOF
    # (WAITAOF, Redis >= 7.2; an older Redis is used without waiting). 0: no wait.
    wait_aof_s: float = 0.0
    # Hard time limit of one Celery task other than training (an evaluation tick, an
    # arena match, a self-play slice, which ends by its own budget long before it); the
    # soft limit is 90 % of it.
    task_time_limit_s: float = 3600.0
    # Hard time limit of one training run (soft at 90 %). A run's time grows with its
    # window: at the spec's defaults on a CPU (~150 samples/s for 5x128 on 2 cores) a full
    # window (2**20 examples x 7 epochs) takes ~14 hours, so a day leaves room for a
    # slower machine; the training tick refuses a run estimated to pass the soft limit
    # (hexz_tasks.training_budget), and says so.
    training_time_limit_s: float = 86400.0
    # Seconds after which Redis redelivers a task whose worker vanished without an ack;
    # above both time limits, so a running task is never delivered twice. What a long one
    # costs: the message of a worker that vanished (its host died) comes back late, which
    # for the short tasks is harmless: the feeder replaces a lost self-play slice after
    # its budget, training and evaluation ticks expire, and a task whose pool process
    # dies is requeued at once (reject on worker loss).
    visibility_timeout_s: float = 90000.0
    # Deliveries of one task (first run + redeliveries after a lost worker) before it is dropped.
    task_max_deliveries: int = 3
    # A TorchScript file the CPU player uses instead of the newest checkpoint.
    local_model_path: Path | None = None
    # Upper bounds the CPU player applies to a request's think time / iterations.
    max_think_time_ms: int = 10_000
    max_suggest_iterations: int = 100_000
    # CPU player requests searched at the same time; more wait for a free slot.
    max_concurrent_suggestions: int = 4
    # `user:password[,user:password]` for Flower; unset: `hexz flower` generates one.
    flower_basic_auth: str | None = None
    # gRPC TrainingService for workers on other machines: a shared token the clients send
    # as "authorization: Bearer <token>" metadata (None: no check), and TLS (both files
    # or neither; None: plain text, for 127.0.0.1).
    grpc_token: str | None = None
    grpc_tls_cert: Path | None = None
    grpc_tls_key: Path | None = None
    # ControlEvents streams held open at once (each holds a server thread; more are
    # refused) and how long one lives before the server ends it (the worker reconnects).
    grpc_max_event_streams: int = 16
    grpc_event_stream_max_age_s: float = 600.0
    # Disk retention (hexz_tasks.retention), applied after each training and by `hexz gc`:
    # the newest KEEP_LAST_CHECKPOINTS checkpoints (with their archives) and every
    # KEEP_EVERY_CHECKPOINT-th one (0: none) stay, and example chunks holding at least
    # KEEP_EXAMPLES examples (None: what the training window or replay buffer needs).
    retention: bool = True
    keep_last_checkpoints: int = 20
    keep_every_checkpoint: int = 10
    keep_examples: int | None = None

    @property
    def repo_base_dir(self) -> Path:
        return self.model_repo_base_dir or self.data_dir

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Reads HEXZ_* variables from `env` (default: os.environ); overrides win."""
        env = os.environ if env is None else env
        known = {f.name for f in fields(cls)}
        unknown = sorted(
            k
            for k in env
            if k.startswith(ENV_PREFIX)
            and k not in FOREIGN_VARIABLES
            and k[len(ENV_PREFIX) :].lower() not in known
        )
        if unknown:
            raise SettingsError(f"unknown setting(s): {', '.join(unknown)}")
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in fields(cls):
            var = ENV_PREFIX + f.name.upper()
            if var in env:
                values[f.name] = _parse(var, env[var], hints[f.name])
        for name, value in overrides.items():
            if name not in known:
                raise SettingsError(f"unknown setting: {name}")
            values[name] = value
        settings = cls(**values)
        settings.validate()
        return settings

    def replace(self, **changes: Any) -> Settings:
        settings = dataclasses.replace(self, **changes)
        settings.validate()
        return settings

    def validate(self) -> None:
        positive = [
            "runs_per_move", "runs_per_fast_move", "max_moves_per_game", "games_in_flight",
            "model_blocks", "model_filters", "batch_size", "max_pending_examples",
            "training_trigger_threshold", "training_examples_window_size", "num_epochs",
            "replay_buffer_size", "replay_buffer_reuse", "max_think_time_ms",
            "max_suggest_iterations", "max_concurrent_suggestions",
        ]  # fmt: skip
        for name in positive:
            if getattr(self, name) <= 0:
                raise SettingsError(f"{_var(name)} must be positive, got {getattr(self, name)}")
        nonnegative = ["random_playouts", "inference_threads", "dirichlet_concentration"]
        for name in [*nonnegative, "arena_temperature"]:
            if getattr(self, name) < 0:
                raise SettingsError(f"{_var(name)} must be >= 0, got {getattr(self, name)}")
        for name in [
            "learning_rate",
            "training_check_interval_s",
            "training_lock_ttl_s",
            "arena_interval_s",
            "selfplay_slice_s",
        ]:
            if getattr(self, name) <= 0:
                raise SettingsError(f"{_var(name)} must be positive, got {getattr(self, name)}")
        if self.arena_runs_per_move <= 0 or self.arena_games <= 0 or self.arena_games % 2:
            raise SettingsError(
                "HEXZ_ARENA_RUNS_PER_MOVE must be positive and HEXZ_ARENA_GAMES positive and "
                f"even, got {self.arena_runs_per_move} and {self.arena_games}"
            )
        self.arena_baseline_labels()
        if self.promotion_min_score is not None and not 0 <= self.promotion_min_score <= 1:
            raise SettingsError(
                f"HEXZ_PROMOTION_MIN_SCORE must be in [0, 1], got {self.promotion_min_score}"
            )
        if self.sampled_moves is not None and self.sampled_moves < 0:
            raise SettingsError(f"HEXZ_SAMPLED_MOVES must be >= 0, got {self.sampled_moves}")
        for name in ["fast_move_prob", "random_playout_weight", "value_target_q_weight"]:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise SettingsError(f"{_var(name)} must be in [0, 1], got {getattr(self, name)}")
        if not -1.0 <= self.initial_root_q_value <= 1.0:
            raise SettingsError(
                f"HEXZ_INITIAL_ROOT_Q_VALUE must be in [-1, 1], got {self.initial_root_q_value}"
            )
        if self.model_type not in ARCHITECTURES:
            raise SettingsError(
                f"HEXZ_MODEL_TYPE={self.model_type!r} is invalid: expected one of "
                f"{', '.join(ARCHITECTURES)}"
            )
        if not valid_model_name(self.model_name):
            raise SettingsError(
                f"HEXZ_MODEL_NAME must be 1-{MODEL_NAME_MAX_LEN} letters, digits, '.', '_' "
                f"or '-' (not starting with '.', '_' or '-'), got {self.model_name[:80]!r}"
            )
        if self.device != "cpu" and not (
            self.device == "cuda" or self.device.startswith("cuda:") or self.device == "mps"
        ):
            raise SettingsError(
                f"HEXZ_DEVICE must be cpu, cuda, cuda:N or mps, got {self.device!r}"
            )
        parse_lr_schedule(self.lr_schedule)
        for name in ["task_time_limit_s", "training_time_limit_s"]:
            if not 0 < getattr(self, name) < self.visibility_timeout_s:
                raise SettingsError(
                    f"{_var(name)} must be positive and below HEXZ_VISIBILITY_TIMEOUT_S, "
                    f"got {getattr(self, name)} and {self.visibility_timeout_s}"
                )
        if self.wait_aof_s < 0:
            raise SettingsError(f"HEXZ_WAIT_AOF_S must be >= 0, got {self.wait_aof_s}")
        if self.done_marker_ttl_s < self.selfplay_slice_s + SLICE_OVERRUN_S:
            raise SettingsError(
                f"HEXZ_DONE_MARKER_TTL_S ({self.done_marker_ttl_s:g}) must outlive a retried "
                f"write: at least a self-play slice (HEXZ_SELFPLAY_SLICE_S "
                f"{self.selfplay_slice_s:g}) plus {SLICE_OVERRUN_S:g} s"
            )
        self._validate_slices()
        if self.task_max_deliveries < 1:
            raise SettingsError(
                f"HEXZ_TASK_MAX_DELIVERIES must be positive, got {self.task_max_deliveries}"
            )
        if self.flower_basic_auth is not None and ":" not in self.flower_basic_auth:
            raise SettingsError("HEXZ_FLOWER_BASIC_AUTH must be user:password[,user:password]")
        if (self.grpc_tls_cert is None) != (self.grpc_tls_key is None):
            raise SettingsError("set both HEXZ_GRPC_TLS_CERT and HEXZ_GRPC_TLS_KEY, or neither")
        if self.grpc_token is not None and len(self.grpc_token) < 16:
            raise SettingsError("HEXZ_GRPC_TOKEN must be at least 16 characters")
        for name in ["grpc_max_event_streams", "grpc_event_stream_max_age_s"]:
            if getattr(self, name) <= 0:
                raise SettingsError(f"{_var(name)} must be positive, got {getattr(self, name)}")
        if self.keep_last_checkpoints < 1 or self.keep_every_checkpoint < 0:
            raise SettingsError(
                "HEXZ_KEEP_LAST_CHECKPOINTS must be >= 1 and HEXZ_KEEP_EVERY_CHECKPOINT >= 0, "
                f"got {self.keep_last_checkpoints} and {self.keep_every_checkpoint}"
            )
        if self.keep_examples is not None and self.keep_examples < 1:
            raise SettingsError(f"HEXZ_KEEP_EXAMPLES must be positive, got {self.keep_examples}")

    def public_dict(self) -> dict[str, Any]:
        """Every setting as a JSON value, secrets masked (what may be written or shown)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Path):
                v = str(v)
            if f.name in SECRET_SETTINGS and v:
                v = MASK
            if f.name == "redis_url" and v:
                v = masked_url(v)
            out[f.name] = v
        return out

    def arena_baseline_labels(self) -> list[str]:
        """The players named by arena_baselines, as labelled in stored games."""
        labels = []
        names = self.arena_baselines.split(",") if self.arena_baselines.strip() else []
        for name in names:
            try:
                spec = parse_baseline(name)
            except ValueError as e:
                raise SettingsError(f"HEXZ_ARENA_BASELINES: {e}") from None
            if spec is None:
                raise SettingsError(
                    f"HEXZ_ARENA_BASELINES: {name.strip()!r} is not mcts[:N], uct:N, uct@MS "
                    "or random"
                )
            labels.append(spec.label)
        return list(dict.fromkeys(labels))

    def _validate_slices(self) -> None:
        """Refuses self-play slices that cannot work: a budget the time limit would cut
        off, or one shorter than a single batch of games_in_flight evaluations at a
        pessimistic CPU speed (a slice always plays at least one batch)."""
        if self.selfplay_slice_s + SLICE_OVERRUN_S > SOFT_LIMIT_FRACTION * self.task_time_limit_s:
            raise SettingsError(
                f"HEXZ_SELFPLAY_SLICE_S ({self.selfplay_slice_s:g}) plus {SLICE_OVERRUN_S} s "
                "for its last batch must stay below the soft time limit, 90 % of "
                f"HEXZ_TASK_TIME_LIMIT_S ({self.task_time_limit_s:g})"
            )
        batch_s = self.games_in_flight * self.evaluation_macs() / SLOW_CPU_MACS_PER_S
        if batch_s > self.selfplay_slice_s:
            raise SettingsError(
                f"HEXZ_SELFPLAY_SLICE_S ({self.selfplay_slice_s:g}) is shorter than one batch "
                f"of HEXZ_GAMES_IN_FLIGHT ({self.games_in_flight}) evaluations of a "
                f"{self.model_blocks}x{self.model_filters} network may take on a slow CPU "
                f"(~{batch_s:.0f} s): raise the budget or lower the games in flight"
            )

    def evaluation_macs(self) -> int:
        """Multiply-accumulates of one network evaluation: the 3x3 convolutions of the
        torso over the 110 cells (the heads add under 1 %)."""
        per_block = 1 if self.model_type == "conv2d" else 2  # a residual block has two
        convs = per_block * (self.model_blocks - 1)
        first = 9 * 11 * self.model_filters
        return 110 * (first + convs * 9 * self.model_filters**2)

    def to_json(self) -> str:
        """The whole configuration, secrets masked, for writing next to a checkpoint."""
        return json.dumps(self.public_dict(), indent=2, sort_keys=True)


def valid_model_name(name: str) -> bool:
    return len(name) <= MODEL_NAME_MAX_LEN and _MODEL_NAME_RE.fullmatch(name) is not None


def masked_url(url: str) -> str:
    """The URL with any password replaced by ***, for logs, status pages and files."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))


def parse_lr_schedule(text: str) -> list[tuple[int, float]]:
    """Parses "step:lr,step:lr" into a sorted list; raises SettingsError if malformed."""
    if not text.strip():
        return []
    schedule = []
    for part in text.split(","):
        try:
            step, lr = part.split(":")
            schedule.append((int(step), float(lr)))
        except ValueError:
            raise SettingsError(
                f"HEXZ_LR_SCHEDULE must look like '0:0.2,1000:0.02', got {text!r}"
            ) from None
    schedule.sort()
    if schedule[0][0] != 0 or any(lr <= 0 for _, lr in schedule):
        raise SettingsError(f"HEXZ_LR_SCHEDULE must start at step 0 with positive rates: {text!r}")
    return schedule


def _var(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _parse(var: str, raw: str, typ: Any) -> Any:
    text = raw.strip()
    args = get_args(typ)
    if type(None) in args:  # Optional: empty means None
        if text == "" or text.lower() == "none":
            return None
        typ = next(a for a in args if a is not type(None))
        args = get_args(typ)
    try:
        if typ is bool:
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError("expected one of 1/0, true/false, yes/no, on/off")
        if typ is int:
            return int(text.replace("_", ""))
        if typ is float:
            return float(text)
        if typ is Path:
            return Path(text).expanduser()
        if args and all(isinstance(a, str) for a in args):  # Literal
            if text not in args:
                raise ValueError(f"expected one of {', '.join(args)}")
            return text
        return text
    except ValueError as e:
        raise SettingsError(f"{var}={raw!r} is invalid: {e}") from None
