"""Where the pipeline stands: :func:`gather_status` (a dict, also for the web status page)
and `hexz status` (:func:`print_status`)."""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from hexz_tasks.keys import Keys
from hexz_tasks.model_source import fetch_latest
from hexz_tasks.queues import EVAL_QUEUE, GPU_QUEUE, SELFPLAY_QUEUE
from hexz_tasks.rates import recent_rates
from hexz_tasks.redis_server import connect, masked_url, redis_url
from hexz_tasks.settings import Settings
from hexz_tasks.training_budget import OK, UNKNOWN, stored_budget
from hexz_tasks.worker_registry import live_progress, live_workers

RATE_MINUTES = 10


def gather_status(
    settings: Settings,
    r: redis.Redis | None = None,
    *,
    inspect_timeout: float = 1.0,
    now: float | None = None,
) -> dict[str, Any]:
    """Everything `hexz status` shows, JSON-serialisable.

    Workers come from the registry live workers keep in Redis; with `inspect_timeout` > 0
    they are also pinged (a broadcast that waits that long). When Redis cannot be reached
    the dict has only "redis" and "error".
    """
    from hexz_tasks.store import ExampleStore

    now = time.time() if now is None else now
    keys = Keys(settings.key_prefix)
    r = r or connect(settings, retries=0, timeout_s=2.0)  # answer now, not after retries
    out: dict[str, Any] = {"redis": masked_url(redis_url(settings)), "time": now}
    try:
        r.ping()
    except redis.RedisError as e:
        out["error"] = f"cannot reach Redis at {out['redis']}: {e}"
        return out

    counters = ExampleStore(r, keys).counters()
    games_rate, examples_rate = recent_rates(r, keys, now, RATE_MINUTES)
    out["examples"] = {
        "total": counters["examples"],
        "pending_in_redis": counters["pending"],
        "since_training": max(0, counters["examples"] - counters["trained"]),
        "per_minute": examples_rate,
    }
    out["games"] = {"total": counters["games"], "per_minute": games_rate}
    out["batches"] = counters["batches"]

    latest = fetch_latest(r, keys)
    out["selfplay"] = selfplay_progress(
        live_progress(r, keys, now), None if latest is None else latest[1]
    )
    out["model"] = {
        "name": settings.model_name,
        "published": None if latest is None else {"name": latest[0], "checkpoint": latest[1]},
        "checkpoints_on_disk": _local_checkpoints(settings),
    }

    active = r.get(keys.training_active)
    runs = r.llen(keys.training_runs)
    last = r.lindex(keys.training_runs, -1)
    out["training"] = {
        "active": json.loads(active) if active else None,
        "runs": runs,
        "last_run": json.loads(last) if last else None,
        "budget": stored_budget(r, keys),
    }

    running = {k.decode(): json.loads(v) for k, v in r.hgetall(keys.selfplay_running).items()}
    out["queues"] = {q: r.llen(keys.queue(q)) for q in (SELFPLAY_QUEUE, GPU_QUEUE, EVAL_QUEUE)}
    out["selfplay_running"] = len(running)

    workers = live_workers(r, keys, now)
    if inspect_timeout > 0:
        pongs = _ping(settings, inspect_timeout)
        for name, entry in workers.items():
            entry["responds"] = name in pongs
        for name in pongs - workers.keys():
            workers[name] = {"responds": True}
    out["workers"] = workers
    return out


def selfplay_progress(processes: dict[str, dict], published: int | None) -> dict[str, Any]:
    """Totals over the live self-play processes' progress entries, and the entries
    themselves with how many checkpoints each plays behind the newest published one."""
    for p in processes.values():
        behind = None
        if published is not None and p.get("checkpoint") is not None:
            behind = published - p["checkpoint"]
        p["checkpoints_behind"] = behind
    occupancies = [p["occupancy"] for p in processes.values() if p.get("occupancy") is not None]
    behind = [p["checkpoints_behind"] for p in processes.values()]
    return {
        "processes": processes,
        "games_in_flight": sum(p["games_in_flight"] for p in processes.values()),
        "moves_per_s": round(sum(p["moves_per_s"] for p in processes.values()), 2),
        "occupancy": round(sum(occupancies) / len(occupancies), 4) if occupancies else None,
        "checkpoints_behind": max((b for b in behind if b is not None), default=None),
        "unstored": sum(p["unstored"] for p in processes.values()),
    }


def _local_checkpoints(settings: Settings) -> list[int] | None:
    """Checkpoint numbers in this machine's model repository (None if it has none)."""
    from hexz_tasks.repository import ModelRepository

    cps = ModelRepository(settings.repo_base_dir, settings.model_name).checkpoints()
    return cps or None


def _ping(settings: Settings, timeout: float) -> set[str]:
    from hexz_tasks.celery import make_app

    app = make_app(settings)
    try:
        replies = app.control.ping(timeout=timeout)
    finally:
        app.close()
    return {name for reply in replies for name in reply}


def print_status(settings: Settings) -> int:
    """`hexz status`."""
    from hexz_tasks.retention import disk_usage

    s = gather_status(settings)
    print(f"Redis:       {s['redis']}")
    d = disk_usage(settings)
    print(
        f"disk:        {_mb(d['checkpoint_bytes'])} in {d['checkpoints']} checkpoint(s), "
        f"{_mb(d['archive_bytes'])} archives, {_mb(d['chunk_bytes'])} example chunks, "
        f"{_mb(d['redis_bytes'])} Redis files; {_mb(d['free_bytes'])} free "
        f"(`hexz gc` applies the retention policy now)"
    )
    if "error" in s:
        print(f"error:       {s['error']}")
        print("             start the pipeline with `hexz run` (or `hexz redis`)")
        return 1
    ex, games, model, training = s["examples"], s["games"], s["model"], s["training"]
    print(
        f"examples:    {ex['total']} stored, {ex['per_minute']:.0f}/min "
        f"(last {RATE_MINUTES} min), {ex['since_training']} since the last training, "
        f"{ex['pending_in_redis']} waiting in Redis"
    )
    print(f"games:       {games['total']} self-play games, {games['per_minute']:.1f}/min")
    published = model["published"]
    print(
        f"model:       {model['name']}, published checkpoint "
        f"{published['checkpoint'] if published else 'none yet'}; on this disk: "
        f"{_span(model['checkpoints_on_disk'])}"
    )
    line = f"training:    {training['runs']} run(s)"
    if training["active"]:
        line += f", training from checkpoint {training['active'].get('checkpoint')} now"
        if training["active"].get("estimate_s") is not None:
            line += f" (estimated {training['active']['estimate_s'] / 60:.0f} min)"
    last = training["last_run"]
    if last:
        line += f"; last made checkpoint {last.get('checkpoint')} in {last.get('seconds', '?')} s"
    print(line)
    budget = training["budget"]
    if budget is not None and budget["level"] != UNKNOWN:
        label = "time limit:" if budget["level"] == OK else "WARNING:   "
        print(f"{label}  {budget['message']}")
    print(
        "queues:      "
        + ", ".join(f"{q} {n} waiting" for q, n in s["queues"].items())
        + f"; {s['selfplay_running']} self-play task(s) running"
    )
    sp = s["selfplay"]
    if not sp["processes"]:
        print("self-play:   no process has reported progress in the last 30 s")
    else:
        occupancy = "?" if sp["occupancy"] is None else f"{sp['occupancy']:.2f}"
        behind = "?" if sp["checkpoints_behind"] is None else sp["checkpoints_behind"]
        print(
            f"self-play:   {len(sp['processes'])} process(es), {sp['games_in_flight']} games in "
            f"flight, {sp['moves_per_s']:.1f} moves/s, batch occupancy {occupancy}, "
            f"up to {behind} checkpoint(s) behind the newest"
            + (f", {sp['unstored']} finished game(s) waiting for room" if sp["unstored"] else "")
        )
    for pid, p in sorted(sp["processes"].items()):
        print(
            f"  process:   {p['host']}:{p['pid']} ({pid}): {p['state']}, checkpoint "
            f"{p['checkpoint']}, {p['moves']} moves, {p['games_finished']} games finished, "
            f"{p['games_stored']} stored"
        )
    if not s["workers"]:
        print("workers:     none (start them with `hexz run` or `honcho start`)")
    for name, w in sorted(s["workers"].items()):
        queues = ",".join(w.get("queues", [])) or "?"
        alive = "" if w.get("responds", True) else " (busy or not answering a ping)"
        print(
            f"worker:      {name}: queues {queues}, {w.get('concurrency', '?')} process(es){alive}"
        )
    return 0


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


def _span(cps: list[int] | None) -> str:
    if not cps:
        return "none"
    return f"{len(cps)} ({cps[0]}..{cps[-1]})"
