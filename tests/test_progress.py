"""Long commands show a progress bar on a terminal and stay quiet in logs.

Each command runs twice as a subprocess: once with stderr on a pseudo-terminal (a bar:
count, rate, time left) and once with stderr piped, as in a log file (no bar, no
carriage returns; the result lines only).
"""

from __future__ import annotations

import fcntl
import gzip
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import pytest
import redis
from conftest import REPO_ROOT, RedisServer, free_port
from synthetic import game_examples

from hexz_tasks import hexz_pb2
from hexz_tasks.keys import Keys
from hexz_tasks.model import ModelParams, make_model, to_scriptmodule_bytes
from hexz_tasks.store import ExampleStore

HEXZ = [sys.executable, "-m", "hexz_tasks.cli"]


def _env(**hexz: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEXZ_")}
    env.update({f"HEXZ_{k.upper()}": str(v) for k, v in hexz.items()})
    env["OMP_NUM_THREADS"] = "1"
    return env


def in_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Runs `args` with stderr on a 120x40 pseudo-terminal; (status, stdout, terminal)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(
        args, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=slave, text=True
    )
    os.close(slave)
    seen: list[bytes] = []

    def drain() -> None:  # the terminal's buffer is small: read while the command runs
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the command closed the terminal
                return
            if not data:
                return
            seen.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        out, _ = proc.communicate(timeout=180)
    finally:
        proc.kill()
        reader.join(10)
        os.close(master)
    return proc.returncode, out, b"".join(seen).decode(errors="replace")


def in_log(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180)


def assert_bar(terminal: str, desc: str, done: str, unit: str) -> None:
    assert f"{desc}: 100%" in terminal, terminal
    assert done in terminal, terminal
    assert f"{unit}/s]" in terminal or f"s/{unit}]" in terminal, terminal  # the rate
    assert "\r" in terminal  # redrawn in place


def assert_quiet(stderr: str) -> None:
    assert "\r" not in stderr and "%|" not in stderr, stderr


def test_arena_shows_games_on_a_terminal_only() -> None:
    # A Redis nobody listens on: the arena plays without storing.
    env = _env(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    args = [*HEXZ, "arena", "random", "random", "--games", "6", "--runs", "2"]
    status, out, terminal = in_terminal(args, env)
    assert status == 0, terminal
    assert_bar(terminal, "random vs random", "6/6", "game")
    assert "random vs random: score" in out
    run = in_log(args, env)
    assert run.returncode == 0, run.stderr
    assert "random vs random: score" in run.stdout
    assert_quiet(run.stderr)
    assert "Redis not reachable" in run.stderr  # the warnings still reach the log


def test_selfplay_shows_games_on_a_terminal_only(tmp_path: Path) -> None:
    model = tmp_path / "tiny.pt"
    model.write_bytes(to_scriptmodule_bytes(make_model(ModelParams(blocks=1, filters=8))))
    env = _env(runs_per_move=4, max_moves_per_game=30, games_in_flight=3)
    args = [*HEXZ, "selfplay", "--games", "3", "--model", str(model), "--seed", "1"]
    status, _, terminal = in_terminal([*args, "--out", str(tmp_path / "a.gz")], env)
    assert status == 0, terminal
    assert_bar(terminal, "self-play", "3/3", "game")
    assert "evals/s" in terminal and "examples" in terminal
    run = in_log([*args, "--out", str(tmp_path / "b.gz")], env)
    assert run.returncode == 0, run.stderr
    assert_quiet(run.stderr)
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("selfplay: 3 games, ")
    written = hexz_pb2.AddTrainingExamplesRequest.FromString(
        gzip.decompress((tmp_path / "b.gz").read_bytes())
    )
    assert f"{len(written.examples)} examples" in run.stderr


def _archives(tmp_path: Path, n: int) -> list[str]:
    paths = []
    for i, examples in enumerate(game_examples(n, seed=5, runs=30, max_moves=30)):
        req = hexz_pb2.AddTrainingExamplesRequest(examples=examples)
        path = tmp_path / f"in-{i}.gz"
        path.write_bytes(gzip.compress(req.SerializeToString()))
        paths.append(str(path))
    return paths


def test_import_and_export_show_progress_on_a_terminal_only(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    env = _env(redis_url=redis_server.url, key_prefix="hexzprogress", data_dir=tmp_path / "d")
    paths = _archives(tmp_path, 3)
    status, out, terminal = in_terminal([*HEXZ, "import", *paths[:2]], env)
    assert status == 0, terminal
    assert_bar(terminal, "import", "2/2", "file")
    run = in_log([*HEXZ, "import", paths[2]], env)
    assert run.returncode == 0 and "from 1 of 1 files" in run.stdout, run.stderr
    assert_quiet(run.stderr)

    total = ExampleStore(redis_client, Keys("hexzprogress")).total_examples()
    status, out, terminal = in_terminal([*HEXZ, "export", "--out", str(tmp_path / "x")], env)
    assert status == 0, terminal
    assert f"exported {total} examples" in out
    assert_bar(terminal, "export", f"{total}/{total}", "example")
    run = in_log([*HEXZ, "export", "--out", str(tmp_path / "y")], env)
    assert run.returncode == 0 and f"exported {total} examples" in run.stdout, run.stderr
    assert_quiet(run.stderr)


@pytest.mark.parametrize("terminal", [True, False])
def test_timed_phases_of_the_benchmarks(terminal: bool) -> None:
    code = (
        "import time; from hexz_tasks import progress\n"
        "with progress.timed('phase', 1.2):\n"
        "    time.sleep(1.3)\n"
        "print('done')\n"
    )
    args = [sys.executable, "-c", code]
    if terminal:
        status, out, shown = in_terminal(args, _env())
        assert status == 0 and out == "done\n", shown
        assert "phase: 100%" in shown and "1/1 s" in shown and "left]" in shown, shown
    else:
        run = in_log(args, _env())
        assert run.returncode == 0 and run.stdout == "done\n" and run.stderr == "", run.stderr
