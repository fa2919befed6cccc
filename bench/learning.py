"""Learning benchmark (issues 8 and 14): does the whole pipeline produce a stronger player?

Runs the real pipeline on this machine for ``--minutes`` (a private redis-server, a
self-play worker, a training worker, the evaluation worker and beat, as subprocesses,
with the small configuration in CONFIG: `hexz run`'s quick-start settings), stops it,
then plays ``--games`` arena games of the newest checkpoint against checkpoint 0 and as
many against pure MCTS (uniform priors, one random playout per leaf) at the same number
of network evaluations / playouts per move. Prints both scores with paired 95 % intervals, the
Bradley-Terry rating curve over every stored game (the automatic evaluation's matches
during the run and the final ones), and, as the last line, one JSON object.

- checkpoint 0 and pure MCTS (uniform priors, one random playout per leaf) at the
  evaluation's runs per move (ARENA_RUNS_PER_MOVE, 64);
- the game server's CPU player (plain UCT with random rollouts, shared/spec/
  uct-baseline.md) at 800 and 3,200 iterations per move, with the network at 800 runs
  per move;
- ``uct@T``, the CPU player at equal think time: T is the network's CPU time per move at
  800 runs in the match against uct:800 (its searches, its share of the arena's Python
  loop and its batched inference over the games in flight; all cores are the arena's
  then). So both sides get the same CPU time per move, as "strength per CPU-hour" asks;
  the UCT search runs on one thread, and the UCT moves of different games in parallel;
- with RANDOM_PLAYOUTS (the leaf values mixed with random playouts), two controls
  against uct:800: the newest network without the playouts, and the untrained
  checkpoint 0 with them (what the search alone achieves).

It prints the scores with 95 % intervals (hexz_tasks.intervals.paired_score), the
Bradley-Terry rating curve over every stored game (the automatic evaluation's matches
during the run, against checkpoint 0, the predecessor and ARENA_BASELINES, and the final
matches at 64 runs; the 800-run matches are not stored, so that a checkpoint's label
means one strength), and, as the last line, one JSON object (also written to ``--out``;
bench/ablations.py runs the ablation study with it and tabulates the files).

Target (issue 14): the LOWER end of the interval against uct:800 above 0.5. Issue 8's
targets (>= 0.75 against checkpoint 0, > 0.5 against pure MCTS) are reported on the
lower ends too.

Ablations, each a separate run of the same length (quote both sides with intervals):
``--symmetry on|off`` (HEXZ_TRAIN_SYMMETRIES), ``--fpu fixed|reference``
(HEXZ_FPU_REFERENCE), ``--fast-moves on|off`` (FAST_MOVES: playout cap randomisation at
the same mean runs per move) and ``--set NAME=VALUE`` for any other setting (e.g.
VALUE_TARGET_Q_WEIGHT=0, RANDOM_PLAYOUTS=0); bench/ablations.py lists the study's runs.

Configuration choice for 2 cores: a small net (conv2d, 3 blocks, 32 filters: ~10k
evaluations/s on one core) so self-play makes many games (64 runs per move, ~140
examples/s per process); two self-play processes and one trainer (torch on one thread
each); replay training (buffer 2**15, reuse 4: a training step of 128 batches of 256
every 8192 new examples, ~40 s), so there are dozens of checkpoints in 30 minutes and
each example is seen about four times. Root Dirichlet noise (0.35), games ended once the
player to move is stuck and behind, and moves drawn by visits only for the first 30 plies
(SAMPLED_MOVES; then the most visited child). The last one decided it: with moves drawn
for the whole game (the reference) the score against pure MCTS was 0.465-0.495 after 30
minutes; with it, 0.72 and 0.77 in two runs (README). The likely reason: greedy play
after the opening makes the game results (the value target) less noisy and the positions
closer to those the arena plays. Issue 14 added, after 10-minute screens (README): leaf
values half network, half the mean of two random playouts (in the arena alone it took a
10-minute checkpoint from 0.025 to 0.69 against uct:800; in self-play too, with the
next two, to 0.985-1.0), the value target half result, half search value, random board
symmetries, and fast moves at the same 64 runs per move on average.
``--quick`` (under a minute: 24 s of pipeline, 4-game matches, the network at 16 runs
against uct:50 and uct:200) only proves that every part runs: it does not train long
enough to learn.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.private_redis import private_redis
from hexz_tasks.keys import Keys
from hexz_tasks.launcher import QUICKSTART, QUICKSTART_FAST_MOVES
from hexz_tasks.progress import bar, timed
from hexz_tasks.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "hexzbench"

# `hexz run`'s quick-start settings, plus what only a 30-minute measurement needs.
CONFIG: dict[str, Any] = {
    **{k.removeprefix("HEXZ_"): v for k, v in QUICKSTART.items()},
    "INFERENCE_THREADS": 1,
    "TRAINING_CHECK_INTERVAL_S": 5,
    "TASK_TIME_LIMIT_S": 900,
    "TRAINING_TIME_LIMIT_S": 900,
    "VISIBILITY_TIMEOUT_S": 1000,
}
QUICK: dict[str, Any] = {"REPLAY_BUFFER_SIZE": 4096, "ARENA_INTERVAL_S": 20, "GAMES_IN_FLIGHT": 8}
QUICK_MINUTES = 0.4
SELFPLAY_PROCESSES = 2
# Playout cap randomisation (--fast-moves on): the quick start's, 64 runs per move on
# average; --fast-moves off searches every move with that mean.
FAST_MOVES: dict[str, Any] = {k.removeprefix("HEXZ_"): v for k, v in QUICKSTART_FAST_MOVES.items()}
# The yardstick after the run: the network at net_runs runs per move against the game
# server's CPU player at these iterations (the first is the target's), then at equal
# think time; --quick shrinks all of it.
FINAL_MATCHES: dict[str, Any] = {"net_runs": 800, "uct": ("uct:800", "uct:3200")}
QUICK_MATCHES: dict[str, Any] = {"net_runs": 16, "uct": ("uct:50", "uct:200"), "games": 4}
MATCH_SEED = 20240917


class Procs:
    """Subprocesses in their own process groups, logs in files; stopped group-wise."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[tuple[str, subprocess.Popen, Any]] = []

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")  # closed in stop()
        p = subprocess.Popen(
            args, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs.append((name, p, log))
        return p

    def stop(self, name: str | None = None) -> None:
        for n, p, log in reversed(self.procs):
            if name is not None and n != name:
                continue
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    pass
            try:
                os.killpg(p.pid, signal.SIGKILL)  # also orphaned pool children
            except ProcessLookupError:
                pass
            p.wait(10)
            log.close()
        self.procs = [t for t in self.procs if name is not None and t[0] != name]


def pipeline_stats(r: Any, keys: Keys, settings: Settings) -> dict[str, Any]:
    from hexz_tasks.repository import ModelRepository
    from hexz_tasks.store import ExampleStore

    repo = ModelRepository(settings.repo_base_dir, settings.model_name)
    return {
        "checkpoints": len(repo.checkpoints()),
        "examples": ExampleStore(r, keys).total_examples(),
        "arena_matches": r.hlen(keys.arena_matches),
    }


def run_pipeline(env: dict[str, str], settings: Settings, seconds: float, data: Path) -> None:
    """The pipeline for `seconds`: the trainer, self-play, the evaluation worker, beat."""
    import redis

    from hexz_tasks.queues import EVAL_QUEUE, GPU_QUEUE, SELFPLAY_QUEUE

    keys = Keys(PREFIX)
    r = redis.Redis.from_url(settings.redis_url)
    procs = Procs(data)
    celery = [sys.executable, "-m", "celery", "-A", "hexz_tasks"]
    worker = ["worker", "-P", "prefork", "-l", "INFO"]
    try:
        for queue, processes in (
            (GPU_QUEUE, 1),
            (SELFPLAY_QUEUE, SELFPLAY_PROCESSES),
            (EVAL_QUEUE, 1),
        ):
            procs.start(
                queue,
                [*celery, *worker, "-Q", queue, "-n", f"{queue}@%h", "-c", str(processes)],
                env,
            )
        procs.start("beat", [*celery, "beat", "-l", "INFO"], env)
        start = time.monotonic()
        next_report = start
        with timed("pipeline", seconds) as shown:
            while (now := time.monotonic()) < start + seconds:
                if now >= next_report:
                    shown.write(f"[{now - start:6.0f}s] {pipeline_stats(r, keys, settings)}")
                    next_report += 60
                time.sleep(1.0)
    finally:
        procs.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument(
        "--quick", action="store_true", help="well under a minute of pipeline, tiny matches"
    )
    ap.add_argument("--games", type=int, default=200, help="games per final match (even)")
    ap.add_argument(
        "--matches",
        choices=["full", "ablation"],
        default="full",
        help="ablation: only the matches an ablation is compared on (no uct@T, no "
        "checkpoint 0 + search control: neither depends on what training did)",
    )
    ap.add_argument("--data-dir", type=Path, default=None, help="keep everything here")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON object here")
    ablation = ap.add_argument_group("ablations (default: the configuration's choice)")
    ablation.add_argument(
        "--symmetry", choices=["on", "off"], help="train on random board symmetries"
    )
    ablation.add_argument(
        "--fpu", choices=["fixed", "reference"], help="first-play urgency after double moves"
    )
    ablation.add_argument(
        "--fast-moves",
        choices=["on", "off"],
        help="on: playout cap randomisation at the same mean runs per move (FAST_MOVES)",
    )
    ablation.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any other setting, HEXZ_ prefix optional (e.g. the value-target mix)",
    )
    return ap.parse_args(argv)


def configuration(args: argparse.Namespace) -> dict[str, Any]:
    """CONFIG (QUICK added for --quick) with the ablation flags applied."""
    config = {**CONFIG, **(QUICK if args.quick else {})}
    if args.symmetry is not None:
        config["TRAIN_SYMMETRIES"] = args.symmetry == "on"
    if args.fpu is not None:
        config["FPU_REFERENCE"] = args.fpu == "reference"
    if args.fast_moves == "on":
        config.update(FAST_MOVES)
    elif args.fast_moves == "off":
        config.update(FAST_MOVE_PROB=0, RUNS_PER_MOVE=mean_runs_per_move(config))
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise SystemExit(f"--set needs NAME=VALUE, got {item!r}")
        config[name.strip().upper().removeprefix("HEXZ_")] = value.strip()
    return config


def mean_runs_per_move(config: dict[str, Any]) -> int:
    """Runs per move on average with the configuration's fast moves (none: RUNS_PER_MOVE)."""
    p = float(config.get("FAST_MOVE_PROB", 0))
    full = float(config["RUNS_PER_MOVE"])
    return round((1 - p) * full + p * float(config.get("RUNS_PER_FAST_MOVE", full)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    minutes = QUICK_MINUTES if args.quick else args.minutes
    games = QUICK_MATCHES["games"] if args.quick else args.games
    config = configuration(args)

    learning = {**config, "MODEL_NAME": "learning"}
    matches = {
        **(QUICK_MATCHES if args.quick else FINAL_MATCHES),
        "full": args.matches == "full",
    }
    with private_pipeline(learning, PREFIX, args.data_dir) as (env, settings, data):
        result = evaluate(env, settings, minutes, games, data, config, matches)
    result["argv"] = sys.argv[1:] if argv is None else argv
    print(json.dumps(result))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


@contextlib.contextmanager
def private_pipeline(
    config: dict[str, Any], prefix: str, data_dir: Path | None
) -> Iterator[tuple[dict[str, str], Settings, Path]]:
    """A private redis-server, and the environment for pipeline subprocesses: `config` as
    HEXZ_* settings, keys under `prefix`, one torch thread per process. Yields (env,
    settings, data dir); the data dir is removed afterwards unless `data_dir` was given."""
    data = data_dir or Path(tempfile.mkdtemp(prefix="hexz-bench-"))
    data.mkdir(parents=True, exist_ok=True)
    try:
        with private_redis(data / "redis") as url:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("HEXZ_", "FLOWER_"))}
            env.update({f"HEXZ_{k}": str(v) for k, v in config.items()})
            env.update(
                HEXZ_REDIS_URL=url,
                HEXZ_DATA_DIR=str(data),
                HEXZ_KEY_PREFIX=prefix,
                PYTHONUNBUFFERED="1",
                OMP_NUM_THREADS="1",
            )
            yield env, Settings.from_env(env), data  # a bad --set fails here, naming it
    finally:
        if data_dir is None:
            shutil.rmtree(data, ignore_errors=True)


def rounded(summary: dict[str, Any]) -> dict[str, Any]:
    """A match's figures for the JSON line."""
    return {
        "score": round(summary["score"], 4),
        "ci": [round(x, 4) for x in summary["ci"]],
        "cpu_ms_per_move": summary["cpu_ms_per_move"],
    }


def evaluate(
    env: dict[str, str],
    settings: Settings,
    minutes: float,
    games: int,
    data: Path,
    config: dict[str, Any],
    final: dict[str, Any],
) -> dict[str, Any]:
    import redis
    import torch

    from hexz_tasks.arena import format_summary, run_match
    from hexz_tasks.evaluation import heldout_set, record_metrics
    from hexz_tasks.ratings import baselines, fit_stored, format_curve, rating_curve
    from hexz_tasks.repository import ModelRepository

    r = redis.Redis.from_url(settings.redis_url)
    keys = Keys(PREFIX)
    started = time.time()
    run_pipeline(env, settings, minutes * 60, data)
    trained_s = time.time() - started
    stats = pipeline_stats(r, keys, settings)
    repo = ModelRepository(settings.repo_base_dir, settings.model_name)
    newest = repo.latest_checkpoint()
    print(f"pipeline stopped after {trained_s:.0f} s: {stats}; newest checkpoint {newest}")

    torch.set_num_threads(os.cpu_count() or 1)  # the pipeline is stopped: all cores are ours

    def match(
        opponent: str,
        runs: int,
        *,
        store: bool,
        checkpoint: int = newest,
        search: Settings = settings,
    ) -> dict[str, Any]:
        """`checkpoint` (default: the newest) vs `opponent`, searching with `search`'s
        settings; stored (and so rated) only at the evaluation's runs per move: a label
        is one player in the ratings whatever its runs."""
        t = time.time()
        with bar(games, f"{checkpoint} vs {opponent}", unit="game") as shown:
            summary = run_match(
                str(checkpoint), opponent, games, runs, MATCH_SEED, search, r if store else None,
                keys, match_id=f"bench:{checkpoint}:{opponent}@{runs}",
                on_game=lambda _: shown.update(),
            )  # fmt: skip
        cpu = summary["cpu_ms_per_move"][0]
        print(
            f"{format_summary(summary)}; network {cpu:.1f} CPU ms per move "
            f"({time.time() - t:.0f} s)",
            flush=True,
        )
        return summary

    runs = settings.arena_runs_per_move
    vs0 = match("0", runs, store=True)
    vsm = match("mcts", runs, store=True)
    net_runs = final["net_runs"]
    vs_uct = [match(opponent, net_runs, store=False) for opponent in final["uct"]]
    # Equal think time: the UCT player gets the network's CPU time per move at
    # net_runs (batched over the games in flight, search and Python included).
    think_ms = max(1, round(vs_uct[0]["cpu_ms_per_move"][0]))
    full = final.get("full", True)
    vs_timed = match(f"uct@{think_ms}", net_runs, store=False) if full else None
    # With random playouts mixed into the leaf values, what the score against the first
    # UCT player owes to the network and what to the search: the newest network without
    # playouts, and the untrained checkpoint 0 with them.
    controls: dict[str, dict[str, Any]] = {}
    if settings.random_playouts > 0:
        first = final["uct"][0]
        bare = settings.replace(random_playouts=0)
        controls[f"network_alone_vs_{first}"] = match(first, net_runs, store=False, search=bare)
        if full:
            controls[f"checkpoint0_vs_{first}"] = match(first, net_runs, store=False, checkpoint=0)

    # Offline metrics for every checkpoint the evaluation ticks had not reached.
    have = {int(k) for k in r.hkeys(keys.checkpoint_metrics)}
    heldout = heldout_set(settings)
    for n in repo.checkpoints():
        if n not in have:
            record_metrics(settings, r, keys, n, heldout)
    curve = rating_curve(settings, r, keys)
    others = baselines(settings, r, keys)
    print(format_curve(curve, others))
    ratings, _ = fit_stored(settings, r, keys)
    newest_rating = ratings.get(f"{settings.model_name}:{newest}")
    target = vs_uct[0]["ci"][0] > 0.5
    minutes = saved_minutes(r, keys, started)
    print(
        f"target: lower end vs {final['uct'][0]} at {net_runs} runs per move "
        f"{vs_uct[0]['ci'][0]:.3f} > 0.5: {'met' if target else 'NOT met'}"
    )
    result = {
        "target_met": target,
        "vs_checkpoint0": rounded(vs0),
        "vs_mcts": rounded(vsm),
        **{f"vs_{opp}": rounded(s) for opp, s in zip(final["uct"], vs_uct, strict=True)},
        **({"vs_uct@T": rounded(vs_timed)} if vs_timed is not None else {}),
        **{name: rounded(s) for name, s in controls.items()},
        "uct_think_ms": think_ms,
        # Issue 8's targets, now on the lower ends of the intervals.
        "issue8_targets_met": vs0["ci"][0] >= 0.75 and vsm["ci"][0] > 0.5,
        "games_per_match": games,
        "runs_per_move": runs,
        "net_runs_vs_uct": net_runs,
        "newest_checkpoint": newest,
        "checkpoints": stats["checkpoints"],
        "examples": stats["examples"],
        "pipeline_s": round(trained_s),
        "elo_newest": None if newest_rating is None else round(newest_rating.elo),
        "elo_baselines": {rt.player: round(rt.elo) for rt in others},
        # Per checkpoint: minutes after the start at which it was saved, Elo and its 95 %
        # interval (checkpoint 0 = 0), held-out metrics.
        "rating_curve": [
            {
                "checkpoint": e["checkpoint"],
                "minute": minutes.get(e["checkpoint"]),
                **{k: e.get(k) for k in ("rating", "low", "high", "policy_ce", "value_mse")},
            }
            for e in curve
        ],
        "configuration": {**config, "selfplay_processes": SELFPLAY_PROCESSES},
    }
    return result


def saved_minutes(r: Any, keys: Keys, started: float) -> dict[int, float]:
    """Checkpoint -> minutes from `started` (a time.time()) to the end of its training,
    from the recorded training runs."""
    runs = (json.loads(x) for x in r.lrange(keys.training_runs, 0, -1))
    return {run["checkpoint"]: round((run["finished"] - started) / 60, 1) for run in runs}


if __name__ == "__main__":
    sys.exit(main())
