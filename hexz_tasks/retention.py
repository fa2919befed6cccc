"""Disk retention: what the trainer's disk keeps, applied after each training and by `hexz gc`.

Without it the disk grows without bound (example chunks ~121 B/example, archives ~570
B/example, ~11 MB per 5x128 checkpoint). The policy (settings ``HEXZ_RETENTION``,
``HEXZ_KEEP_LAST_CHECKPOINTS``, ``HEXZ_KEEP_EVERY_CHECKPOINT``, ``HEXZ_KEEP_EXAMPLES``):

- checkpoints, each with its archives (``<checkpoint>/examples/*.gz``): the newest
  ``keep_last_checkpoints``, every ``keep_every_checkpoint``-th, and always those in use:
  checkpoint 0 (the evaluation's anchor), the newest on disk (training continues from
  it), the published one and the promoted one (what self-play loads), the newest that has
  played an evaluation match and both sides of every match being played now;
- archives of examples whose checkpoint is gone (``examples-other/<name>-<N>``): by the
  same rule on N;
- example chunks: the newest ones holding at least ``keep_examples`` examples (default:
  the larger of the training window and the replay buffer), never one not yet archived.

A checkpoint directory is first renamed to a temporary name (``.tmp-<N>-<pid>-gc``,
which no listing shows and a later save removes if this process died), then deleted, so
readers see it complete or not at all.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from hexz_tasks.dataset import Dataset
from hexz_tasks.keys import Keys
from hexz_tasks.repository import ModelRepository
from hexz_tasks.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Collected:
    """What one run deleted."""

    checkpoints: list[int] = field(default_factory=list)
    other_archives: list[str] = field(default_factory=list)
    chunks: int = 0
    examples: int = 0
    bytes: int = 0


def keep_examples(settings: Settings) -> int:
    """Examples the trainer's chunks keep (enough for either training mode's window)."""
    if settings.keep_examples is not None:
        return settings.keep_examples
    return max(settings.training_examples_window_size, settings.replay_buffer_size)


def checkpoints_in_use(
    settings: Settings, r: redis.Redis, keys: Keys, on_disk: list[int]
) -> set[int]:
    """Checkpoints self-play, the promotion gate, the evaluation or the trainer use now."""
    from hexz_tasks.evaluation import played_checkpoints
    from hexz_tasks.model_source import fetch_latest, promoted_checkpoint

    used = {0}
    if on_disk:
        used.add(on_disk[-1])
    latest = fetch_latest(r, keys)
    if latest is not None and latest[0] == settings.model_name:
        used.add(latest[1])
    promoted = promoted_checkpoint(settings, r, keys)
    if promoted is not None:
        used.add(promoted)
    played = played_checkpoints(settings, r, keys)
    if played:
        used.add(max(played))
    # Matches being played now: "<prefix>:arena:claim:eval:<name>:<N>:<opponent>@<runs>".
    claim_prefix = keys.arena_claim(f"eval:{settings.model_name}:")
    for key in r.scan_iter(match=claim_prefix + "*", count=1000):
        name = key.decode() if isinstance(key, bytes) else key
        n, _, opponent = name[len(claim_prefix) :].partition(":")
        for part in (n, opponent.partition("@")[0]):
            if part.isdigit():
                used.add(int(part))
    return used


def keeps(settings: Settings, on_disk: list[int], in_use: set[int], n: int) -> bool:
    """Whether the policy keeps checkpoint number `n` (on disk, or only its archives)."""
    newest = on_disk[-settings.keep_last_checkpoints :]
    every = settings.keep_every_checkpoint
    return n in in_use or (bool(newest) and n >= newest[0]) or bool(every and n % every == 0)


def collect_garbage(
    settings: Settings, repo: ModelRepository, dataset: Dataset, r: redis.Redis, keys: Keys
) -> Collected:
    """Applies the retention policy once (see the module docstring)."""
    out = Collected()
    on_disk = repo.checkpoints()
    in_use = checkpoints_in_use(settings, r, keys, on_disk)
    for n in on_disk:
        if not keeps(settings, on_disk, in_use, n):
            out.bytes += _remove_dir(repo.checkpoint_dir(n), repo.checkpoints_dir / f".tmp-{n}")
            out.checkpoints.append(n)
    other = repo.model_dir / "examples-other"
    for d in sorted(other.iterdir()) if other.is_dir() else []:
        name, _, n = d.name.rpartition("-")
        if name != repo.name or not n.isdigit():
            continue  # another model's examples, or of no checkpoint: not ours to judge
        if not keeps(settings, on_disk, in_use, int(n)):
            out.bytes += _remove_dir(d, other / f".tmp-{d.name}")
            out.other_archives.append(d.name)
    with dataset.lock():
        unarchived = {c.path for c in dataset.unarchived_chunks()}
        held = 0
        for chunk in reversed(dataset.chunks()):
            if held < keep_examples(settings) or chunk.path in unarchived:
                held += chunk.count
                continue
            out.bytes += chunk.path.stat().st_size
            chunk.path.unlink()
            out.chunks += 1
            out.examples += chunk.count
    return out


def collect_garbage_quietly(
    settings: Settings, repo: ModelRepository, dataset: Dataset, r: redis.Redis, keys: Keys
) -> Collected | None:
    """collect_garbage for after a training: logs what it did; a failure is logged, never
    raised (the checkpoint is saved by then)."""
    try:
        done = collect_garbage(settings, repo, dataset, r, keys)
    except (OSError, ValueError, redis.RedisError) as e:
        log.warning("disk retention failed (the next training retries): %s", e)
        return None
    if done.bytes:
        log.info(
            "retention freed %.1f MB: checkpoints %s, %d old archive dirs, %d chunks (%d examples)",
            done.bytes / 1e6,
            done.checkpoints,
            len(done.other_archives),
            done.chunks,
            done.examples,
        )
    return done


def _remove_dir(path: Path, temp_prefix: Path) -> int:
    """Renames `path` away (it disappears at once), deletes it; returns bytes freed."""
    size = tree_bytes(path)
    tmp = temp_prefix.with_name(f"{temp_prefix.name}-{os.getpid()}-gc")
    os.rename(path, tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    return size


def tree_bytes(path: Path) -> int:
    """Bytes of the files under `path` (0 if it does not exist)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except FileNotFoundError:  # deleted meanwhile
                pass
    return total


def disk_usage(settings: Settings) -> dict[str, Any]:
    """Bytes on disk by kind, and the free space of the data directory's file system."""
    repo = ModelRepository(settings.repo_base_dir, settings.model_name)
    cps = repo.checkpoints()
    archives = tree_bytes(repo.model_dir / "examples-other")
    checkpoints = 0
    for n in cps:
        in_checkpoint = tree_bytes(repo.checkpoint_dir(n) / "examples")
        archives += in_checkpoint
        checkpoints += tree_bytes(repo.checkpoint_dir(n)) - in_checkpoint
    where = settings.data_dir if settings.data_dir.exists() else Path(".")
    return {
        "checkpoints": len(cps),
        "checkpoint_bytes": checkpoints,
        "archive_bytes": archives,
        "chunk_bytes": tree_bytes(repo.examples_store_dir),
        "redis_bytes": tree_bytes(settings.data_dir / "redis"),
        "free_bytes": shutil.disk_usage(where).free,
    }


def run_gc(settings: Settings) -> int:
    """`hexz gc`: applies the retention policy now and says what it deleted."""
    from hexz_tasks.redis_server import connect, masked_url, redis_url

    r = connect(settings, retries=0, timeout_s=5.0)
    try:
        r.ping()
    except redis.RedisError as e:
        raise ConnectionError(
            f"cannot reach Redis at {masked_url(redis_url(settings))} ({e}): it says which "
            "checkpoints self-play and the evaluation use, so nothing was deleted"
        ) from None
    repo = ModelRepository(settings.repo_base_dir, settings.model_name)
    done = collect_garbage(
        settings, repo, Dataset(repo.examples_store_dir), r, Keys(settings.key_prefix)
    )
    print(
        f"deleted {len(done.checkpoints)} checkpoint(s) {_span(done.checkpoints)}, "
        f"{len(done.other_archives)} archive dir(s) of gone checkpoints, {done.chunks} example "
        f"chunk(s) ({done.examples} examples); freed {done.bytes / 1e6:.1f} MB"
    )
    return 0


def _span(cps: list[int]) -> str:
    return f"({cps[0]}..{cps[-1]})" if cps else ""
