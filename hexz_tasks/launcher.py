"""`hexz run`: the whole pipeline on this machine, under honcho's process manager.

The processes are those of the repository's ``Procfile`` (``honcho start`` runs the same;
a test keeps the two equal). ``hexz run`` differs in two ways: it starts the
project-managed Redis first and waits for it, so nothing races it, and it fills in
small quick-start settings for every ``HEXZ_*`` variable that is not set, so a newcomer
sees games, examples and new checkpoints within minutes on a laptop.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping

from hexz_tasks.redis_server import ensure_running, masked_url, redis_url
from hexz_tasks.settings import Settings
from hexz_tasks.tensorboard_events import tensorboard_command

# name -> command; the Procfile holds exactly these lines.
PROCESSES: dict[str, str] = {
    # Exits never: idles when HEXZ_REDIS_URL points elsewhere (honcho stops all on any exit).
    "redis": "hexz redis",
    "selfplay": "celery -A hexz_tasks worker -Q selfplay -n selfplay@%h -P prefork -l INFO",
    "gpu": "celery -A hexz_tasks worker -Q gpu -n gpu@%h -c 1 -P prefork -l INFO",
    # The automatic evaluation: its own worker, so its ticks never wait behind self-play.
    "eval": "celery -A hexz_tasks worker -Q eval -n eval@%h -c 1 -P prefork -l INFO",
    # Exactly one beat per pipeline; its schedule file lives in HEXZ_DATA_DIR.
    "beat": "celery -A hexz_tasks beat -l INFO",
    # Binds 127.0.0.1; login from HEXZ_FLOWER_BASIC_AUTH, else generated (run_flower).
    "flower": "hexz flower",
    "web": "hexz serve",
}

# Playout cap randomisation (KataGo's "fast moves") at 64 runs per move on average: a
# quarter of the moves is searched with 160 runs and recorded as examples, the rest with
# 32 runs and not.
QUICKSTART_FAST_MOVES: dict[str, str] = {
    "HEXZ_RUNS_PER_MOVE": "160",
    "HEXZ_RUNS_PER_FAST_MOVE": "32",
    "HEXZ_FAST_MOVE_PROB": "0.75",
}

# Quick-start settings `hexz run` uses where the environment sets nothing (the spec's
# defaults are sized for a GPU trainer and many CPU cores): the configuration
# bench/learning.py measures on 2 cores (README, "Learning"). Besides the small network
# and replay training: symmetries, fast moves, the value target half result, half search
# value, and leaf values half network, half two random playouts (in self-play, the
# arena and the CPU player).
QUICKSTART: dict[str, str] = {
    "HEXZ_MODEL_TYPE": "conv2d",
    "HEXZ_MODEL_BLOCKS": "3",
    "HEXZ_MODEL_FILTERS": "32",
    **QUICKSTART_FAST_MOVES,
    "HEXZ_RANDOM_PLAYOUTS": "2",
    "HEXZ_RANDOM_PLAYOUT_WEIGHT": "0.5",
    "HEXZ_GAMES_IN_FLIGHT": "32",
    "HEXZ_DIRICHLET_CONCENTRATION": "0.35",
    "HEXZ_END_GAME_WHEN_STUCK": "true",
    "HEXZ_SAMPLED_MOVES": "30",
    "HEXZ_TRAINING_MODE": "replay",
    "HEXZ_REPLAY_BUFFER_SIZE": str(2**15),
    "HEXZ_REPLAY_BUFFER_REUSE": "4",
    "HEXZ_BATCH_SIZE": "256",
    "HEXZ_TRAIN_SYMMETRIES": "true",
    "HEXZ_VALUE_TARGET_Q_WEIGHT": "0.5",
    "HEXZ_ARENA_RUNS_PER_MOVE": "64",
    "HEXZ_ARENA_GAMES": "10",
    "HEXZ_ARENA_INTERVAL_S": "60",
    "HEXZ_ARENA_BASELINES": "mcts,uct:800",
}


def pipeline_env(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` with the quick-start settings added where unset."""
    env = dict(environ)
    for name, value in QUICKSTART.items():
        env.setdefault(name, value)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _command(cmd: str) -> str:
    """Runs `hexz` / `celery` with this interpreter, so an unactivated venv works too."""
    head, _, rest = cmd.partition(" ")
    module = {"hexz": "hexz_tasks.cli", "celery": "celery"}[head]
    return f"{shlex.quote(sys.executable)} -m {module} {rest}"


def startup_message(settings: Settings) -> str:
    return (
        f"hexz run: Redis {masked_url(redis_url(settings))}, "
        f"data in {settings.data_dir.resolve()}, "
        f"model {settings.model_type} {settings.model_blocks}x{settings.model_filters}, "
        f"{settings.runs_per_move} runs per move; `hexz status` shows progress\n"
        f"hexz run: curves in TensorBoard: {tensorboard_command(settings)}"
    )


def run_flower(settings: Settings) -> int:
    """`hexz flower`: Celery's Flower on 127.0.0.1, never without a login.

    The login is HEXZ_FLOWER_BASIC_AUTH, else one generated on first start and kept in
    the data directory (mode 600); its password is printed only when it is generated.
    It reaches Flower through the environment, not the command line that `ps` shows.
    """
    from hexz_tasks.credentials import flower_basic_auth

    auth = settings.flower_basic_auth
    if auth is None and "FLOWER_BASIC_AUTH" not in os.environ:
        auth, path, created = flower_basic_auth(settings.data_dir)
        user, _, password = auth.partition(":")
        if created:
            print(f"Flower login generated: user {user}, password {password} (kept in {path})")
        else:
            print(f"Flower login: user {user}, password in {path}")
    if auth is not None:
        os.environ.setdefault("FLOWER_BASIC_AUTH", auth)
    os.environ.setdefault("FLOWER_ADDRESS", "127.0.0.1")
    sys.stdout.flush()
    args = [sys.executable, "-m", "celery", "-A", "hexz_tasks", "flower"]
    os.execv(args[0], args)  # replaces this process: honcho's signals reach Flower
    raise AssertionError("unreachable")


def run_pipeline(settings: Settings) -> int:
    """Runs every process of the Procfile until Ctrl-C (or until one of them exits)."""
    from honcho.manager import Manager
    from honcho.printer import Printer

    env = pipeline_env(os.environ)
    settings = Settings.from_env(env)  # validates the quick-start values too
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    redis_proc = ensure_running(settings)
    print(startup_message(settings), flush=True)
    manager = Manager(Printer(sys.stdout))
    for name, cmd in PROCESSES.items():
        if name == "redis":
            continue  # started above by ensure_running, or external
        manager.add_process(name, _command(cmd), env=env)
    try:
        manager.loop()
    finally:
        if redis_proc is not None:
            redis_proc.terminate()  # redis-server flushes its AOF on SIGTERM
            redis_proc.wait(30)
    return manager.returncode or 0
