"""A Redis that refuses connections or accepts them and never answers: the servers stay
responsive (/healthz within a second, suggests without Redis once a model is loaded),
and `hexz serve` starts unhealthy or exits with one clear line. Real servers, a real
redis-server (stopped with SIGSTOP to hang it) and real fake-server sockets."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from conftest import Procs, RedisServer, free_port, tiny_env, wait_for
from test_server_support import midgame_board, suggest_request, tiny_settings

from hexz_tasks.model import ModelParams, make_model, to_scriptmodule_bytes
from hexz_tasks.server import start_servers
from hexz_tasks.status import gather_status

PROTOBUF = {"Content-Type": "application/x-protobuf"}


@contextmanager
def hung_redis() -> Iterator[int]:
    """A port where connections are accepted and never answered; yields the port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        t.join(5)
        listener.close()
        for s in held:
            s.close()


@contextmanager
def refusing_redis() -> Iterator[int]:
    yield free_port()  # nothing listens there


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    path.write_bytes(to_scriptmodule_bytes(make_model(ModelParams("conv2d", 1, 8))))
    return path


def _suggest(port: int) -> requests.Response:
    board, player = midgame_board(seed=90, moves=4)
    body = suggest_request(board, player, move_number=4, iterations=10).SerializeToString()
    return requests.post(
        f"http://127.0.0.1:{port}/hexz/cpu/suggest", data=body, headers=PROTOBUF, timeout=30
    )


@pytest.mark.parametrize("fake", [refusing_redis, hung_redis], ids=["refused", "hung"])
def test_healthz_answers_within_a_second_and_suggests_work(
    tmp_path: Path, model_file: Path, fake: object
) -> None:
    with fake() as port:  # type: ignore[operator]
        url = f"redis://:secret@127.0.0.1:{port}/0"
        settings = tiny_settings(tmp_path / "data", url, local_model_path=model_file)
        servers = start_servers(settings, port=0, grpc_port=None)
        try:
            base = f"http://127.0.0.1:{servers.http_port}"
            for _ in range(3):
                t0 = time.monotonic()
                r = requests.get(f"{base}/healthz", timeout=10)
                assert time.monotonic() - t0 < 1.0
                assert r.status_code == 503 and r.json()["redis"] is False
            assert _suggest(servers.http_port).status_code == 200
            t0 = time.monotonic()
            r = requests.get(f"{base}/status.json", timeout=30)
            assert r.status_code == 503 and "Redis is unavailable" in r.text
            assert time.monotonic() - t0 < 3
            assert "secret" not in r.text
        finally:
            servers.stop()


def test_status_report_gives_up_on_a_hung_redis_quickly(tmp_path: Path) -> None:
    with hung_redis() as port:
        settings = tiny_settings(tmp_path / "data", f"redis://127.0.0.1:{port}/0")
        t0 = time.monotonic()
        status = gather_status(settings, inspect_timeout=0)
        assert "cannot reach Redis" in status["error"]
        assert time.monotonic() - t0 < 4


def test_a_loaded_model_keeps_playing_while_redis_hangs(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The CPU player's model came from Redis; Redis then hangs (SIGSTOP): suggests are
    still answered, /healthz says unhealthy within a second, and all recovers after."""
    settings = tiny_settings(tmp_path / "data", redis_server.url)
    servers = start_servers(settings, port=0, grpc_port=None)
    assert redis_server.proc is not None
    try:
        assert _suggest(servers.http_port).status_code == 200  # loads the model
        redis_server.proc.send_signal(signal.SIGSTOP)
        try:
            for _ in range(3):
                t0 = time.monotonic()
                assert _suggest(servers.http_port).status_code == 200
                assert time.monotonic() - t0 < 5
            t0 = time.monotonic()
            health = requests.get(f"http://127.0.0.1:{servers.http_port}/healthz", timeout=10)
            assert health.status_code == 503 and time.monotonic() - t0 < 1.0
        finally:
            redis_server.proc.send_signal(signal.SIGCONT)
        wait_for(
            lambda: (
                requests.get(
                    f"http://127.0.0.1:{servers.http_port}/healthz", timeout=10
                ).status_code
                == 200
            ),
            10,
            "/healthz to recover",
        )
    finally:
        servers.stop()


def test_hexz_serve_without_redis_and_without_a_model_exits_with_one_line(
    tmp_path: Path,
) -> None:
    port = free_port()
    env = tiny_env(f"redis://:hunter2@127.0.0.1:{port}/0", tmp_path / "data")
    out = subprocess.run(
        [sys.executable, "-m", "hexz_tasks.cli", "serve", "--port", str(free_port()),
         "--grpc-port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert out.returncode == 1
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"hexz serve: cannot reach Redis at redis://:***@127.0.0.1:{port}/0")
    assert "hunter2" not in out.stderr + out.stdout


def test_hexz_serve_without_redis_but_with_a_model_starts_unhealthy(
    procs: Procs, tmp_path: Path, model_file: Path
) -> None:
    env = tiny_env(
        f"redis://127.0.0.1:{free_port()}/0", tmp_path / "data", local_model_path=model_file
    )
    port = free_port()
    proc = procs.start(
        "serve",
        [sys.executable, "-m", "hexz_tasks.cli", "serve", "--port", str(port), "--grpc-port", "0"],
        env,
    )

    def status() -> int | None:
        assert proc.alive(), proc.log()
        try:
            return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code
        except requests.ConnectionError:
            return None

    assert wait_for(status, 120, "hexz serve to answer") == 503
    assert _suggest(port).status_code == 200
    proc.popen.send_signal(signal.SIGTERM)
    assert proc.popen.wait(30) == 0, proc.log()
