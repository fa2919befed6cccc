"""A throwaway redis-server for one benchmark run: the project's configuration on a free
port, its files in a folder of the caller's; stopped when the run ends."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from hexz_tasks.redis_server import server_command


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisProcess:
    """A redis-server on a free port with its files (AOF) in `data_dir`; it can be killed
    and started again on the same port and files."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 600.0) -> float:
        """Starts it; returns the seconds until it answered PING (its AOF loaded)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        self.proc = subprocess.Popen(
            server_command(self.port, self.data_dir),
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        probe = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        while True:
            try:
                if probe.ping():
                    return time.monotonic() - started
            except (redis.ConnectionError, redis.BusyLoadingError):
                pass
            if self.proc.poll() is not None or time.monotonic() - started > timeout:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: only what its AOF holds survives."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(20)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


@contextmanager
def private_redis(data_dir: Path) -> Iterator[str]:
    """Runs a redis-server with its files in `data_dir`; yields its URL."""
    server = RedisProcess(data_dir)
    server.start(timeout=30)
    try:
        yield server.url
    finally:
        server.stop()
