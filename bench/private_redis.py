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


def wait_for_redis(port: int, timeout: float = 30.0) -> None:
    probe = redis.Redis(port=port, socket_connect_timeout=0.5)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if probe.ping():
                return
        except (redis.ConnectionError, redis.BusyLoadingError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"redis-server on port {port} did not start")
        time.sleep(0.2)


@contextmanager
def private_redis(data_dir: Path) -> Iterator[str]:
    """Runs a redis-server with its files in `data_dir`; yields its URL."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        server_command(port, data_dir), stdout=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_for_redis(port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(20)
