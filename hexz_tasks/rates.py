"""Games and examples stored per minute (``Keys.rates``), for `hexz status` and the status page.

Every producer (self-play slices, the gRPC server) records each stored game here; the
self-play feeder prunes minutes older than RATE_WINDOW_MIN once per beat tick.
"""

from __future__ import annotations

import time

import redis

from hexz_tasks.keys import Keys

# Minutes of counters kept.
RATE_WINDOW_MIN = 60


def record_game(r: redis.Redis, keys: Keys, examples: int, now: float | None = None) -> None:
    """Counts one stored game of `examples` examples in the current minute."""
    minute = int((time.time() if now is None else now) // 60)
    with r.pipeline(transaction=False) as p:
        p.hincrby(keys.rates, f"{minute}:games", 1)
        p.hincrby(keys.rates, f"{minute}:examples", examples)
        p.execute()


def prune(r: redis.Redis, keys: Keys, now: float | None = None) -> None:
    """Deletes the counters of minutes older than RATE_WINDOW_MIN."""
    oldest = int((time.time() if now is None else now) // 60) - RATE_WINDOW_MIN
    old = [f for f in r.hkeys(keys.rates) if int(f.split(b":")[0]) < oldest]
    if old:
        r.hdel(keys.rates, *old)


def recent_rates(r: redis.Redis, keys: Keys, now: float, minutes: int) -> tuple[float, float]:
    """Games and examples per minute over the last `minutes` complete minutes."""
    minute = int(now // 60)
    fields = [
        f"{m}:{kind}" for m in range(minute - minutes, minute) for kind in ("games", "examples")
    ]
    values = [int(v or 0) for v in r.hmget(keys.rates, fields)]
    return sum(values[0::2]) / minutes, sum(values[1::2]) / minutes
