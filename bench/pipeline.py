"""Pipeline benchmark (issue 13): self-play at the spec's defaults, end to end.

Runs the real pipeline on this machine for ``--minutes`` (default 15): a private
redis-server, a self-play worker with one pool process per core, the trainer, and beat
(its feeder queues the slices), as subprocesses with every self-play setting at its
default (conv2d 5x128, 800 runs per move, HEXZ_GAMES_IN_FLIGHT, HEXZ_SELFPLAY_SLICE_S: the
deployed task shape). On a CPU-only machine the trainer at the spec's defaults would take
a core whenever it trains, so it gets a small training configuration (TRAINER: a window
of 1,024 examples, one epoch), and the CPU seconds the self-play worker and the trainer
used are reported apart. The automatic evaluation (its own worker in the Procfile) is
not started: it would share the cores with self-play.

Measured:
- examples_per_s, games_per_s: the rate self-play makes complete games at: its
  evaluations per second (summed over the processes, from their progress entries, once
  they play) over the evaluations per example of the games it stored (each process adds
  up what its stored games cost: complete games only, at the deployed task shape).
  A process's games start together, so the first ones finish in a wave minutes after the
  start and the next wave later: the raw rate stored over [first game, end]
  (stored_examples_per_s, also printed) swings with where the run stops in a wave;
- first_game_s: from the start of the workers to the first stored game;
- occupancy: mean share of the game slots in each network batch (1.0: every batch full);
- checkpoints_behind: the newest published checkpoint minus the one self-play played
  with, averaged over samples every few seconds;
- time_limit_hits: self-play tasks that hit a time limit (worker log; must be 0);
- reference_evals_per_s: the original fixture TorchScript (eval mode, batch 64, as in
  bench/selfplay.py) on as many threads as self-play had processes, measured before and
  after the pipeline (it would disturb the pipeline, and the pipeline it); the higher of
  the two counts, so that a busy moment cannot flatter the ratio below;
- examples_per_1000_reference_evals = examples_per_s / reference_evals_per_s * 1000
  (target >= 2.0; the original system: 0.62).

    python -m bench.pipeline [--minutes M] [--quick] [--games-in-flight N]

``--quick`` (under a minute: 40 s of pipeline) plays a small network (conv2d 2x32, 100
runs per move) to prove every part works; its figures say nothing about the defaults. The last line
printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.learning import Procs, private_pipeline
from hexz_tasks.keys import Keys
from hexz_tasks.settings import Settings

PREFIX = "hexzpipeline"
# The trainer's small configuration (same network as self-play, far less work per
# checkpoint than the spec's 7 epochs over up to 2**20 examples).
TRAINER: dict[str, Any] = {
    "TRAINING_EXAMPLES_WINDOW_SIZE": 1024,
    "NUM_EPOCHS": 1,
    "BATCH_SIZE": 128,
    "TRAINING_TRIGGER_THRESHOLD": 200,
}
QUICK: dict[str, Any] = {"MODEL_BLOCKS": 2, "MODEL_FILTERS": 32, "RUNS_PER_MOVE": 100}
SAMPLE_S = 5.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system, reaped children included) of a process group's processes."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[2]) == pgid:  # fields after the name: state, ppid, pgrp, ...
            total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total / CLOCK_TICKS


def reference_evals_per_s(threads: int, seconds: float) -> float:
    """The fixture TorchScript, eval mode, batch 64, on `threads` threads."""
    import torch

    from bench.selfplay import FIXTURE, reference_rate
    from hexz_tasks.inference import sample_positions

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        boards, masks = sample_positions(64)
        return reference_rate(torch.jit.load(FIXTURE).eval(), boards, masks, seconds)
    finally:
        torch.set_num_threads(saved)


class Samples:
    """What the bench reads from Redis while the pipeline runs."""

    def __init__(self, settings: Settings) -> None:
        import redis

        self.r = redis.Redis.from_url(settings.redis_url)
        self.keys = Keys(PREFIX)
        self.first_game: tuple[float, int] | None = None  # time, examples stored
        self.behind: list[int] = []
        self.progress: dict[str, dict] = {}
        self.evaluations: list[tuple[float, int]] = []  # (time, self-play's evaluations)

    def counters(self) -> dict[str, int]:
        from hexz_tasks.store import ExampleStore

        return ExampleStore(self.r, self.keys).counters()

    def sample(self, now: float) -> dict[str, Any]:
        from hexz_tasks.model_source import fetch_latest
        from hexz_tasks.worker_registry import live_progress

        c = self.counters()
        if self.first_game is None and c["games"] > 0:
            self.first_game = (now, c["examples"])
        self.progress.update(live_progress(self.r, self.keys))
        evaluations = sum(p["evaluations"] for p in self.progress.values())
        if evaluations:
            self.evaluations.append((now, evaluations))
        latest = fetch_latest(self.r, self.keys)
        playing = [p["checkpoint"] for p in self.progress.values() if p["checkpoint"] is not None]
        if latest is not None and playing:
            self.behind.extend(latest[1] - cp for cp in playing)
        return {
            "games": c["games"],
            "examples": c["examples"],
            "checkpoint": None if latest is None else latest[1],
            "moves": sum(p["moves"] for p in self.progress.values()),
            "self-play checkpoints": playing,
        }


def run(settings: Settings, env: dict[str, str], data: Path, seconds: float) -> dict[str, Any]:
    from hexz_tasks.queues import GPU_QUEUE, SELFPLAY_QUEUE

    processes = os.cpu_count() or 1
    procs = Procs(data)
    celery = [sys.executable, "-m", "celery", "-A", "hexz_tasks"]
    worker = ["worker", "-P", "prefork", "-l", "INFO"]
    samples = Samples(settings)
    try:
        start = time.monotonic()
        selfplay = procs.start(
            "selfplay",
            [*celery, *worker, "-Q", SELFPLAY_QUEUE, "-n", "selfplay@%h", "-c", str(processes)],
            env,
        )
        trainer = procs.start(
            "gpu", [*celery, *worker, "-Q", GPU_QUEUE, "-n", "gpu@%h", "-c", "1"], env
        )
        procs.start("beat", [*celery, "beat", "-l", "INFO"], env)
        while (now := time.monotonic()) < start + seconds:
            line = samples.sample(now)
            print(f"[{now - start:5.0f}s] {line}", file=sys.stderr, flush=True)
            time.sleep(SAMPLE_S)
        end = time.monotonic()
        final = samples.sample(end)
        end_counters = samples.counters()
        cpu = {"selfplay": group_cpu_s(selfplay.pid), "trainer": group_cpu_s(trainer.pid)}
    finally:
        procs.stop()
    log = (data / "selfplay.log").read_text(errors="replace")
    out: dict[str, Any] = {
        "selfplay_processes": processes,
        "time_limit_hits": len(re.findall(r"time limit \([\d.]+s\) exceeded", log, re.I)),
        "selfplay_cpu_s": round(cpu["selfplay"], 1),
        "trainer_cpu_s": round(cpu["trainer"], 1),
        "wall_s": round(end - start, 1),
        "checkpoints_behind": (
            round(sum(samples.behind) / len(samples.behind), 2) if samples.behind else None
        ),
        "newest_checkpoint": final["checkpoint"],
    }
    entries = samples.progress.values()
    rows = sum(p["batch_rows"] for p in entries)
    slots = sum(p["batches"] * p["games_in_flight"] for p in entries)
    out["occupancy"] = round(rows / slots, 4) if slots else None
    # Self-play's evaluation rate once every process plays (model loading excluded).
    (t0, e0), (t1, e1) = samples.evaluations[0], samples.evaluations[-1]
    evals_per_s = (e1 - e0) / (t1 - t0) if t1 > t0 else 0.0
    out["selfplay_evals_per_s"] = round(evals_per_s, 1)
    if samples.first_game is None:
        out.update(first_game_s=None, examples_per_s=0.0, games_per_s=0.0)
        return out
    t_first, examples1 = samples.first_game
    out["first_game_s"] = round(t_first - start, 1)
    out["examples"] = end_counters["examples"]
    out["games"] = end_counters["games"]
    # What the stored (complete) games cost: evaluations per stored example.
    stored = sum(p["examples_stored"] for p in entries)
    cost = sum(p["evaluations_stored"] for p in entries) / stored if stored else None
    out["evals_per_example"] = None if cost is None else round(cost, 1)
    # The games of a process start together, so the first ones finish in a wave: the
    # stored rate over [first game, end] swings with where the run ends in the wave. The
    # rate self-play produces complete games at is its evaluation rate over their cost.
    out["examples_per_s"] = round(evals_per_s / cost, 3) if cost else 0.0
    out["games_per_s"] = round(
        out["examples_per_s"] * (end_counters["games"] / max(1, end_counters["examples"])), 4
    )
    out["stored_examples_per_s"] = round(
        (end_counters["examples"] - examples1) / (end - t_first), 3
    )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--quick", action="store_true", help="under a minute, a small network")
    ap.add_argument("--games-in-flight", type=int, default=None, help="default: the setting's")
    ap.add_argument("--data-dir", type=Path, default=None, help="keep everything here")
    args = ap.parse_args()
    minutes = 40 / 60 if args.quick else args.minutes
    config = {**TRAINER, **(QUICK if args.quick else {})}
    if args.games_in_flight is not None:
        config["GAMES_IN_FLIGHT"] = args.games_in_flight

    threads = os.cpu_count() or 1
    quick_ref_s = 2.0 if args.quick else 10.0
    reference = [reference_evals_per_s(threads, quick_ref_s)]
    with private_pipeline(config, PREFIX, args.data_dir) as (env, settings, data):
        result = run(settings, env, data, minutes * 60)
    reference.append(reference_evals_per_s(threads, quick_ref_s))
    ref = max(reference)
    result.update(
        quick=args.quick,
        network=f"{settings.model_type} {settings.model_blocks}x{settings.model_filters}",
        runs_per_move=settings.runs_per_move,
        games_in_flight=settings.games_in_flight,
        selfplay_slice_s=settings.selfplay_slice_s,
        reference_evals_per_s=round(ref, 1),
        reference_rounds=[round(x) for x in reference],
        examples_per_1000_reference_evals=round(result["examples_per_s"] / ref * 1000, 3),
        minutes=round(minutes, 2),
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
