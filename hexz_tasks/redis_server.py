"""The Redis the pipeline talks to, and the project-managed one started when none is configured.

With ``HEXZ_REDIS_URL`` unset, the project runs its own ``redis-server`` (from PATH) on
127.0.0.1:6390 with its files in ``<data_dir>/redis``: append-only file on (every write
reaches the kernel before Redis answers, fsync once a second), ``noeviction`` (a full Redis
refuses writes instead of silently dropping queues or examples), no RDB snapshots.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from hexz_tasks.settings import Settings

EMBEDDED_HOST = "127.0.0.1"
EMBEDDED_PORT = 6390

INSTALL_HINT = (
    "install it (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis; "
    "conda: conda install -c conda-forge redis) or point HEXZ_REDIS_URL at a running Redis"
)


def redis_url(settings: Settings) -> str:
    """The one URL for broker, result backend and example store."""
    return settings.redis_url or f"redis://{EMBEDDED_HOST}:{EMBEDDED_PORT}/0"


def is_embedded(settings: Settings) -> bool:
    return settings.redis_url is None


def masked_url(url: str) -> str:
    """The URL with any password replaced by ***, for logs and status pages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def connect(settings: Settings, *, retries: int = 12) -> redis.Redis:
    """A client for the configured Redis; by default it rides out a restart of ~20 s.

    Retried commands are safe here: every write the project makes is idempotent
    (games are keyed by id, counters are only touched inside those writes).
    """
    return redis.Redis.from_url(
        redis_url(settings),
        retry=Retry(ExponentialWithJitterBackoff(base=0.2, cap=2.0), retries),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        socket_connect_timeout=5,
        health_check_interval=15,
    )


def find_redis_server() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise FileNotFoundError(f"no redis-server binary on PATH; {INSTALL_HINT}")
    return path


def server_command(
    port: int, data_dir: Path, *, password: str | None = None, binary: str | None = None
) -> list[str]:
    """The redis-server command line of the project-managed Redis (also used by the tests)."""
    cmd = [
        binary or find_redis_server(),
        "--port", str(port),
        "--bind", EMBEDDED_HOST,
        "--dir", str(data_dir),
        "--daemonize", "no",
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--save", "",
        "--maxmemory-policy", "noeviction",
        "--loglevel", "warning",
    ]  # fmt: skip
    if password:
        cmd += ["--requirepass", password]
    return cmd


def _embedded_client() -> redis.Redis:
    return redis.Redis(host=EMBEDDED_HOST, port=EMBEDDED_PORT, socket_connect_timeout=1)


def _responds(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def _wait_forever(message: str) -> int:
    """Keeps a Procfile entry alive (honcho stops everything when one process exits)."""
    print(message, flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    return 0


def run_foreground(settings: Settings) -> int:
    """`hexz redis`: runs the project-managed redis-server in the foreground (for honcho)."""
    if not is_embedded(settings):
        return _wait_forever(
            f"HEXZ_REDIS_URL is set ({masked_url(redis_url(settings))}): "
            "no project-managed Redis to run"
        )
    if _responds(_embedded_client()):
        return _wait_forever(f"a Redis already answers on {EMBEDDED_HOST}:{EMBEDDED_PORT}")
    data_dir = settings.data_dir / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    cmd = server_command(EMBEDDED_PORT, data_dir.resolve())
    os.execv(cmd[0], cmd)  # replaces this process: honcho's signals reach redis-server
    raise AssertionError("unreachable")


def ensure_running(settings: Settings, timeout_s: float = 30.0) -> subprocess.Popen | None:
    """Starts the project-managed Redis unless one already answers; waits until it does.

    Returns the process it started (the caller stops it), or None when Redis is external
    or was already running.
    """
    if not is_embedded(settings):
        return None
    client = _embedded_client()
    if _responds(client):
        return None
    data_dir = settings.data_dir / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    # Its own session: Ctrl-C in a terminal reaches the pipeline's processes, not Redis,
    # which the caller stops last, once they are gone.
    proc = subprocess.Popen(
        server_command(EMBEDDED_PORT, data_dir.resolve()), start_new_session=True
    )
    deadline = time.monotonic() + timeout_s
    while not _responds(client):
        if proc.poll() is not None:
            raise ConnectionError(
                f"redis-server exited with code {proc.returncode} "
                f"(is port {EMBEDDED_PORT} taken by another program?)"
            )
        if time.monotonic() > deadline:
            proc.terminate()
            raise ConnectionError(f"redis-server did not answer within {timeout_s:.0f} s")
        time.sleep(0.1)
    print(f"started redis-server on {EMBEDDED_HOST}:{EMBEDDED_PORT}", file=sys.stderr)
    return proc
