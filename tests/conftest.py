"""Shared fixtures: a private redis-server per test, and Celery worker subprocesses.

Every test that needs Redis gets its own throwaway ``redis-server`` (the project's own
configuration: AOF, noeviction) on a free port in a temp dir, so tests never touch the
machine's Redis and can kill or restart theirs. Worker subprocesses run in their own
process group and are always stopped at teardown; every wait is bounded.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import settings as hypothesis_settings

from hexz_tasks.keys import Keys
from hexz_tasks.redis_server import server_command
from hexz_tasks.store import SETTLE_MS

TEST_PREFIX = "hexztest"
REPO_ROOT = Path(__file__).resolve().parent.parent
# System tools the suite uses. Without redis-server nothing of the store, the pipeline or
# the servers can be tested: the run stops at once with one message. Without chromium the
# page tests skip, with one reason.
REDIS_SERVER = shutil.which("redis-server")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def pytest_report_header(config: pytest.Config) -> list[str]:
    missing = "MISSING (Debian: apt-get install {})"
    return [
        f"redis-server: {REDIS_SERVER or missing.format('redis-server')}",
        f"chromium: {CHROMIUM or missing.format('chromium') + '; the page tests skip'}",
    ]


def pytest_configure(config: pytest.Config) -> None:
    if REDIS_SERVER is None and not config.option.collectonly:
        raise pytest.UsageError(
            "redis-server is not on PATH: the tests start their own throwaway redis-servers "
            "(Debian: apt-get install redis-server; .ci/run installs it)"
        )


# `pytest --hypothesis-profile=thorough tests/test_fuzz_edges.py`: the decoders' long fuzz
# runs (10,000 examples per test); the default run keeps Hypothesis's 100.
hypothesis_settings.register_profile("thorough", max_examples=10_000, deadline=None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Polls `predicate` until it returns a truthy value; fails the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def wait_for_examples_to_settle() -> None:
    """Sleeps until examples just added are old enough for the drain (ExampleStore settle_ms)."""
    time.sleep(SETTLE_MS / 1000 + 0.2)


class RedisServer:
    """A throwaway redis-server with the project's configuration."""

    def __init__(self, data_dir: Path, password: str | None = None) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.password = password
        self.proc: subprocess.Popen | None = None
        data_dir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password, socket_timeout=10)

    def start(self) -> None:
        cmd = server_command(self.port, self.data_dir, password=self.password)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        probe = redis.Redis(port=self.port, password=self.password, socket_connect_timeout=0.5)

        def up() -> bool:
            try:
                return bool(probe.ping())
            except redis.BusyLoadingError:
                return False
            except redis.ConnectionError:
                assert self.proc is not None and self.proc.poll() is None, "redis-server died"
                return False

        wait_for(up, 20, f"redis-server on port {self.port}")

    def kill(self) -> None:
        """SIGKILL: no shutdown save; only what the AOF already holds survives."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> redis.Redis:
    """A client of this test's own redis-server (bytes responses)."""
    return redis_server.client()


@pytest.fixture
def test_keys() -> Keys:
    return Keys(TEST_PREFIX)


def tiny_env(redis_url: str, data_dir: Path, **overrides: Any) -> dict[str, str]:
    """Environment for hexz subprocesses: tiny model, few runs per move, short limits."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HEXZ_", "FLOWER_"))}
    hexz = {
        "REDIS_URL": redis_url,
        "DATA_DIR": str(data_dir),
        "KEY_PREFIX": TEST_PREFIX,
        "MODEL_BLOCKS": 1,
        "MODEL_FILTERS": 8,
        "RUNS_PER_MOVE": 6,
        "MAX_MOVES_PER_GAME": 60,
        "GAMES_IN_FLIGHT": 2,
        "SELFPLAY_SLICE_S": 5,
        "BATCH_SIZE": 64,
        "NUM_EPOCHS": 1,
        "TRAINING_TRIGGER_THRESHOLD": 100,
        "TRAINING_CHECK_INTERVAL_S": 1,
        "TASK_TIME_LIMIT_S": 60,
        "TRAINING_TIME_LIMIT_S": 60,
        "VISIBILITY_TIMEOUT_S": 70,
        "INFERENCE_THREADS": 1,
    }
    hexz.update({k.upper(): v for k, v in overrides.items()})
    env.update({f"HEXZ_{k}": str(v) for k, v in hexz.items()})
    env["PYTHONUNBUFFERED"] = "1"
    # One torch thread per process: the test machine's few cores are shared by all.
    env["OMP_NUM_THREADS"] = "1"
    return env


class Proc:
    """A subprocess in its own process group, its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "ab")  # closed in stop()
        self.popen = subprocess.Popen(
            args,
            env=env,
            cwd=REPO_ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 15.0) -> None:
        """Warm shutdown (SIGTERM to the group), then SIGKILL after `timeout` s."""
        if self.alive():
            self.kill_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill_group(signal.SIGKILL)  # also any orphaned pool children
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()


class Procs:
    """Starts hexz / celery subprocesses for one test and stops them all at teardown."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[Proc] = []

    def start(self, name: str, args: list[str], env: dict[str, str]) -> Proc:
        proc = Proc(name, args, env, self.log_dir / f"{name}-{len(self.started)}.log")
        self.started.append(proc)
        return proc

    def celery(self, name: str, args: list[str], env: dict[str, str]) -> Proc:
        return self.start(name, [sys.executable, "-m", "celery", "-A", "hexz_tasks", *args], env)

    def worker(self, name: str, queue: str, env: dict[str, str], concurrency: int = 1) -> Proc:
        return self.celery(
            name,
            ["worker", "-Q", queue, "-n", f"{name}@%h", "-c", str(concurrency), "-l", "INFO"],
            env,
        )

    def dump_logs(self) -> str:
        return "\n".join(
            f"===== {p.name} ({p.log_path}) =====\n{p.log()[-6000:]}" for p in self.started
        )

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop()


@pytest.fixture
def procs(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Procs]:
    manager = Procs(tmp_path)
    yield manager
    manager.stop_all()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(manager.dump_logs())


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    """Records each phase's report on the test item (procs prints logs on failure)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
