"""The data behind the status page and /status.json: one plain dict of JSON values."""

from __future__ import annotations

import itertools
import json
import logging
import time
from datetime import datetime
from typing import Any

import numpy as np
import redis

from hexz_tasks import hexz_pb2
from hexz_tasks.server.player import Unavailable
from hexz_tasks.server.state import ServerState
from hexz_tasks.tensorboard_events import tensorboard_command
from hexz_tasks.training_budget import stored_budget

log = logging.getLogger(__name__)

MAX_RUNS = 500
MAX_CHECKPOINTS = 200


def settings_dict(state: ServerState) -> dict[str, Any]:
    """All settings as JSON values, secrets masked."""
    return state.settings.public_dict()


def training_runs(state: ServerState) -> list[dict[str, Any]]:
    """The newest MAX_RUNS entries of Keys.training_runs, as stored."""
    runs = []
    for raw in state.redis.lrange(state.keys.training_runs, -MAX_RUNS, -1):
        try:
            run = json.loads(raw)
        except ValueError:
            continue
        if isinstance(run, dict):
            runs.append(run)
    return runs


def run_summary(run: dict[str, Any]) -> dict[str, Any]:
    """The fields the page shows, from a training run's record (Keys.training_runs):
    final-epoch losses, when it finished (unix time), how long it took."""
    last = run.get("losses")[-1] if isinstance(run.get("losses"), list) and run["losses"] else {}
    finished = run.get("finished")
    if not isinstance(finished, int | float) and isinstance(run.get("end"), str):
        try:
            finished = datetime.fromisoformat(run["end"]).timestamp()
        except ValueError:
            finished = None
    seconds = run.get("seconds", run.get("duration_s"))

    def num(v: Any) -> float | None:
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None

    return {
        "checkpoint": run.get("checkpoint"),
        "finished": num(finished),
        "seconds": num(seconds),
        "loss": num(last.get("loss", run.get("loss"))) if isinstance(last, dict) else None,
        "policy_loss": num(last.get("policy")) if isinstance(last, dict) else None,
        "value_loss": num(last.get("value")) if isinstance(last, dict) else None,
        "examples_total": num(run.get("examples_total")),
        "examples_window": num(run.get("examples_window")),
        "samples_per_s": num(run.get("samples_per_s")),
        "host": run.get("host", ""),
    }


def checkpoints(state: ServerState) -> list[dict[str, Any]]:
    """Checkpoints on disk (newest MAX_CHECKPOINTS) with their stats.json."""
    out = []
    for n in state.repo.checkpoints()[-MAX_CHECKPOINTS:]:
        d = state.repo.checkpoint_dir(n)
        try:
            stats = state.repo.load_stats(n)
            created = (d / "model.pt").stat().st_mtime
        except (OSError, ValueError):
            stats, created = {}, None
        out.append({"checkpoint": n, "created": created, "stats": stats})
    return out


def examples(state: ServerState, now: float) -> dict[str, Any]:
    """Counters of the store and rates from the per-minute counters of the self-play tasks:
    ``examples_per_minute`` is [unix time the minute starts, examples] of the last hour."""
    out: dict[str, Any] = dict(state.store.counters())
    per_minute: dict[int, int] = {}
    for k, v in state.redis.hgetall(state.keys.rates).items():
        minute, _, what = k.decode().partition(":")
        if what == "examples" and minute.isdigit():
            per_minute[int(minute)] = int(v)
    this_minute = int(now // 60)
    out["examples_last_hour"] = sum(v for m, v in per_minute.items() if this_minute - m < 60)
    out["examples_per_minute"] = [
        [m * 60, per_minute.get(m, 0)] for m in range(this_minute - 59, this_minute + 1)
    ]
    return out


def examples_per_hour(runs: list[dict[str, Any]]) -> list[list[float]]:
    """[unix time a run finished, examples per hour since the run before] between
    consecutive training runs, from the example total each run was trained at
    (`run_summary` of each run)."""
    points = sorted(
        (r["finished"], r["examples_total"])
        for r in runs
        if r["finished"] is not None and r["examples_total"] is not None
    )
    out = []
    for (t0, n0), (t1, n1) in itertools.pairwise(points):
        if t1 > t0 and n1 >= n0:
            out.append([round(t1, 1), round((n1 - n0) / (t1 - t0) * 3600, 1)])
    return out


def pipeline(state: ServerState) -> dict[str, Any]:
    """Queue depths and live workers (hexz_tasks.status, without the slow worker ping)."""
    from hexz_tasks.status import gather_status

    try:
        out = gather_status(state.settings, state.redis, inspect_timeout=0)
    except Exception as e:
        log.warning("pipeline status failed: %s", e)
        return {"error": str(e), "queues": {}, "workers": {}}
    out.setdefault("queues", {})
    out.setdefault("workers", {})
    return out


def ratings(state: ServerState) -> list[dict[str, Any]] | None:
    """The checkpoints' ratings, [{"checkpoint": N, "rating": R, ...}], or None while
    there are none (hexz_tasks.ratings)."""
    from hexz_tasks.ratings import status_ratings

    try:
        return status_ratings(state.settings, state.redis, state.keys)
    except Exception as e:
        log.warning("ratings failed: %s", e)
        return None


def baselines(state: ServerState) -> list[dict[str, Any]]:
    """Ratings of the players that are not checkpoints (pure MCTS, ...), on the same scale."""
    from hexz_tasks.ratings import baselines as fit_baselines

    try:
        rated = fit_baselines(state.settings, state.redis, state.keys)
    except Exception as e:
        log.warning("baseline ratings failed: %s", e)
        return []
    return [
        {"player": b.player, "elo": round(b.elo, 1), "low": round(b.low, 1),
         "high": round(b.high, 1), "games": b.games}
        for b in rated
    ]  # fmt: skip


def overview(state: ServerState) -> dict[str, Any]:
    now = time.time()
    runs = training_runs(state)
    summaries = [run_summary(r) for r in runs]
    active = state.redis.get(state.keys.training_active)
    try:
        latest = state.latest_model_key()
        latest_model = {"name": latest.name, "checkpoint": latest.checkpoint}
    except Unavailable:
        latest_model = None
    return {
        "time": now,
        "server": {
            "started": state.started,
            "uptime_s": round(now - state.started, 1),
            "cpu_player_model": state.models.describe(),
            "cpu_player": state.player.stats(),
        },
        "latest_model": latest_model,
        "training_active": json.loads(active) if active else None,
        "training_budget": stored_budget(state.redis, state.keys),
        "examples": examples(state, now),
        "examples_per_hour": examples_per_hour(summaries),
        "training_runs": summaries,
        "checkpoints": checkpoints(state),
        "pipeline": pipeline(state),
        "ratings": ratings(state),
        "baselines": baselines(state),
        "tensorboard": tensorboard_command(state.settings),
        "settings": settings_dict(state),
    }


def latest_examples(state: ServerState, n: int) -> list[hexz_pb2.TrainingExample]:
    """The newest `n` examples: from the Redis stream, else the trainer's dataset on disk."""
    from hexz_tasks import codec
    from hexz_tasks.examples import from_columns

    found: list[hexz_pb2.TrainingExample] = []
    for _, fields in state.redis.xrevrange(state.keys.examples_stream, count=n):
        try:
            exs = from_columns(codec.from_blob(fields[b"d"]))
        except (KeyError, ValueError) as e:
            log.warning("skipping an undecodable stream entry: %s", e)
            continue
        found = exs + found
        if len(found) >= n:
            return found[-n:]
    return (_from_dataset(state, n - len(found)) + found)[-n:]


def _from_dataset(state: ServerState, n: int) -> list[hexz_pb2.TrainingExample]:
    if n <= 0 or not state.repo.examples_store_dir.is_dir():
        return []
    from hexz_tasks import codec
    from hexz_tasks.dataset import Dataset
    from hexz_tasks.examples import from_columns

    try:
        ds = Dataset(state.repo.examples_store_dir)
        chunks = ds.chunks()
        if not chunks:
            return []
        cols = ds.read_chunk(chunks[-1])
        rows = np.arange(max(0, codec.num_rows(cols) - n), codec.num_rows(cols))
        return from_columns(codec.take_rows(cols, rows))
    except (OSError, ValueError) as e:
        log.warning("cannot read the trainer's dataset: %s", e)
        return []


def redis_ok(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
