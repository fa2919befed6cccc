"""Input that would cost the servers far more than it cost the sender (issue 16's probes,
as regression tests against real servers on loopback; every wait bounded).

Each test sends what an attacker on the loopback interface would and checks that the
server answers quickly with a clear refusal, stores nothing and keeps serving others.
"""

from __future__ import annotations

import gzip
import io
import json
import socket
import struct
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import torch
from conftest import REPO_ROOT, wait_for
from test_server_support import (
    Running,
    add,
    game_examples,
    midgame_board,
    run_servers,
    suggest_request,
)

from hexz_tasks import hexz_pb2, hexz_pb2_grpc
from hexz_tasks.archive import read_request
from hexz_tasks.examples import decode_array, npy_bytes
from hexz_tasks.server.http import CHANNEL_TIMEOUT_S, CLEANUP_INTERVAL_S

Status = hexz_pb2.AddTrainingExamplesResponse.Status
PYTORCH = hexz_pb2.TrainingExample.PYTORCH
NUMPY = hexz_pb2.TrainingExample.NUMPY


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    yield from run_servers(tmp_path_factory, max_think_time_ms=5_000, max_suggest_iterations=10**7)


def torch_zip_bomb(numel: int) -> bytes:
    """torch.save bytes of a float32 tensor of `numel` zeros whose records are deflated
    (~1000x smaller than the tensor); built without ever holding the tensor."""
    small = 70_001  # a size whose 4-byte pickle encoding is easy to find and replace
    buf = io.BytesIO()
    torch.save(torch.zeros(small), buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                old, new = struct.pack("<i", small), struct.pack("<i", numel)
                assert data.count(old) == 2  # the storage's size and the tensor's shape
                z.writestr(info.filename, data.replace(old, new))
            elif info.filename.endswith("/data/0"):
                with z.open(info.filename, "w", force_zip64=True) as f:
                    zeros = bytes(1 << 20)
                    for _ in range(numel * 4 >> 20):
                        f.write(zeros)
            else:
                z.writestr(info.filename, data)
    return out.getvalue()


def test_deflated_pytorch_zip_bomb_is_refused_before_torch_load(tmp_path: Path) -> None:
    """0.3 MB that torch.load would inflate to 256 MB: refused, in a process whose
    peak memory does not grow."""
    bomb = torch_zip_bomb(1 << 26)
    assert len(bomb) < 1 << 20
    path = tmp_path / "bomb"
    path.write_bytes(bomb)
    code = (
        "import json, resource, sys, torch\n"
        "from hexz_tasks import hexz_pb2\n"
        "from hexz_tasks.examples import decode_array\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "before = peak()\n"
        "try:\n"
        "    a = decode_array(data, hexz_pb2.TrainingExample.PYTORCH, 'board')\n"
        "    outcome = f'decoded {a.shape}'\n"
        "except ValueError as e:\n"
        "    outcome = f'refused: {e}'\n"
        "print(json.dumps({'outcome': outcome, 'growth_mb': (peak() - before) / 1024}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["outcome"].startswith("refused"), result
    assert "compressed" in result["outcome"]
    assert result["growth_mb"] < 32, result


def test_npy_headers_must_describe_the_bytes_that_follow() -> None:
    good = npy_bytes(np.zeros((11, 11, 10), dtype=np.float32))
    assert decode_array(good, NUMPY, "board").shape == (11, 11, 10)
    # A header claiming 10**12 elements over a few bytes: refused without allocating.
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)}
    )
    with pytest.raises(ValueError, match="elements"):
        decode_array(header.getvalue() + b"\0" * 16, NUMPY, "board")
    with pytest.raises(ValueError, match="data bytes"):
        decode_array(good[:-4], NUMPY, "board")
    with pytest.raises(ValueError, match="data bytes"):
        decode_array(good + b"\0" * 4, NUMPY, "board")


def test_zip_bomb_in_a_request_is_rejected_and_nothing_stored(running: Running) -> None:
    examples = game_examples(seed=60, encoding=PYTORCH)
    examples[0].board = torch_zip_bomb(1 << 24)
    before = running.counters()
    t0 = time.monotonic()
    resp = add(running, examples, execution_id="bomb")
    assert time.monotonic() - t0 < 5
    assert resp.status == Status.REJECTED_OTHER
    assert "examples[0].board" in resp.error_message and "compressed" in resp.error_message
    assert running.counters() == before


def test_gzip_bomb_beyond_the_receive_limit_is_refused(running: Running) -> None:
    """16 MB of zeros, gzip-compressed to ~16 kB: refused after decompression reaches the
    limit, with RESOURCE_EXHAUSTED; the server goes on serving."""
    ex = game_examples(seed=61)[0]
    ex.board = bytes(16 << 20)
    req = hexz_pb2.AddTrainingExamplesRequest(examples=[ex])
    with running.channel() as ch, pytest.raises(grpc.RpcError) as err:
        running.training_stub(ch).AddTrainingExamples(
            req, timeout=30, compression=grpc.Compression.Gzip
        )
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert add(running, game_examples(seed=62)).status == Status.ACCEPTED


def test_too_many_examples_in_one_request_are_refused(running: Running) -> None:
    one = game_examples(seed=63)[0]
    before = running.counters()
    resp = add(running, [one] * 1001, execution_id="many")
    assert resp.status == Status.REJECTED_OTHER
    assert "1001 examples" in resp.error_message
    assert running.counters() == before


def test_oversized_suggest_request_is_refused_before_it_is_copied(running: Running) -> None:
    board, player = midgame_board(seed=64, moves=4)
    req = suggest_request(board, player, move_number=4, iterations=10)
    req.game_engine_state.flagz.normal_moves.extend(range(500_000))  # ~1.5 MB
    assert req.ByteSize() > 1 << 20
    with running.channel() as ch, pytest.raises(grpc.RpcError) as err:
        hexz_pb2_grpc.CPUPlayerServiceStub(ch).SuggestMove(req, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "bytes" in err.value.details()


def test_idle_control_event_streams_do_not_lock_out_other_calls(running: Running) -> None:
    """64 idle ControlEvents streams (the old thread count): the allowed number
    subscribe, the rest are refused at once, and a normal call still gets through."""
    limit = running.settings.grpc_max_event_streams
    channel = running.channel()
    stub = running.training_stub(channel)
    streams = [stub.ControlEvents(hexz_pb2.ControlRequest(), timeout=60) for _ in range(64)]
    try:

        def subscribed() -> bool:
            channel_name = running.keys.events_channel
            n = dict(running.redis.pubsub_numsub(channel_name)).get(channel_name.encode(), 0)
            return n >= limit

        wait_for(subscribed, 20, f"{limit} ControlEvents streams to subscribe")
        wait_for(lambda: sum(s.done() for s in streams) >= 64 - limit, 20, "the refusals to arrive")
        refused = 0
        for s in streams:
            if s.done():
                assert s.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                refused += 1
        assert refused == 64 - limit
        t0 = time.monotonic()
        with running.channel() as ch:
            resp = running.training_stub(ch).FetchModel(hexz_pb2.FetchModelRequest(), timeout=10)
        assert resp.model_bytes and time.monotonic() - t0 < 5
    finally:
        for s in streams:
            s.cancel()
        channel.close()


def test_control_event_streams_end_at_their_maximum_age(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    servers = run_servers(tmp_path_factory, grpc_event_stream_max_age_s=1.0)
    running = next(servers)
    try:
        with running.channel() as ch:
            stream = running.training_stub(ch).ControlEvents(hexz_pb2.ControlRequest(), timeout=30)
            t0 = time.monotonic()
            assert list(stream) == []  # ends cleanly; the worker reconnects
            assert stream.code() == grpc.StatusCode.OK
            assert time.monotonic() - t0 < 5
    finally:
        servers.close()


def _raw_http(running: Running, request: bytes, read_timeout: float) -> bytes:
    with socket.create_connection(("127.0.0.1", running.servers.http_port), timeout=5) as s:
        s.sendall(request)
        s.settimeout(read_timeout)
        try:
            return s.recv(4096)
        except TimeoutError:
            return b""


def test_an_over_long_body_is_refused_before_it_is_read(running: Running) -> None:
    """Content-Length 1 GB and no body: 413 at once (waitress used to wait for and spool
    up to 1 GB per connection first)."""
    head = (
        b"POST /hexz/cpu/suggest HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/x-protobuf\r\nContent-Length: 1000000000\r\n\r\n"
    )
    t0 = time.monotonic()
    reply = _raw_http(running, head, read_timeout=5)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert time.monotonic() - t0 < 3


def test_slow_loris_connections_are_closed_and_do_not_block_others(running: Running) -> None:
    """20 connections that send half a request and go silent: /healthz is answered
    meanwhile, and the server closes them after its channel timeout."""
    conns = []
    try:
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", running.servers.http_port), timeout=5)
            s.sendall(b"POST /hexz/cpu/suggest HTTP/1.1\r\nHost: x\r\nContent-Len")
            conns.append(s)
        t0 = time.monotonic()
        assert requests.get(f"{running.http}/healthz", timeout=5).status_code == 200
        assert time.monotonic() - t0 < 1
        limit = CHANNEL_TIMEOUT_S + CLEANUP_INTERVAL_S + 3
        for s in conns:
            s.settimeout(max(0.1, limit - (time.monotonic() - t0)))
            try:
                assert s.recv(4096) == b""  # closed by the server
            except TimeoutError:
                pytest.fail(f"a silent connection was still open after {limit} s")
            except ConnectionResetError:
                pass
    finally:
        for s in conns:
            s.close()


def test_a_suggest_that_finds_every_slot_busy_is_told_so_at_once(running: Running) -> None:
    """Two 3-second searches hold both slots: a third request gets 503 within a second
    instead of holding an HTTP thread for its whole think time."""
    board, player = midgame_board(seed=65, moves=6)
    slow = suggest_request(board, player, move_number=6, think_ms=3000, iterations=0)
    body = slow.SerializeToString()
    headers = {"Content-Type": "application/x-protobuf"}
    url = f"{running.http}/hexz/cpu/suggest"
    codes: list[int] = []

    def search() -> None:
        codes.append(requests.post(url, data=body, headers=headers, timeout=30).status_code)

    threads = [threading.Thread(target=search) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: running.servers.state.player.stats()["active"] == 2, 10, "two searches")
        t0 = time.monotonic()
        r = requests.post(url, data=body, headers=headers, timeout=30)
        assert r.status_code == 503, r.text
        assert "busy" in r.text
        assert time.monotonic() - t0 < 1
    finally:
        for t in threads:
            t.join(30)
    assert codes == [200, 200]


def test_import_refuses_an_archive_that_decompresses_beyond_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "bomb.gz"
    path.write_bytes(gzip.compress(bytes(4 << 20)))
    with pytest.raises(ValueError, match="decompresses to more than 1048576 bytes") as err:
        read_request(path, max_bytes=1 << 20)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("method", "streaming"),
    [
        ("/hexzpb.TrainingService/AddTrainingExamples", False),
        ("/hexzpb.TrainingService/FetchModel", False),
        ("/hexzpb.TrainingService/ControlEvents", True),
        ("/hexzpb.CPUPlayerService/SuggestMove", False),
    ],
)
def test_undecodable_grpc_bytes_are_invalid_argument(
    running: Running, method: str, streaming: bool
) -> None:
    with running.channel() as ch:
        call = (ch.unary_stream if streaming else ch.unary_unary)(method)
        with pytest.raises(grpc.RpcError) as err:
            result = call(b"\xff\xff\xff\xff", timeout=10)
            if streaming:
                list(result)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "do not parse" in err.value.details()
        # The server is unharmed.
        fetched = running.training_stub(ch).FetchModel(hexz_pb2.FetchModelRequest(), timeout=10)
        assert fetched.model_bytes
