"""Automatic evaluation of checkpoints: arena matches, offline metrics, promotion gating.

Each tick (a beat task on the CPU queue, hexz_tasks.arena_tasks.evaluate) does a bounded
amount of work:
1. records the offline metrics of every checkpoint that lacks them (a forward pass over
   the held-out set: well under a second each for small models);
2. plays at most one match: for the newest checkpoint N with an unplayed match, N
   against 0, against each baseline of ``arena_baselines`` (pure MCTS at the same runs
   per move, ``uct:N``, ...), against the newest earlier evaluated checkpoint, and
   (with promotion gating) against the checkpoint self-play uses now
   (:func:`planned_matches`). Matches have
   deterministic ids, so a redelivered tick never plays one twice, and each is claimed
   in Redis while it runs, so two workers never play the same one;
3. after either, rewrites the TensorBoard snapshot (hexz_tasks.tensorboard_events).

Held-out set: positions of pure-MCTS self-play games (``HELDOUT_RUNS`` iterations per
move, a fixed seed): the same on every machine, never trained on. Metrics: policy
cross-entropy against the search's visit distribution, value MSE against the game
result, and the share of decided positions where the value has the result's sign.

Promotion gating (``promotion_min_score``): self-play plays with
``Keys.promoted_model`` (bytes in ``Keys.promoted_model_bytes``), initially checkpoint 0;
a checkpoint replaces it once it scores at least ``promotion_min_score`` against it
(:func:`should_promote`). hexz_tasks.model_source keeps the promoted pointer and decides
what self-play and the CPU player load.
"""

from __future__ import annotations

import io
import json
import logging
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import redis

from hexz_tasks.files import atomic_write
from hexz_tasks.keys import Keys
from hexz_tasks.settings import Settings

log = logging.getLogger(__name__)

HELDOUT_GAMES = 16
HELDOUT_RUNS = 128
HELDOUT_SEED = 20240601
HELDOUT_NAME = f"heldout-mcts{HELDOUT_RUNS}-{HELDOUT_GAMES}g-{HELDOUT_SEED}.npz"
# Offline metrics recorded per tick at most (each is one pass over the held-out set).
METRICS_PER_TICK = 8


# ------------------------------------------------------------------ held-out set


def make_heldout(
    games: int = HELDOUT_GAMES, runs: int = HELDOUT_RUNS, seed: int = HELDOUT_SEED
) -> dict[str, np.ndarray]:
    """Positions of pure-MCTS self-play games: boards, masks, move_probs, results."""
    from hexz_tasks import codec
    from hexz_tasks._search import SelfPlay
    from hexz_tasks.layout import BOARD_SHAPE, MASK_SHAPE, POLICY_SIZE

    # The reference's first-play urgency keeps the set what it always was.
    driver = SelfPlay(games, games, seed, runs_per_move=runs, random_playouts=1, fpu_reference=True)
    boards = np.zeros((driver.capacity, *BOARD_SHAPE), dtype=np.float32)
    masks = np.zeros((driver.capacity, *MASK_SHAPE), dtype=bool)
    parts: dict[int, codec.Columns] = {}
    while True:
        n = driver.prepare(boards, masks)
        for g in driver.take_finished():
            parts[g["index"]] = g["columns"]
        if n == 0:
            break
        # Uniform priors (all zero); the random playout replaces the value.
        driver.feed(np.zeros((n, POLICY_SIZE), np.float32), np.zeros(n, np.float32))
    batch = codec.decode(codec.concat([parts[i] for i in sorted(parts)]))
    return {
        "boards": batch.boards,
        "masks": batch.masks,
        "move_probs": batch.move_probs,
        "results": batch.results,
    }


def heldout_set(settings: Settings) -> dict[str, np.ndarray]:
    """The held-out set, cached in data_dir (written atomically; rebuilt if unreadable)."""
    path = Path(settings.data_dir) / HELDOUT_NAME
    try:
        with np.load(path) as f:
            return {k: f[k] for k in ("boards", "masks", "move_probs", "results")}
    except (OSError, KeyError, ValueError):
        pass
    data = make_heldout()
    buf = io.BytesIO()
    np.savez(buf, **data)
    try:
        atomic_write(path, buf.getvalue())
    except OSError as e:  # read-only data dir: just do without the cache
        log.warning("could not cache the held-out set in %s: %s", path, e)
    return data


def offline_metrics(evaluator: Any, heldout: dict[str, np.ndarray]) -> dict[str, float]:
    """Policy cross-entropy, value MSE and value sign accuracy on the held-out set."""
    priors, values = [], []
    for i in range(0, len(heldout["boards"]), 256):
        p, v = evaluator(heldout["boards"][i : i + 256], heldout["masks"][i : i + 256])
        priors.append(p)
        values.append(v)
    p = np.concatenate(priors).astype(np.float64)
    v = np.concatenate(values).astype(np.float64)
    target = heldout["move_probs"].astype(np.float64)
    result = heldout["results"].astype(np.float64)
    ce = -(target * np.log(np.maximum(p, 1e-12))).sum(axis=1)
    decided = result != 0
    return {
        "policy_ce": float(ce.mean()),
        "value_mse": float(((v - result) ** 2).mean()),
        "value_sign_acc": float((np.sign(v[decided]) == np.sign(result[decided])).mean()),
        "heldout_examples": len(result),
    }


def record_metrics(
    settings: Settings, r: redis.Redis, keys: Keys, checkpoint: int, heldout: dict
) -> dict[str, Any]:
    from hexz_tasks.inference import Evaluator
    from hexz_tasks.model_source import checkpoint_bytes

    evaluator = Evaluator(checkpoint_bytes(settings, checkpoint, r, keys), settings.device)
    metrics = {**offline_metrics(evaluator, heldout), "heldout": HELDOUT_NAME}
    r.hset(keys.checkpoint_metrics, str(checkpoint), json.dumps(metrics))
    return metrics


# ------------------------------------------------------------------ checkpoints


def available_checkpoints(settings: Settings, r: redis.Redis, keys: Keys) -> list[int]:
    """Checkpoints this process can load: the repository's if it is on this machine's
    disk, else those whose bytes are published in Redis."""
    from hexz_tasks.model_source import fetch_latest
    from hexz_tasks.repository import ModelRepository

    local = ModelRepository(settings.repo_base_dir, settings.model_name).checkpoints()
    if local:
        return local
    latest = fetch_latest(r, keys)
    if latest is None or latest[0] != settings.model_name:
        return []
    with r.pipeline(transaction=False) as p:
        for n in range(latest[1] + 1):
            p.exists(keys.model_bytes(settings.model_name, n))
        present = p.execute()
    return [n for n, ok in enumerate(present) if ok]


def match_id(settings: Settings, checkpoint: int, opponent: str) -> str:
    return f"eval:{settings.model_name}:{checkpoint}:{opponent}@{settings.arena_runs_per_move}"


def planned_matches(
    checkpoints: list[int],
    promoted: int | None,
    played: set[int] | None = None,
    baselines: tuple[str, ...] = ("mcts",),
) -> list[tuple[int, str]]:
    """(checkpoint, opponent) of every evaluation match, newest checkpoint first.

    Per checkpoint N: checkpoint 0 first (it ties N to the anchor at once), the
    `baselines` in order, the newest earlier checkpoint that has `played` (N-1 when none
    has; this chains neighbours even when ticks skip checkpoints), and the promoted
    checkpoint. The newest checkpoint that has played comes first: when checkpoints
    arrive faster than ticks, each evaluated one still meets the baselines and its
    predecessor before a newer one starts (else only matches against checkpoint 0 would
    ever be played).
    """
    available = set(checkpoints)
    played = played or set()
    in_progress = max((n for n in played if n in available), default=None)
    order = sorted(checkpoints, key=lambda n: (n != in_progress, -n))
    plan = []
    for n in order:
        if n == 0:
            continue
        previous = max((m for m in played if 0 < m < n), default=n - 1)
        opponents = ["0", *baselines, str(previous)]
        if promoted is not None and promoted < n:
            opponents.append(str(promoted))
        for opp in dict.fromkeys(opponents):
            if opp in baselines or int(opp) in available:
                plan.append((n, opp))
    return plan


def played_checkpoints(settings: Settings, r: redis.Redis, keys: Keys) -> set[int]:
    """Checkpoints of this model that appear in a finished automatic evaluation match."""
    prefix = f"eval:{settings.model_name}:"
    out = set()
    for k in r.hkeys(keys.arena_matches):
        mid = k.decode() if isinstance(k, bytes) else k
        if mid.startswith(prefix):
            out.add(int(mid[len(prefix) :].split(":")[0]))
    return out


# ------------------------------------------------------------------ promotion


def should_promote(score: float, settings: Settings) -> bool:
    """The gating decision: a challenger replaces self-play's model when its match score
    against it reaches promotion_min_score (gating off: always)."""
    return settings.promotion_min_score is None or score >= settings.promotion_min_score


# ------------------------------------------------------------------ the tick


def run_evaluation_tick(settings: Settings, r: redis.Redis, keys: Keys) -> dict[str, Any]:
    """One bounded step of the automatic evaluation (see the module docstring)."""
    from hexz_tasks.arena import run_match
    from hexz_tasks.model_source import promote, promoted_checkpoint

    checkpoints = available_checkpoints(settings, r, keys)
    out: dict[str, Any] = {"metrics": [], "match": None}
    if not checkpoints:
        return out
    have = {int(k) for k in r.hkeys(keys.checkpoint_metrics)}
    missing = [n for n in reversed(checkpoints) if n not in have][:METRICS_PER_TICK]
    if missing:
        heldout = heldout_set(settings)
        for n in missing:
            record_metrics(settings, r, keys, n, heldout)
            out["metrics"].append(n)
    gating = settings.promotion_min_score is not None
    promoted = promoted_checkpoint(settings, r, keys) if gating else None
    if gating and promoted is None and 0 in checkpoints:
        promote(settings, r, keys, 0, expect=None)
        promoted = promoted_checkpoint(settings, r, keys)
    done = {k.decode() if isinstance(k, bytes) else k for k in r.hkeys(keys.arena_matches)}
    ttl = max(60, int(settings.task_time_limit_s))
    played = played_checkpoints(settings, r, keys)
    baselines = tuple(settings.arena_baseline_labels())
    for n, opp in planned_matches(checkpoints, promoted, played, baselines):
        mid = match_id(settings, n, opp)
        if mid in done or not r.set(keys.arena_claim(mid), os.getpid(), nx=True, ex=ttl):
            continue
        try:
            seed = zlib.crc32(mid.encode())
            summary = run_match(
                str(n),
                opp,
                settings.arena_games,
                settings.arena_runs_per_move,
                seed,
                settings,
                r,
                keys,
                match_id=mid,
            )
        finally:
            r.delete(keys.arena_claim(mid))
        out["match"] = {k: summary[k] for k in ("match", "a", "b", "score", "ci")}
        if gating and opp == str(promoted) and should_promote(summary["score"], settings):
            out["promoted"] = promote(settings, r, keys, n, expect=promoted)
        break
    if out["metrics"] or out["match"]:
        from hexz_tasks.tensorboard_events import log_evaluation

        log_evaluation(settings, r, keys)
    return out
