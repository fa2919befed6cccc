"""The Redis the pipeline talks to, and the project-managed one started when none is configured.

With ``HEXZ_REDIS_URL`` unset, the project runs its own ``redis-server`` (from PATH) on
127.0.0.1:6390 with its files in ``<data_dir>/redis``: append-only file on (every write
reaches the kernel before Redis answers, fsync once a second), ``noeviction`` (a full Redis
refuses writes instead of silently dropping queues or examples), no RDB snapshots, and a
password generated on first use (``<data_dir>/redis/password``, mode 600), which every
local process reads from there.

Every client has connect and read timeouts and TCP keepalive, so a Redis that is down or
hung costs a caller seconds, not minutes: :func:`connect` for workers (long reads, retries
that ride out a restart), :func:`connect` with ``retries=0`` and a short ``timeout_s``
for request paths and health checks.
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

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from hexz_tasks.credentials import embedded_redis_password
from hexz_tasks.settings import Settings, masked_url

__all__ = ["connect", "ensure_running", "masked_url", "redis_url", "run_foreground"]

EMBEDDED_HOST = "127.0.0.1"
EMBEDDED_PORT = 6390

INSTALL_HINT = (
    "install it (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis; "
    "conda: conda install -c conda-forge redis) or point HEXZ_REDIS_URL at a running Redis"
)


def redis_url(settings: Settings) -> str:
    """The one URL for broker, result backend and example store."""
    if settings.redis_url:
        return settings.redis_url
    password = embedded_redis_password(settings.data_dir)
    return f"redis://:{password}@{EMBEDDED_HOST}:{EMBEDDED_PORT}/0"


def is_embedded(settings: Settings) -> bool:
    return settings.redis_url is None


# Read timeout of worker clients: far above any command the project sends (the longest are
# Lua scripts over a few thousand stream entries), far below "hung for ever".
WORKER_TIMEOUT_S = 30.0


def connect(
    settings: Settings, *, retries: int = 12, timeout_s: float = WORKER_TIMEOUT_S
) -> redis.Redis:
    """A client for the configured Redis; by default it rides out a restart of ~20 s.

    Connecting and each reply wait at most `timeout_s`; TCP keepalive finds dead peers.
    Retried commands are safe here: every write the project makes is idempotent
    (games are keyed by id, counters are only touched inside those writes).
    """
    return redis.Redis.from_url(
        redis_url(settings),
        retry=Retry(ExponentialWithJitterBackoff(base=0.2, cap=2.0), retries),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        socket_connect_timeout=min(5.0, timeout_s),
        socket_timeout=timeout_s,
        socket_keepalive=True,
        health_check_interval=15,
    )


_POOL_STATE = (
    "orig_socket_timeout",
    "orig_socket_connect_timeout",
    "maint_notifications_pool_handler",
    "himport_registry",
)


def with_timeout(client: redis.Redis, timeout_s: float) -> redis.Redis:
    """A client of the same Redis (same address, password, TLS) that fails within
    `timeout_s`, without retries: for health checks."""
    kwargs = dict(client.connection_pool.connection_kwargs)
    kwargs.update(socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    # Per-pool state redis-py adds to the kwargs: the new pool makes its own.
    for k in _POOL_STATE:
        kwargs.pop(k, None)
    pool = redis.ConnectionPool(connection_class=client.connection_pool.connection_class, **kwargs)
    return redis.Redis(connection_pool=pool, retry=Retry(ExponentialWithJitterBackoff(), 0))


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


def _embedded_client(settings: Settings) -> redis.Redis:
    return redis.Redis(
        host=EMBEDDED_HOST,
        port=EMBEDDED_PORT,
        password=embedded_redis_password(settings.data_dir),
        socket_connect_timeout=1,
        socket_timeout=5,
    )


def _responds(client: redis.Redis) -> bool:
    """True if our Redis answers; raises ConnectionError if another server holds the port."""
    try:
        return bool(client.ping())
    except (redis.AuthenticationError, redis.ResponseError) as e:
        raise ConnectionError(
            f"a Redis on {EMBEDDED_HOST}:{EMBEDDED_PORT} refuses the project's password "
            f"(is it another program's, or one started before passwords?): {e}"
        ) from None
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


def _embedded_command(settings: Settings) -> list[str]:
    """The embedded redis-server's command line. The password goes in through a config
    file (mode 600) that redis-server reads, so that no `ps` listing shows it."""
    data_dir = (settings.data_dir / "redis").resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    conf = data_dir / "auth.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f'requirepass "{embedded_redis_password(settings.data_dir)}"\n')
    binary = find_redis_server()
    return [binary, str(conf), *server_command(EMBEDDED_PORT, data_dir, binary=binary)[1:]]


def run_foreground(settings: Settings) -> int:
    """`hexz redis`: runs the project-managed redis-server in the foreground (for honcho)."""
    if not is_embedded(settings):
        return _wait_forever(
            f"HEXZ_REDIS_URL is set ({masked_url(redis_url(settings))}): "
            "no project-managed Redis to run"
        )
    if _responds(_embedded_client(settings)):
        return _wait_forever(f"a Redis already answers on {EMBEDDED_HOST}:{EMBEDDED_PORT}")
    cmd = _embedded_command(settings)
    os.execv(cmd[0], cmd)  # replaces this process: honcho's signals reach redis-server
    raise AssertionError("unreachable")


def ensure_running(settings: Settings, timeout_s: float = 30.0) -> subprocess.Popen | None:
    """Starts the project-managed Redis unless one already answers; waits until it does.

    Returns the process it started (the caller stops it), or None when Redis is external
    or was already running.
    """
    if not is_embedded(settings):
        return None
    client = _embedded_client(settings)
    if _responds(client):
        return None
    # Its own session: Ctrl-C in a terminal reaches the pipeline's processes, not Redis,
    # which the caller stops last, once they are gone.
    proc = subprocess.Popen(_embedded_command(settings), start_new_session=True)
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
