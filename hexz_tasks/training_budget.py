"""Will the next training run finish within its time limit?

A run's time grows with its window: window mode trains ``num_epochs`` passes over up to
``training_examples_window_size`` examples, so on a CPU (~150 samples/s for 5x128 on 2
cores) the runs get longer as examples arrive until the window is full, and past
HEXZ_TRAINING_TIME_LIMIT_S Celery would kill every one of them: nothing would train any
more, silently. So before it trains, the training tick estimates the run (:func:`check`):
the samples it will train on (window x epochs, or the replay step's batches) divided by
the samples per second of the newest run on the same device, plus that run's load time.
A run that hit the time limit (:func:`record_timeout`) rules out runs at least as big
under the same limit, and bounds the speed, until a later run succeeds. Against the soft
time limit:

- at least the soft limit: the tick refuses to train (a run that would be killed only
  wastes the trainer; self-play pauses once the store is full), naming the settings
  that would fix it;
- at least ``WARN_FRACTION`` of it: the tick trains and warns;
- no earlier run on this device: unknown, it trains.

The newest estimate is kept in Keys.training_budget for `hexz status` and the status
page; a refusal or warning is logged when it first appears and every ``RELOG_S`` after.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import redis

from hexz_tasks.keys import Keys
from hexz_tasks.settings import SOFT_LIMIT_FRACTION, Settings

log = logging.getLogger(__name__)

# From this share of the soft limit on, an estimate is a warning (the run still trains).
WARN_FRACTION = 0.5
# An unchanged refusal or warning is logged again after this long.
RELOG_S = 600.0

OK, WARNING, REFUSED, UNKNOWN, TIMED_OUT = "ok", "warning", "refused", "unknown", "timed out"


@dataclass(frozen=True)
class Budget:
    """One estimate: `level` is OK, WARNING, REFUSED or UNKNOWN (TIMED_OUT: a run was
    killed by the limit, recorded by :func:`record_timeout`)."""

    level: str
    samples: int  # samples the run trains on (examples x passes)
    limit_s: float  # the soft time limit
    estimate_s: float | None
    samples_per_s: float | None
    message: str


def samples_per_run(settings: Settings, examples: int) -> int:
    """Samples the next run trains on when the trainer holds `examples` examples."""
    if settings.training_mode == "replay":
        return max(1, settings.replay_buffer_size // settings.batch_size) * settings.batch_size
    return settings.num_epochs * min(examples, settings.training_examples_window_size)


def estimate(
    settings: Settings, examples: int, last_run: dict[str, Any] | None, timeout: dict | None
) -> Budget:
    """The budget of the next run from the newest finished run and the newest timeout."""
    samples = samples_per_run(settings, examples)
    limit = SOFT_LIMIT_FRACTION * settings.training_time_limit_s
    fix = (
        "raise HEXZ_TRAINING_TIME_LIMIT_S (and HEXZ_VISIBILITY_TIMEOUT_S above it), lower "
        "HEXZ_TRAINING_EXAMPLES_WINDOW_SIZE or HEXZ_NUM_EPOCHS, or train on a GPU (HEXZ_DEVICE)"
    )
    speeds, load_s = [], 0.0
    if last_run is not None and last_run.get("device") == settings.device:
        speeds.append(float(last_run["samples_per_s"]))
        load_s = float(last_run.get("load_s", 0.0))
    if (
        timeout is not None
        and timeout["device"] == settings.device
        and (last_run is None or timeout["time"] > last_run.get("finished", 0))
    ):
        if samples >= timeout["samples"] and limit <= timeout["limit_s"]:
            return Budget(
                REFUSED, samples, limit, None, None,
                f"not training: a training of {timeout['samples']:,} samples hit its soft "
                f"time limit of {_duration(timeout['limit_s'])} on {settings.device}, and the "
                f"next one has {samples:,}; {fix}",
            )  # fmt: skip
        speeds.append(timeout["samples"] / timeout["seconds"])  # it was at most this fast
    if not speeds or min(speeds) <= 0:
        return Budget(
            UNKNOWN, samples, limit, None, None,
            f"no finished training on {settings.device} to estimate the next one from",
        )  # fmt: skip
    speed = min(speeds)
    seconds = samples / speed + load_s
    what = (
        f"the next training ({samples:,} samples at {speed:,.0f} samples/s) takes about "
        f"{_duration(seconds)} of the {_duration(limit)} its soft time limit allows "
        f"(HEXZ_TRAINING_TIME_LIMIT_S={settings.training_time_limit_s:g})"
    )
    if seconds >= limit:
        level, message = REFUSED, f"not training: {what}; {fix}"
    elif seconds >= WARN_FRACTION * limit:
        level, message = WARNING, f"{what}; once the window grows it may not fit: {fix}"
    else:
        level, message = OK, what
    return Budget(level, samples, limit, round(seconds, 1), round(speed, 1), message)


def check(settings: Settings, r: redis.Redis, keys: Keys, examples: int) -> Budget:
    """Estimates the next run (:func:`estimate`), keeps it in Keys.training_budget and logs
    a refusal or warning (see the module docstring)."""
    last = r.lindex(keys.training_runs, -1)
    timeout = r.get(keys.training_timeout)
    budget = estimate(
        settings,
        examples,
        json.loads(last) if last else None,
        json.loads(timeout) if timeout else None,
    )
    _keep(r, keys, budget)
    return budget


def record_timeout(
    settings: Settings, r: redis.Redis, keys: Keys, samples: int, seconds: float, checkpoint: int
) -> None:
    """A run of `samples` samples from `checkpoint` hit its soft time limit after `seconds`:
    later estimates on this device go by that speed until a run succeeds again."""
    limit = SOFT_LIMIT_FRACTION * settings.training_time_limit_s
    timeout = {
        "samples": samples,
        "seconds": seconds,
        "limit_s": limit,
        "device": settings.device,
        "checkpoint": checkpoint,
        "time": time.time(),
    }
    r.set(keys.training_timeout, json.dumps(timeout))
    message = (
        f"the training from checkpoint {checkpoint} ({samples:,} samples) hit its soft time "
        f"limit after {_duration(seconds)} and was discarded "
        f"(HEXZ_TRAINING_TIME_LIMIT_S={settings.training_time_limit_s:g})"
    )
    _keep(r, keys, Budget(TIMED_OUT, samples, limit, None, None, message))


def _keep(r: redis.Redis, keys: Keys, budget: Budget) -> None:
    """Stores the budget; logs it if it is not OK and new, or its last log is old."""
    now = time.time()
    previous = r.get(keys.training_budget)
    prev = json.loads(previous) if previous else {}
    logged = prev.get("logged", 0.0)
    if budget.level in (WARNING, REFUSED, TIMED_OUT) and (
        prev.get("level") != budget.level or now - logged >= RELOG_S
    ):
        (log.warning if budget.level == WARNING else log.error)("training: %s", budget.message)
        logged = now
    r.set(keys.training_budget, json.dumps({**asdict(budget), "time": now, "logged": logged}))


def stored_budget(r: redis.Redis, keys: Keys) -> dict[str, Any] | None:
    """The newest budget as stored (None before the first training decision)."""
    raw = r.get(keys.training_budget)
    return json.loads(raw) if raw else None


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
