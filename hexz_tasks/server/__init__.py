"""The servers behind ``hexz serve``: HTTP (CPU player, status pages) and gRPC
(TrainingService for the original C++ workers, CPUPlayerService).

:func:`start_servers` starts them in background threads (tests use it in-process);
:func:`serve` starts them and blocks until SIGINT/SIGTERM.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis

from hexz_tasks.settings import Settings

if TYPE_CHECKING:
    from hexz_tasks.server.state import ServerState

log = logging.getLogger(__name__)

# Waitress threads beyond the CPU player's searches, so that status pages and health
# checks are answered while every search slot is busy.
SPARE_HTTP_THREADS = 4


@dataclass
class Servers:
    """Running servers; ports are the bound ones (useful when 0 = any free port was asked)."""

    state: ServerState
    http_port: int | None = None
    grpc_port: int | None = None
    _http: Any = None
    _grpc: Any = None
    _threads: list[threading.Thread] = field(default_factory=list)

    def stop(self, grace_s: float = 2.0) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace_s).wait(grace_s + 5)
        if self._http is not None:
            self._http.close()
        for t in self._threads:
            t.join(grace_s + 5)


def prepare_model(state: ServerState) -> None:
    """Makes sure the CPU player and FetchModel have a model.

    With HEXZ_LOCAL_MODEL_PATH, that file must load (fail at start-up, not on the first
    request); Redis is not needed for it, so the server starts (and reports unhealthy)
    while Redis is unreachable. Otherwise Redis must answer (else ConnectionError naming
    the masked URL), and when no model is published and the repository on this disk is
    empty, create checkpoint 0 there (as the original training server did). It is not
    published: the trainer publishes what it trains from, so a server on another
    machine never announces a checkpoint 0 that the trainer does not have.
    """
    settings = state.settings
    if settings.local_model_path is not None:
        if not settings.local_model_path.is_file():
            raise FileNotFoundError(f"HEXZ_LOCAL_MODEL_PATH {settings.local_model_path} not found")
        state.models.get()
        return
    try:
        published = state.redis.get(state.keys.latest_model)
    except redis.RedisError as e:
        from hexz_tasks.redis_server import masked_url, redis_url

        raise ConnectionError(
            f"cannot reach Redis at {masked_url(redis_url(settings))} ({e}); "
            "without it the servers have no model (set HEXZ_LOCAL_MODEL_PATH to serve the "
            "CPU player from a file)"
        ) from None
    if published is None and state.repo.latest() is None:
        try:
            state.repo.ensure_initial_checkpoint(settings)
            log.info("created checkpoint 0 of %s", settings.model_name)
        except FileExistsError:  # the trainer created it at the same moment
            pass


def start_servers(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int | None = 8080,
    grpc_port: int | None = 50051,
    client: redis.Redis | None = None,
) -> Servers:
    """Starts the HTTP and gRPC servers; a port of None leaves that one off, 0 binds any
    free port (see Servers.http_port / grpc_port)."""
    from hexz_tasks.server.state import ServerState

    state = ServerState.create(settings, client)
    prepare_model(state)
    servers = Servers(state)
    try:
        if grpc_port is not None:
            from hexz_tasks.server.grpc_service import make_grpc_server

            servers._grpc, servers.grpc_port = make_grpc_server(state, host, grpc_port)
            log.info("gRPC server on %s:%s", host, servers.grpc_port)
        if port is not None:
            from hexz_tasks.server.http import create_app, make_http_server

            threads = settings.max_concurrent_suggestions + SPARE_HTTP_THREADS
            http = make_http_server(create_app(state), host, port, threads)
            servers._http, servers.http_port = http, http.effective_port
            t = threading.Thread(target=_run_http, args=(http,), name="http", daemon=True)
            t.start()
            servers._threads.append(t)
            log.info("HTTP server on http://%s:%s/", host, servers.http_port)
    except BaseException:
        servers.stop()
        raise
    return servers


def _run_http(http: Any) -> None:
    try:
        http.run()
    except (OSError, ValueError):  # the sockets were closed by Servers.stop()
        pass


def serve(
    settings: Settings, host: str = "127.0.0.1", port: int = 8080, grpc_port: int = 50051
) -> int:
    """``hexz serve``: runs until SIGINT or SIGTERM; a port of 0 turns that server off."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not port and not grpc_port:
        raise ValueError("both --port and --grpc-port are 0: nothing to serve")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    servers = start_servers(settings, host=host, port=port or None, grpc_port=grpc_port or None)
    try:
        stop.wait()
    finally:
        log.info("shutting down")
        servers.stop()
    return 0
