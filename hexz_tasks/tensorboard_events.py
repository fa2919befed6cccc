"""TensorBoard event files of a pipeline: ``tensorboard --logdir <data_dir>/tensorboard/<model>``.

One sub-run (folder) per kind of process that writes, and every write is a new event
file, complete before it appears in its sub-run, so no two processes ever append to one
file and TensorBoard reads each sub-run's files in the order they were written:

- ``trainer`` (the process holding the training lock; one at a time): per optimiser step
  the losses and learning rate (x = optimiser step), per epoch the mean losses (x = the
  step that ended it), and per checkpoint (x = checkpoint) samples/s, window size,
  durations and the pipeline around it: examples and games stored per second, examples in
  total, self-play processes, games in flight, moves/s and batch occupancy
  (:func:`pipeline_scalars`, the place to add further per-process statistics).
- ``evaluation`` (the evaluation tick): a snapshot of the newest ``SNAPSHOT_CHECKPOINTS``
  checkpoints (x = checkpoint), rewritten after each change: Elo with its 95 % interval
  (a margin chart under Custom Scalars), the held-out metrics, and the baselines' Elo.
  Ratings move as games are added; TensorBoard's data server keeps, per tag, the values
  written last from a step on, so the curve shown is the current one.

Writing is best effort: a full or read-only disk is logged, never fails a training.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import redis

from hexz_tasks.keys import Keys
from hexz_tasks.settings import Settings

log = logging.getLogger(__name__)

TRAINER = "trainer"
EVALUATION = "evaluation"
# Event files are written here, in the data directory but outside the log folder, and
# moved into their sub-run when complete.
STAGING = ".tensorboard-staging"
# Checkpoints each evaluation snapshot rewrites (older ones keep their last values).
SNAPSHOT_CHECKPOINTS = 100
ELO_TAGS = ("rating/elo", "rating/elo_low95", "rating/elo_high95")
HELDOUT_METRICS = ("policy_ce", "value_mse", "value_sign_acc")
LAYOUT = {
    "Ratings": {
        "Elo per checkpoint, 95% interval": ["Margin", list(ELO_TAGS)],
        "Elo of checkpoints and baselines": ["Multiline", [r"^rating/elo$", r"^baseline/"]],
    },
    "Training": {
        "loss per optimiser step": ["Multiline", [r"^loss_per_step/"]],
        "loss per epoch": ["Multiline", [r"^loss_per_epoch/"]],
    },
}


def log_dir(settings: Settings) -> Path:
    """The pipeline's TensorBoard folder (its sub-runs are the writer kinds)."""
    return settings.data_dir / "tensorboard" / settings.model_name


def tensorboard_command(settings: Settings) -> str:
    return f"tensorboard --logdir {log_dir(settings).resolve()}"


def _event_file_name() -> str:
    """A name that sorts by creation time to the nanosecond (SummaryWriter's own names
    sort by the second, then by host, pid and a counter whose 10 sorts before its 9)."""
    seconds, nanos = divmod(time.time_ns(), 10**9)
    return f"events.out.tfevents.{seconds:010d}.{nanos:09d}.{socket.gethostname()}.{os.getpid()}"


@contextmanager
def _writer(settings: Settings, kind: str) -> Iterator[Any]:
    """A SummaryWriter whose event file, once complete, moves into sub-run `kind` under a
    name that sorts by time (TensorBoard reads a run's files in name order; it never sees
    a file being written). Yields None if the folder cannot be written."""
    from torch.utils.tensorboard import SummaryWriter

    run = log_dir(settings) / kind
    try:
        run.mkdir(parents=True, exist_ok=True)
        staging = settings.data_dir / STAGING
        staging.mkdir(exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=staging))
    except OSError as e:
        log.warning("no TensorBoard events: cannot write to %s: %s", run, e)
        yield None
        return
    try:
        writer = SummaryWriter(str(tmp))
        try:
            yield writer
        finally:
            writer.close()
        for written in tmp.iterdir():
            os.replace(written, run / _event_file_name())
    except OSError as e:
        log.warning("TensorBoard events lost in %s: %s", run, e)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def log_training(
    settings: Settings,
    stats: dict[str, Any],
    step_losses: Sequence[tuple[float, float]],
    learning_rates: Sequence[float],
    pipeline: dict[str, float] | None = None,
) -> None:
    """One training run, in one event file: `step_losses[i]` (policy, value) and
    `learning_rates[i]` of optimiser step ``stats["optimizer_step"] - len(step_losses) +
    i + 1``; `stats` as training.train_checkpoint records it; the `pipeline` scalars
    (:func:`pipeline_scalars`) at this checkpoint."""
    first = int(stats["optimizer_step"]) - len(step_losses) + 1
    checkpoint = int(stats["checkpoint"])
    with _writer(settings, TRAINER) as w:
        if w is None:
            return
        for i, ((policy, value), lr) in enumerate(zip(step_losses, learning_rates, strict=True)):
            w.add_scalar("loss_per_step/policy", policy, first + i)
            w.add_scalar("loss_per_step/value", value, first + i)
            w.add_scalar("loss_per_step/total", policy + value, first + i)
            w.add_scalar("learning_rate", lr, first + i)
        for epoch in stats["losses"]:
            for name in ("policy", "value"):
                w.add_scalar(f"loss_per_epoch/{name}", epoch[name], epoch["step"])
            w.add_scalar("loss_per_epoch/total", epoch["loss"], epoch["step"])
        for name in ("samples_per_s", "examples_window", "train_s", "load_s", "duration_s"):
            w.add_scalar(f"training/{name}", stats[name], checkpoint)
        for name, value in (pipeline or {}).items():
            w.add_scalar(f"pipeline/{name}", value, checkpoint)


def stored_per_second(r: redis.Redis, keys: Keys, start: float, end: float) -> dict[str, float]:
    """Games and examples stored per second from `start` to `end` (the present), from the
    per-minute counters (Keys.rates): a minute that overlaps the span counts in
    proportion to the overlap; the running minute's counts span its start to `end`."""
    counts = {"games": 0.0, "examples": 0.0}
    for field, value in r.hgetall(keys.rates).items():
        minute, _, what = field.decode().partition(":")
        if what not in counts:
            continue
        lo = int(minute) * 60
        hi = min(lo + 60, end)
        overlap = hi - max(lo, start)
        if overlap > 0 and hi > lo:
            counts[what] += int(value) * overlap / (hi - lo)
    seconds = max(end - start, 1e-9)
    return {f"{what}_per_s": n / seconds for what, n in counts.items()}


def pipeline_scalars(r: redis.Redis, keys: Keys, since: str | None) -> dict[str, float]:
    """Throughput and occupancy of the pipeline from what Redis holds now: stored
    examples and games per second since `since` (an ISO time, e.g. the previous
    checkpoint's end; at least over the last minute), and from the self-play processes'
    progress entries (hexz_tasks.selfplay_worker): processes, games in flight, moves per
    second and mean batch occupancy."""
    from hexz_tasks.store import ExampleStore
    from hexz_tasks.worker_registry import live_progress

    now = time.time()
    start = now - 60
    if since is not None:
        start = min(start, datetime.fromisoformat(since).timestamp())
    rates = stored_per_second(r, keys, start, now)
    progress = list(live_progress(r, keys, now).values())
    occupancies = [p["occupancy"] for p in progress if p.get("occupancy") is not None]
    return {
        "examples_per_s": rates["examples_per_s"],
        "games_per_s": rates["games_per_s"],
        "examples_total": float(ExampleStore(r, keys).total_examples()),
        "selfplay_processes": float(len(progress)),
        "selfplay_games_in_flight": float(sum(p["games_in_flight"] for p in progress)),
        "selfplay_moves_per_s": float(sum(p["moves_per_s"] for p in progress)),
        "selfplay_occupancy": sum(occupancies) / len(occupancies) if occupancies else 0.0,
    }


def log_evaluation(settings: Settings, r: redis.Redis, keys: Keys) -> None:
    """Rewrites the evaluation snapshot: ratings with intervals, held-out metrics and
    baselines of the newest SNAPSHOT_CHECKPOINTS checkpoints, in ascending order."""
    from hexz_tasks.ratings import baselines, rating_curve

    curve = rating_curve(settings, r, keys)
    if not curve:
        return
    newest = curve[-1]["checkpoint"]
    shown = [e for e in curve if e["checkpoint"] > newest - SNAPSHOT_CHECKPOINTS]
    rated = [e["checkpoint"] for e in shown if "rating" in e]
    with _writer(settings, EVALUATION) as w:
        if w is None:
            return
        w.add_custom_scalars(LAYOUT)
        for e in shown:
            n = e["checkpoint"]
            if "rating" in e:
                for tag, key in zip(ELO_TAGS, ("rating", "low", "high"), strict=True):
                    w.add_scalar(tag, e[key], n)
            for metric in HELDOUT_METRICS:
                if metric in e:
                    w.add_scalar(f"heldout/{metric}", e[metric], n)
        if rated:
            for rt in baselines(settings, r, keys):
                w.add_scalar(f"baseline/{_tag(rt.player)}", rt.elo, max(rated))


def _tag(player: str) -> str:
    """A player label as one tag name part (labels may be file paths)."""
    return re.sub(r"[^\w.:-]", "_", player)
