"""What the example store keeps in Redis per game, and how long a restarted Redis takes to
be usable again (issue 16). Private redis-servers with the project's configuration.

1. Bytes per game: games of the real engine (tests/synthetic.py) stored the way
   self-play stores them (ExampleStore.add_game), Redis' used_memory per game while
   they wait for the trainer; what stays of a drained game is its done marker, measured
   on its own (100,000 of them); then the markers a fleet storing
   --games-per-s (17: the issue's big fleet) keeps with their lifetime before this
   change (a week) and now (HEXZ_DONE_MARKER_TTL_S).
2. Restart: a Redis holding those markers (for each lifetime) and a full store
   (HEXZ_MAX_PENDING_EXAMPLES examples waiting: the trainer is away) is SIGKILLed and
   started again from its AOF: seconds until it answers (AOF loaded), then until the
   trainer's rebase (hexz_tasks.training_tick.rebase_store's Redis part) is done and a
   producer's add succeeded. The same for a Redis that comes back empty. In the
   pipeline, producers also wait for the trainer's next tick after a restart (at most
   HEXZ_TRAINING_CHECK_INTERVAL_S), which this does not include.

--quick: 1/100 of the markers and 1/20 of the pending examples (the times grow about
linearly with both), the week's markers not restarted; under a minute. Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.private_redis import RedisProcess
from hexz_tasks import codec
from hexz_tasks.keys import Keys
from hexz_tasks.settings import Settings
from hexz_tasks.store import ExampleStore
from tests.synthetic import game_columns

KEYS = Keys("hexz")
WEEK_S = 7 * 24 * 3600  # the markers' lifetime before this change


def used(r: redis.Redis) -> int:
    return int(r.info("memory")["used_memory"])


def bytes_per_game(tmp: Path, n_games: int, n_markers: int) -> dict[str, float]:
    """Redis memory per game while it waits for the trainer (the real add path), and per
    done marker, which is all that stays of a drained game (`n_markers` of them written
    as the store's script writes them, so that buffers do not blur the figure)."""
    server = RedisProcess(tmp / "bytes")
    server.start()
    try:
        r = redis.Redis(port=server.port)
        store = ExampleStore(r, KEYS, settle_ms=0)
        store.rebase(None, 0)
        games = game_columns(50, seed=1, runs=16, max_moves=200)
        process = secrets.token_hex(8)
        base = used(r)
        examples = 0
        for i in range(n_games):
            examples += store.add_game(f"{process}:{i}", games[i % len(games)])
        waiting = (used(r) - base) / n_games
        r.flushall()  # a private server
        base = used(r)
        fill(r, n_markers, int(Settings().done_marker_ttl_s), 0)
        return {
            "games": n_games,
            "examples_per_game": round(examples / n_games, 1),
            "bytes_per_game_waiting": round(waiting, 1),
            "bytes_per_marker": round((used(r) - base) / n_markers, 1),
            "marker_memory_usage": r.memory_usage(r.randomkey()) or 0,
        }
    finally:
        server.stop()


def fill(r: redis.Redis, markers: int, ttl_s: int, pending: int) -> None:
    """`markers` done markers of drained games and `pending` examples waiting."""
    p = r.pipeline(transaction=False)
    process = secrets.token_hex(8)
    for i in range(markers):
        if i % 1000 == 0:
            process = secrets.token_hex(8)  # a new self-play process every 1000 games
        p.set(KEYS.game_done(f"game:{process}:{i}"), "1", ex=ttl_s)
        if i % 10_000 == 9_999:
            p.execute()
    p.execute()
    store = ExampleStore(r, KEYS, max_pending=pending + 10_000)
    game = game_columns(1, seed=2, runs=16, max_moves=200)[0]
    n, blob = codec.num_rows(game), codec.to_blob(game)
    added = 0
    while added < pending:
        added += store.add_encoded(f"game:pending:{added}", n, blob, "games")


def restart(tmp: Path, name: str, markers: int, ttl_s: int, pending: int, empty: bool) -> dict:
    """Fills a Redis, SIGKILLs it, starts it again (from its AOF, or empty); times it."""
    server = RedisProcess(tmp / name)
    server.start()
    try:
        r = redis.Redis(port=server.port)
        ExampleStore(r, KEYS).rebase(None, 0)
        fill(r, markers, ttl_s, pending)
        watermark = r.xinfo_stream(KEYS.examples_stream)["last-generated-id"].decode()
        time.sleep(1.5)  # appendfsync everysec
        aof_mb = sum(f.stat().st_size for f in server.data_dir.rglob("*") if f.is_file()) / 1e6
        server.kill()
        if empty:
            shutil.rmtree(server.data_dir)
        started = time.monotonic()
        answered_s = server.start()
        r = redis.Redis(port=server.port)
        ExampleStore(r, KEYS).rebase(watermark, 0)
        producer = ExampleStore(r, KEYS, max_pending=pending + 10_000, wait_for_trainer=True)
        producer.add_game("after-restart:0", game_columns(1, seed=3, runs=8)[0])
        usable_s = time.monotonic() - started
        return {"answers_s": round(answered_s, 2), "usable_s": round(usable_s, 2),
                "aof_mb": round(aof_mb, 1), "keys": r.dbsize()}  # fmt: skip
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--games-per-s", type=float, default=17.0)
    args = parser.parse_args(argv)
    defaults = Settings()
    scale_markers, scale_pending = (100, 20) if args.quick else (1, 1)
    ttl_after = int(defaults.done_marker_ttl_s)
    pending = defaults.max_pending_examples // scale_pending
    out: dict[str, Any] = {"quick": args.quick, "games_per_s": args.games_per_s}
    with tempfile.TemporaryDirectory(prefix="hexz-redis-state-") as d:
        tmp = Path(d)
        per_game = bytes_per_game(tmp, 500 if args.quick else 5000, 100_000)
        out.update(per_game)
        marker = per_game["bytes_per_marker"]
        for label, ttl in (("before", WEEK_S), ("after", ttl_after)):
            n = int(args.games_per_s * ttl)
            out[f"markers_{label}"] = n
            out[f"marker_mb_{label}"] = round(n * marker / 1e6, 1)
            out[f"ttl_s_{label}"] = ttl
        out["pending_examples"] = pending
        runs = [("after", ttl_after, False), ("empty", ttl_after, True)]
        if not args.quick:
            runs.insert(0, ("before", WEEK_S, False))
        for label, ttl, empty in runs:
            n = int(args.games_per_s * ttl) // scale_markers
            print(f"restart {label}: {n} markers, {pending} examples waiting ...", flush=True)
            result = restart(tmp, label, n, ttl, pending, empty)
            print(f"  {result}", flush=True)
            out.update({f"restart_{label}_{k}": v for k, v in result.items()})
    print(
        f"per game: {out['bytes_per_game_waiting']:.0f} bytes while it waits for the trainer, "
        f"{out['bytes_per_marker']:.0f} after the drain (its done marker); at "
        f"{args.games_per_s:g} games/s the markers take {out['marker_mb_before']:.0f} MB with "
        f"a week's lifetime, {out['marker_mb_after']:.1f} MB with {ttl_after} s"
    )
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
