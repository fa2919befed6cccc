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

A Redis that comes back without its last writes, or empty (:meth:`ExampleStore.rebase`,
called by the trainer on every tick and while it trains): the stream's last id is raised
to the trainer's watermark (the newest stream id on its disk), so a new entry never gets
an id at or below what was drained (the drain would skip it and the trim delete it), and
an example counter that fell below the newest checkpoint's total is re-based on it, so
the training trigger neither goes negative nor stalls. Producers may wait for the AOF
(``WAITAOF``, Redis >= 7.2; see :meth:`ExampleStore.add_encoded`).

Done markers (one key per stored game or batch, ~130 bytes) only have to outlive a
retried write of the same game or request: they expire after ``done_ttl_s``
(HEXZ_DONE_MARKER_TTL_S); archive imports keep theirs for :data:`IMPORT_DONE_TTL_S`.
"""

from __future__ import annotations

import gzip
import logging
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
    from hexz_tasks.settings import Settings

log = logging.getLogger(__name__)

# Default lifetime of a done marker (HEXZ_DONE_MARKER_TTL_S, where the reasons are).
DONE_TTL_S = 3600.0
# `hexz import` of the same file a second time adds nothing within this time (its markers
# are few: one per 1,000 examples).
IMPORT_DONE_TTL_S = 7 * 24 * 3600.0


class StoreFullError(RuntimeError):
    """Too many examples wait in Redis for the trainer to drain them; retry later."""


class StoreNotReadyError(StoreFullError):
    """The example stream does not exist (Redis is new or came back empty) and the trainer
    has not set it up yet; retry later, like a full store."""


# KEYS: done marker, stream, counters. ARGV: n, blob, max_pending, ttl_s, id, kind,
# '1' if the stream must exist. Returns n, 0 (stored before), -1 (full), -2 (no stream).
# An entry's fields: n (examples), id (done id), t (Redis' clock when written, ms), d.
_ADD_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if ARGV[7] == '1' and redis.call('EXISTS', KEYS[2]) == 0 then return -2 end
local n = tonumber(ARGV[1])
local pending = tonumber(redis.call('HGET', KEYS[3], 'pending') or '0')
if pending > 0 and pending + n > tonumber(ARGV[3]) then return -1 end
local now = redis.call('TIME')
local ms = now[1] .. string.format('%03d', math.floor(tonumber(now[2]) / 1000))
redis.call('XADD', KEYS[2], '*', 'n', ARGV[1], 'id', ARGV[5], 't', ms, 'd', ARGV[2])
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

# Lua: whether stream id a comes before stream id b ("ms-seq" strings).
_ID_BEFORE = """
local function id_before(a, b)
  local ams, aseq = string.match(a, '^(%d+)-(%d+)$')
  local bms, bseq = string.match(b, '^(%d+)-(%d+)$')
  ams, aseq, bms, bseq = tonumber(ams), tonumber(aseq), tonumber(bms), tonumber(bseq)
  return ams < bms or (ams == bms and aseq < bseq)
end
"""

# KEYS: stream. ARGV: watermark id. Raises the stream's last id to the watermark;
# returns 1 if it raised it, 2 if it created the (absent) stream with that last id.
_RAISE_ID_SCRIPT = (
    _ID_BEFORE
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('XADD', KEYS[1], 'MAXLEN', '0', ARGV[1], 'n', '0')
  return 2
end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' and id_before(info[i + 1], ARGV[1]) then
    redis.call('XSETID', KEYS[1], ARGV[1])
    return 1
  end
end
return 0
"""
)

# KEYS: counters. ARGV: the example total of the newest checkpoint, the trainer's
# watermark ('' if none). Redis lost writes the trainer had seen if its counter of
# examples ever stored is below that total, or if `drained_upto` (set by each drain
# before its chunk reaches disk) is missing or below the watermark. Then the counter
# becomes that total plus what waits in the stream (everything on the trainer's disk was
# in the newest checkpoint's window), `trained` that total, `drained_upto` the
# watermark. Returns 1 if it re-based.
_REBASE_SCRIPT = (
    _ID_BEFORE
    + """
local trained = tonumber(ARGV[1])
local lost = tonumber(redis.call('HGET', KEYS[1], 'examples') or '0') < trained
if ARGV[2] ~= '' then
  local seen = redis.call('HGET', KEYS[1], 'drained_upto')
  lost = lost or not seen or id_before(seen, ARGV[2])
end
if not lost then return 0 end
local pending = tonumber(redis.call('HGET', KEYS[1], 'pending') or '0')
redis.call('HSET', KEYS[1], 'examples', trained + pending, 'trained', trained)
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'drained_upto', ARGV[2]) end
return 1
"""
)


# Whether this process has logged that its Redis cannot wait for the AOF.
_told_no_waitaof = False

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
        done_ttl_s: float = DONE_TTL_S,
        wait_aof_s: float = 0.0,
        wait_for_trainer: bool = False,
    ) -> None:
        """`max_pending`: bound on examples waiting to be drained (about 200 B each in
        Redis); a producer that finds the store full waits up to `full_wait_s` before
        StoreFullError. `settle_ms`: the drain takes only entries at least this old (by
        Redis' clock), so they are in the AOF (fsync every second) before they reach
        disk. `done_ttl_s`: lifetime of a done marker. `wait_aof_s` > 0: each add waits
        up to that long until Redis has fsynced it to its AOF (WAITAOF).
        `wait_for_trainer`: add only to a stream the trainer has set up (:meth:`rebase`);
        a Redis that came back empty has none until then, so no entry can get a stream id
        below what the trainer drained (waits like a full store, StoreNotReadyError)."""
        self.redis = client
        self.keys = keys
        self.max_pending = max_pending
        self.full_wait_s = full_wait_s
        self.settle_ms = settle_ms
        self.done_ttl_s = done_ttl_s
        self.wait_aof_s = wait_aof_s
        self.wait_for_trainer = wait_for_trainer
        self._can_wait_aof = True
        self._add = client.register_script(_ADD_SCRIPT)
        self._trim = client.register_script(_TRIM_SCRIPT)
        self._raise_id = client.register_script(_RAISE_ID_SCRIPT)
        self._rebase = client.register_script(_REBASE_SCRIPT)

    @classmethod
    def for_producer(
        cls,
        settings: Settings,
        client: redis.Redis,
        keys: Keys,
        *,
        full_wait_s: float,
        wait_for_trainer: bool = True,
    ) -> ExampleStore:
        """A store that adds examples as the settings say (bound, done markers, AOF wait),
        by default only to a stream the trainer has set up."""
        return cls(
            client,
            keys,
            max_pending=settings.max_pending_examples,
            full_wait_s=full_wait_s,
            done_ttl_s=settings.done_marker_ttl_s,
            wait_aof_s=settings.wait_aof_s,
            wait_for_trainer=wait_for_trainer,
        )

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

    def add_encoded(
        self,
        done_id: str,
        n: int,
        blob: bytes,
        kind: str = "batches",
        done_ttl_s: float | None = None,
    ) -> int:
        """Stores a batch of `n` examples already in a blob (:func:`codec.to_blob`) under
        done marker `done_id` (kept `done_ttl_s`, default the store's); waits while the
        store is full.

        With `wait_aof_s`, waits until Redis has written the batch to its AOF and fsynced
        it (WAITAOF, Redis >= 7.2), so an acknowledged game survives a crash of Redis
        right after. An older Redis has no WAITAOF: the add does not wait (logged once),
        and a crash may lose the writes of its last second (appendfsync everysec)."""
        deadline = time.monotonic() + self.full_wait_s
        delay = 0.05
        ttl = self.done_ttl_s if done_ttl_s is None else done_ttl_s
        keys = [self.keys.game_done(done_id), self.keys.examples_stream, self.keys.counters]
        args = [n, blob, self.max_pending, max(1, round(ttl)), done_id, kind]
        args.append("1" if self.wait_for_trainer else "0")
        while True:
            added = self._add_once(keys, args)
            if added >= 0:
                return added
            if time.monotonic() >= deadline and added == -2:
                raise StoreNotReadyError(
                    "the example store is not set up: Redis is new or came back empty, and "
                    "the trainer has not re-established it yet (is the training worker "
                    "running?)"
                )
            if time.monotonic() >= deadline:
                raise StoreFullError(
                    f"example store full: more than {self.max_pending} examples wait to be "
                    f"drained by the trainer (is the training worker running?)"
                )
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _add_once(self, keys: list[str], args: list) -> int:
        global _told_no_waitaof
        if self.wait_aof_s <= 0 or not self._can_wait_aof:
            return int(self._add(keys=keys, args=args))
        # One connection for both: WAITAOF waits for this connection's writes only.
        with self.redis.pipeline(transaction=False) as p:
            self._add(keys=keys, args=args, client=p)
            p.execute_command("WAITAOF", 1, 0, max(1, round(self.wait_aof_s * 1000)))
            added, synced = p.execute(raise_on_error=False)
        if isinstance(added, Exception):
            raise added
        if isinstance(synced, Exception):  # Redis < 7.2, or its AOF is off
            self._can_wait_aof = False
            if not _told_no_waitaof:
                _told_no_waitaof = True
                log.warning(
                    "HEXZ_WAIT_AOF_S is set, but this Redis cannot wait for its AOF (%s): "
                    "WAITAOF needs Redis >= 7.2 with appendonly on; storing without waiting",
                    synced,
                )
        elif int(added) > 0 and int(synced[0]) < 1:
            log.warning("Redis had not fsynced a stored batch after %s s", self.wait_aof_s)
        return int(added)

    # --- after Redis lost writes ---
    def rebase(self, watermark: str | None, trained_total: int) -> dict[str, bool]:
        """Makes the store consistent with the trainer's disk after Redis lost writes.

        `watermark`: the newest stream id in the trainer's dataset (None: it has none);
        the stream is created if missing, its last id raised to the watermark, and
        entries at or below it (already on disk) are trimmed. `trained_total`: the
        example total of the newest checkpoint; if Redis lost writes the trainer had
        seen, the counters are re-based on it (see _REBASE_SCRIPT). Idempotent; returns
        what it changed."""
        stream = self.keys.examples_stream
        outcome = int(self._raise_id(keys=[stream], args=[watermark or "0-1"]))
        if watermark is not None:
            self._trim_upto(watermark)
        rebased = bool(
            self._rebase(keys=[self.keys.counters], args=[trained_total, watermark or ""])
        )
        return {
            "created_stream": outcome == 2,
            "raised_stream_id": outcome > 0 and watermark is not None,
            "rebased_counters": rebased,
        }

    def _trim_upto(self, last: str) -> None:
        """Deletes the stream entries at or below id `last` and fixes `pending`."""
        keys = [self.keys.examples_stream, self.keys.counters]
        while self._trim(keys=keys, args=[last, TRIM_BATCH]) == TRIM_BATCH:
            pass

    # --- counters ---
    def counters(self) -> dict[str, int]:
        """examples, games, batches (ever stored), pending (not yet drained), trained."""
        raw = self.redis.hgetall(self.keys.counters)
        out = {k: 0 for k in ("examples", "games", "batches", "pending", "trained")}
        out.update({k.decode(): int(v) for k, v in raw.items() if k != b"drained_upto"})
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
        self, after: str | None, count: int = 500, written_before_ms: int | None = None
    ) -> list[tuple[str, codec.Columns]]:
        """Up to `count` stream entries after id `after`, decoded (each by the format
        version it names; FormatError for an unknown one). With `written_before_ms`, only
        those Redis wrote before that time by its clock (the entry's `t`, else its id,
        which is a time unless the id was raised after Redis lost writes): up to the
        first later one."""
        start = f"({after}" if after else "-"
        out = []
        for eid, fields in self.redis.xrange(self.keys.examples_stream, start, "+", count=count):
            written = int(fields[b"t"]) if b"t" in fields else int(eid.split(b"-")[0])
            if written_before_ms is not None and written >= written_before_ms:
                break
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
        settled = None
        if self.settle_ms > 0:
            sec, usec = self.redis.time()
            settled = sec * 1000 + usec // 1000 - self.settle_ms
        with dataset.lock():
            moved = 0
            while True:
                last = dataset.last_stream_id()
                parts: list[codec.Columns] = []
                n = 0
                last_id = last
                while n < max_chunk:
                    entries = self.pending_entries(last_id, written_before_ms=settled)
                    if not entries:
                        break
                    for eid, cols in entries:
                        parts.append(cols)
                        n += codec.num_rows(cols)
                        last_id = eid
                if not parts:
                    break
                # In Redis before the chunk is on disk: a Redis that lost writes the
                # trainer had seen is known by a lower value (see rebase).
                self.redis.hset(self.keys.counters, "drained_upto", last_id)
                dataset.append(codec.concat(parts), last_stream_id=last_id)
                moved += n
            if repo is not None:
                write_pending_archives(dataset, repo)
                dataset.compact(max_chunk)
            last = dataset.last_stream_id()
            if last is not None:
                self._trim_upto(last)
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
