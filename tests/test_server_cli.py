"""`hexz serve` as a real subprocess: starts both servers, answers, stops on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import grpc
import requests
from conftest import Procs, RedisServer, free_port, tiny_env, wait_for
from test_server_support import midgame_board, suggest_request

from hexz_tasks import hexz_pb2, hexz_pb2_grpc


def test_hexz_serve_runs_both_servers_and_stops_on_sigterm(
    redis_server: RedisServer, procs: Procs, tmp_path: Path
) -> None:
    env = tiny_env(redis_server.url, tmp_path / "data", max_concurrent_suggestions=2)
    port, grpc_port = free_port(), free_port()
    proc = procs.start(
        "serve",
        [sys.executable, "-m", "hexz_tasks.cli", "serve", "--port", str(port),
         "--grpc-port", str(grpc_port)],
        env,
    )  # fmt: skip

    def healthy() -> bool:
        assert proc.alive(), proc.log()
        try:
            return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    wait_for(healthy, 120, "hexz serve to answer /healthz")
    board, player = midgame_board(seed=11, moves=6)
    r = requests.post(
        f"http://127.0.0.1:{port}/hexz/cpu/suggest",
        data=suggest_request(board, player, move_number=6, iterations=20).SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert hexz_pb2.SuggestMoveResponse.FromString(r.content).move.player_num == player + 1
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
        resp = hexz_pb2_grpc.TrainingServiceStub(ch).FetchModel(
            hexz_pb2.FetchModelRequest(), timeout=30
        )
    assert resp.model_key.checkpoint == 0 and resp.model_bytes
    # Checkpoint 0 was created in the configured repository (the trainer publishes it).
    assert (tmp_path / "data" / "models" / "flagz" / "flagz" / "checkpoints" / "0").is_dir()

    proc.popen.send_signal(signal.SIGTERM)
    assert proc.popen.wait(30) == 0, proc.log()


def test_hexz_serve_with_nothing_to_serve_fails_clearly(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    env = tiny_env(redis_server.url, tmp_path / "data")
    out = subprocess.run(
        [sys.executable, "-m", "hexz_tasks.cli", "serve", "--port", "0", "--grpc-port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "nothing to serve" in out.stderr


def test_hexz_serve_with_a_missing_local_model_fails_clearly(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    env = tiny_env(redis_server.url, tmp_path / "data", local_model_path=tmp_path / "nope.pt")
    out = subprocess.run(
        [sys.executable, "-m", "hexz_tasks.cli", "serve", "--port", str(free_port()),
         "--grpc-port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert out.returncode == 1
    assert "nope.pt" in out.stderr and "not found" in out.stderr
