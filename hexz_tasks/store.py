"""The shared example store in Redis: an append-only stream of compact example batches.

Producers call :meth:`ExampleStore.add_game` (self-play: a game's columns as the engine
made them, hexz_tasks.codec) or :meth:`ExampleStore.add_examples` (the edge: the gRPC
server and `hexz import`, protobuf TrainingExamples); each call is one Lua script that,
atomically, checks the done marker (so a redelivered task adds its game once), checks
the bound on examples not yet drained (backpressure), XADDs one stream entry (a
:func:`codec.to_blob`, which names its format version) and bumps the durable counters.
An example counts as stored once the script returned, and Redis (AOF) persists it.

The trainer calls :meth:`ExampleStore.drain`, which moves stream entries into its on-disk
dataset (chunk files that record the last stream id they hold), writes the archive files
of the spec and only then trims what is safely on disk.
"""

from __future__ import annotations

import gzip
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import redis

from hexz_tasks import codec, hexz_pb2
from hexz_tasks.examples import from_columns, to_columns
from hexz_tasks.files import atomic_write
from hexz_tasks.keys import Keys

if TYPE_CHECKING:
    from hexz_tasks.dataset import Dataset
    from hexz_tasks.repository import ModelRepository

# Done markers expire after a week: far longer than any task redelivery.
DONE_TTL_S = 7 * 24 * 3600


class StoreFullError(RuntimeError):
    """Too many examples wait in Redis for the trainer to drain them; retry later."""


# KEYS: done marker, stream, counters. ARGV: n, blob, max_pending, ttl_s, id, kind.
_ADD_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local n = tonumber(ARGV[1])
local pending = tonumber(redis.call('HGET', KEYS[3], 'pending') or '0')
if pending > 0 and pending + n > tonumber(ARGV[3]) then return -1 end
redis.call('XADD', KEYS[2], '*', 'n', ARGV[1], 'id', ARGV[5], 'd', ARGV[2])
redis.call('SET', KEYS[1], '1', 'EX', tonumber(ARGV[4]))
redis.call('HINCRBY', KEYS[3], 'examples', n)
redis.call('HINCRBY', KEYS[3], 'pending', n)
redis.call('HINCRBY', KEYS[3], ARGV[6], 1)
return n
"""

# KEYS: stream, counters. ARGV: last drained id, max entries. Deletes up to that many
# entries <= id and fixes `pending`; returns how many entries it deleted.
_TRIM_SCRIPT = """
local entries = redis.call('XRANGE', KEYS[1], '-', ARGV[1], 'COUNT', tonumber(ARGV[2]))
local n = 0
for _, e in ipairs(entries) do
  local f = e[2]
  for i = 1, #f, 2 do
    if f[i] == 'n' then n = n + tonumber(f[i + 1]) end
  end
  redis.call('XDEL', KEYS[1], e[1])
end
if n > 0 then redis.call('HINCRBY', KEYS[2], 'pending', -n) end
return #entries
"""
TRIM_BATCH = 1000  # stream entries per trim script call: keeps each call short


# Default age (ms, Redis' clock) an entry must reach before the drain takes it.
SETTLE_MS = 2000


class ExampleStore:
    """Examples in Redis, shared by all machines; see the module docstring."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        max_pending: int = 1_000_000,
        full_wait_s: float = 30.0,
        settle_ms: int = SETTLE_MS,
    ) -> None:
        """`max_pending`: bound on examples waiting to be drained (about 200 B each in
        Redis); a producer that finds the store full waits up to `full_wait_s` before
        StoreFullError. `settle_ms`: the drain takes only entries at least this old (by
        Redis' clock), so they are in the AOF (fsync every second) before they reach
        disk: after a Redis crash new stream ids never fall below what was drained."""
        self.redis = client
        self.keys = keys
        self.max_pending = max_pending
        self.full_wait_s = full_wait_s
        self.settle_ms = settle_ms
        self._add = client.register_script(_ADD_SCRIPT)
        self._trim = client.register_script(_TRIM_SCRIPT)

    # --- producers ---
    def add_game(self, game_id: str, columns: codec.Columns) -> int:
        """Stores one game's examples (the columns SelfPlay.take_finished hands out);
        returns how many (0 if this game id was stored)."""
        n = codec.num_rows(columns)
        if n == 0:
            return 0
        return self.add_encoded(f"game:{game_id}", n, codec.to_blob(columns), "games")

    def add_examples(self, batch_id: str, examples: Sequence[hexz_pb2.TrainingExample]) -> int:
        """Stores a batch (gRPC request, archive import) after validating it (ValueError
        naming the example); idempotent by batch id."""
        if not examples:
            return 0
        blob = codec.to_blob(to_columns(examples, f"batch {batch_id}"))
        return self.add_encoded(f"batch:{batch_id}", len(examples), blob, "batches")

    def add_encoded(self, done_id: str, n: int, blob: bytes, kind: str = "batches") -> int:
        """Stores a batch of `n` examples already in a blob (:func:`codec.to_blob`) under
        done marker `done_id`; waits while the store is full."""
        deadline = time.monotonic() + self.full_wait_s
        delay = 0.05
        while True:
            added = int(
                self._add(
                    keys=[
                        self.keys.game_done(done_id),
                        self.keys.examples_stream,
                        self.keys.counters,
                    ],
                    args=[n, blob, self.max_pending, DONE_TTL_S, done_id, kind],
                )
            )
            if added >= 0:
                return added
            if time.monotonic() >= deadline:
                raise StoreFullError(
                    f"example store full: more than {self.max_pending} examples wait to be "
                    f"drained by the trainer (is the training worker running?)"
                )
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    # --- counters ---
    def counters(self) -> dict[str, int]:
        """examples, games, batches (ever stored), pending (not yet drained), trained."""
        raw = self.redis.hgetall(self.keys.counters)
        out = {k: 0 for k in ("examples", "games", "batches", "pending", "trained")}
        out.update({k.decode(): int(v) for k, v in raw.items()})
        return out

    def total_examples(self) -> int:
        return int(self.redis.hget(self.keys.counters, "examples") or 0)

    def examples_since_training(self) -> int:
        c = self.counters()
        return max(0, c["examples"] - c["trained"])

    def set_trained(self, total: int) -> None:
        """Records the example total that the newest checkpoint was trained at."""
        self.redis.hset(self.keys.counters, "trained", total)

    # --- the trainer's side ---
    def pending_entries(
        self, after: str | None, count: int = 500, end: str = "+"
    ) -> list[tuple[str, codec.Columns]]:
        """Up to `count` stream entries after id `after` (up to id `end`), decoded (each
        by the format version it names; FormatError for an unknown one)."""
        start = f"({after}" if after else "-"
        out = []
        for eid, fields in self.redis.xrange(self.keys.examples_stream, start, end, count=count):
            out.append((eid.decode(), codec.from_blob(fields[b"d"])))
        return out

    def drain(
        self,
        dataset: Dataset,
        repo: ModelRepository | None = None,
        max_chunk: int = 1 << 16,
    ) -> int:
        """Moves every stream entry into `dataset`, archives it, then trims Redis.

        Crash-safe: a chunk file carries the last stream id it holds, so a drain that
        died after writing a chunk resumes after it (nothing doubled) and entries are
        trimmed only once they are on disk (nothing lost). Returns examples moved.
        """
        end = "+"
        if self.settle_ms > 0:
            sec, usec = self.redis.time()
            end = str(sec * 1000 + usec // 1000 - self.settle_ms)
        with dataset.lock():
            moved = 0
            while True:
                last = dataset.last_stream_id()
                parts: list[codec.Columns] = []
                n = 0
                last_id = last
                while n < max_chunk:
                    entries = self.pending_entries(last_id, end=end)
                    if not entries:
                        break
                    for eid, cols in entries:
                        parts.append(cols)
                        n += codec.num_rows(cols)
                        last_id = eid
                if not parts:
                    break
                dataset.append(codec.concat(parts), last_stream_id=last_id)
                moved += n
            if repo is not None:
                write_pending_archives(dataset, repo)
                dataset.compact(max_chunk)
            last = dataset.last_stream_id()
            if last is not None:
                keys = [self.keys.examples_stream, self.keys.counters]
                while self._trim(keys=keys, args=[last, TRIM_BATCH]) == TRIM_BATCH:
                    pass
            return moved


def write_pending_archives(dataset: Dataset, repo: ModelRepository) -> None:
    """Writes the archive files of every chunk not archived yet (idempotent per chunk)."""
    for chunk in dataset.unarchived_chunks():
        cols = dataset.read_chunk(chunk)
        write_archives(cols, repo, dataset.chunk_timestamp(chunk))
        dataset.mark_archived(chunk)


def write_archives(cols: codec.Columns, repo: ModelRepository, timestamp: str) -> list[Path]:
    """<checkpoint dir>/examples/<timestamp>.gz per checkpoint of the examples' model keys.

    Examples of another model name or of a checkpoint this repository lacks go to
    <model dir>/examples-other/<name>-<checkpoint>/.
    """
    names = codec.names_of(cols)
    has_key = (cols["has"] & codec.HAS_MODEL_KEY) != 0
    groups: dict[Path, list[int]] = defaultdict(list)
    for i in range(codec.num_rows(cols)):
        name = names[int(cols["model_name_idx"][i])] if has_key[i] else ""
        ckpt = int(cols["model_ckpt"][i]) if has_key[i] else -1
        d = repo.checkpoint_dir(ckpt) if ckpt >= 0 else None
        if name != repo.name or d is None or not d.is_dir():
            d = repo.model_dir / "examples-other" / f"{name or 'unknown'}-{ckpt}"
        groups[d].append(i)
    written = []
    for d, rows in groups.items():
        sub = codec.take_rows(cols, np.array(rows))
        req = hexz_pb2.AddTrainingExamplesRequest(examples=from_columns(sub))
        written.append(
            atomic_write(
                d / "examples" / f"{timestamp}.gz", gzip.compress(req.SerializeToString(), 1)
            )
        )
    return written
