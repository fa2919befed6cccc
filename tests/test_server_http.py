"""The HTTP server (CPU player, JSON status) and CPUPlayerService, against real servers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import requests
from conftest import REPO_ROOT
from google.protobuf.message import DecodeError
from test_server_support import (
    Running,
    add,
    finished_board,
    game_examples,
    midgame_board,
    run_servers,
    suggest_request,
)

from hexz_tasks import hexz_pb2, hexz_pb2_grpc
from hexz_tasks.engine import Board

PROTOBUF = {"Content-Type": "application/x-protobuf"}
CellType = hexz_pb2.Field.CellType
ScoreKind = hexz_pb2.SuggestMoveStats.ScoreKind


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    yield from run_servers(tmp_path_factory)


def post_suggest(running: Running, body: bytes, headers: dict | None = None) -> requests.Response:
    return requests.post(
        f"{running.http}/hexz/cpu/suggest",
        data=body,
        headers=PROTOBUF if headers is None else headers,
        timeout=60,
    )


def check_response(
    resp: hexz_pb2.SuggestMoveResponse, board: Board, player: int, move_number: int
) -> None:
    """The answer is a legal move of the player to move, with stats for every legal move."""
    m = resp.move
    assert (m.player_num, m.move) == (player + 1, move_number)
    typ = 0 if m.cell_type == CellType.Value("FLAG") else 1
    assert m.cell_type in (CellType.Value("FLAG"), CellType.Value("NORMAL"))
    legal = {(t, r, c) for t, r, c, _ in board.legal_moves(player)}
    assert (typ, m.row, m.col) in legal
    stats = resp.move_stats
    listed = {(0 if s.type == CellType.Value("FLAG") else 1, s.row, s.col) for s in stats.moves}
    assert listed == legal
    for s in stats.moves:
        assert [sc.kind for sc in s.scores] == [
            ScoreKind.Value("FINAL"),
            ScoreKind.Value("MCTS_PRIOR"),
        ]
    assert sum(s.scores[0].score for s in stats.moves) == pytest.approx(1.0, abs=1e-4)
    assert -1.0 <= stats.value <= 1.0


def test_suggest_move_over_http(running: Running) -> None:
    board, player = midgame_board(seed=1, moves=12)
    req = suggest_request(board, player, move_number=12, iterations=40)
    r = post_suggest(running, req.SerializeToString())
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "application/x-protobuf"
    check_response(hexz_pb2.SuggestMoveResponse.FromString(r.content), board, player, 12)


def test_suggest_move_with_think_time_for_player_two(running: Running) -> None:
    board, player = midgame_board(seed=2, moves=7)
    assert player == 1, "seed chosen so that player 2 is to move"
    req = suggest_request(board, player, move_number=7, think_ms=150, iterations=0)
    r = post_suggest(running, req.SerializeToString())
    assert r.status_code == 200, r.text
    check_response(hexz_pb2.SuggestMoveResponse.FromString(r.content), board, player, 7)


def test_suggest_move_over_grpc(running: Running) -> None:
    board, player = midgame_board(seed=3, moves=4)
    req = suggest_request(board, player, move_number=4, iterations=30)
    with running.channel() as ch:
        resp = hexz_pb2_grpc.CPUPlayerServiceStub(ch).SuggestMove(req, timeout=60)
    check_response(resp, board, player, 4)


def test_concurrent_suggestions_are_all_answered(running: Running) -> None:
    """More requests than search slots (2) and than spare HTTP threads: all answered."""
    cases = [midgame_board(seed=100 + i, moves=i % 9) for i in range(10)]
    bodies = [
        suggest_request(b, p, move_number=i, iterations=25).SerializeToString()
        for i, (b, p) in enumerate(cases)
    ]
    with ThreadPoolExecutor(len(bodies)) as pool:
        results = list(pool.map(lambda body: post_suggest(running, body), bodies))
    for i, (r, (board, player)) in enumerate(zip(results, cases, strict=True)):
        assert r.status_code == 200, r.text
        check_response(hexz_pb2.SuggestMoveResponse.FromString(r.content), board, player, i)
    stats = running.servers.state.player.stats()
    assert stats["active"] == 0 and stats["served"] >= len(bodies)


def _bad_requests() -> list[tuple[str, bytes, dict | None, str]]:
    board, player = midgame_board(seed=5, moves=6)
    ok = suggest_request(board, player, iterations=10)
    classic = hexz_pb2.SuggestMoveRequest(max_iterations=10)
    classic.game_engine_state.classic.board.turn = 1
    short = hexz_pb2.SuggestMoveRequest()
    short.CopyFrom(ok)
    del short.game_engine_state.flagz.board.flat_fields[-1]
    bad_owner = hexz_pb2.SuggestMoveRequest()
    bad_owner.CopyFrom(ok)
    f = bad_owner.game_engine_state.flagz.board.flat_fields[0]
    f.type, f.owner = CellType.Value("FLAG"), 3
    bad_turn = hexz_pb2.SuggestMoveRequest()
    bad_turn.CopyFrom(ok)
    bad_turn.game_engine_state.flagz.board.turn = 3
    fire = hexz_pb2.SuggestMoveRequest()
    fire.CopyFrom(ok)
    fire.game_engine_state.flagz.board.flat_fields[5].type = CellType.Value("FIRE")
    stuck = suggest_request(finished_board(seed=6), 0, iterations=10)
    huge = hexz_pb2.SuggestMoveRequest()
    huge.CopyFrom(ok)
    huge.max_think_time_ms = 10**12
    negative = hexz_pb2.SuggestMoveRequest()
    negative.CopyFrom(ok)
    negative.max_think_time_ms = -5
    zero = hexz_pb2.SuggestMoveRequest()
    zero.CopyFrom(ok)
    zero.max_iterations = 0
    good = ok.SerializeToString()
    return [
        ("wrong content type", good, {"Content-Type": "application/json"}, "Content-Type"),
        ("no content type", good, {}, "Content-Type"),
        ("garbage", b"\xff\xff\xff\xff garbage", None, "not a serialized SuggestMoveRequest"),
        ("empty body", b"", None, "no game_engine_state"),
        ("classic game", classic.SerializeToString(), None, "unknown game type 'classic'"),
        ("104 cells", short.SerializeToString(), None, "flat_fields"),
        ("flag owner 3", bad_owner.SerializeToString(), None, "owner"),
        ("turn 3", bad_turn.SerializeToString(), None, "turn"),
        ("fire cell", fire.SerializeToString(), None, "cell type"),
        ("no legal move", stuck.SerializeToString(), None, "no legal move"),
        ("huge think time", huge.SerializeToString(), None, "max_think_time_ms"),
        ("negative think time", negative.SerializeToString(), None, "max_think_time_ms"),
        ("no limits", zero.SerializeToString(), None, "max_iterations"),
    ]


BAD = _bad_requests()


@pytest.mark.parametrize(("what", "body", "headers", "words"), BAD, ids=[b[0] for b in BAD])
def test_bad_suggest_requests_get_400(
    running: Running, what: str, body: bytes, headers: dict | None, words: str
) -> None:
    counters, length = running.counters(), running.stream_len()
    r = post_suggest(running, body, headers)
    assert r.status_code == 400, (what, r.status_code, r.text)
    assert words in r.text, r.text
    assert running.counters() == counters and running.stream_len() == length


def _parses(body: bytes) -> bool:
    try:
        hexz_pb2.SuggestMoveRequest.FromString(body)
    except DecodeError:
        return False
    return True


# Over gRPC only messages can be sent; the content type is not the client's to choose.
GRPC_BAD = [b for b in BAD if b[2] is None and _parses(b[1])]


@pytest.mark.parametrize("case", GRPC_BAD, ids=[b[0] for b in GRPC_BAD])
def test_bad_suggest_requests_get_invalid_argument(running: Running, case: tuple) -> None:
    what, body, _, words = case
    req = hexz_pb2.SuggestMoveRequest.FromString(body)
    with running.channel() as ch, pytest.raises(grpc.RpcError) as err:
        hexz_pb2_grpc.CPUPlayerServiceStub(ch).SuggestMove(req, timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, what
    assert words in err.value.details()


def test_client_errors_elsewhere_are_4xx(running: Running) -> None:
    assert requests.get(f"{running.http}/hexz/cpu/suggest", timeout=10).status_code == 405
    assert requests.get(f"{running.http}/no/such/page", timeout=10).status_code == 404
    r = requests.get(f"{running.http}/examples/latest?n=abc", timeout=10)
    assert r.status_code == 400 and "n must be an integer" in r.text
    r = requests.get(f"{running.http}/examples/latest?n=100000", timeout=10)
    assert r.status_code == 400 and "between 1 and" in r.text
    r = post_suggest(running, b"x" * (2 << 20))
    assert r.status_code == 413


def test_healthz_and_status_json(running: Running) -> None:
    assert add(running, game_examples(seed=77)).status == 1
    r = requests.get(f"{running.http}/healthz", timeout=10)
    assert r.status_code == 200 and r.json()["ok"] is True
    s = requests.get(f"{running.http}/status.json", timeout=30).json()
    assert s["latest_model"]["name"] == running.settings.model_name
    assert s["examples"]["examples"] == running.counters()["examples"] > 0
    # Worker requests count in the rates like self-play games do.
    assert s["examples"]["examples_last_hour"] >= len(game_examples(seed=77))
    assert s["pipeline"]["games"]["per_minute"] >= 0
    assert s["settings"]["model_filters"] == 8
    assert s["settings"]["redis_url"] == running.settings.redis_url  # no password to mask
    assert {"queues", "workers"} <= s["pipeline"].keys()
    assert s["checkpoints"][0]["checkpoint"] == 0
    assert s["ratings"] is None
    cps = requests.get(f"{running.http}/checkpoints.json", timeout=10).json()
    assert cps == s["checkpoints"]
    latest = requests.get(f"{running.http}/examples/latest.json?n=3", timeout=10).json()
    assert len(latest) == 3 and all(e["move"] is not None for e in latest)
    json.dumps(s)  # plain JSON all the way down


def test_cpu_player_switches_to_a_newly_published_checkpoint(running: Running) -> None:
    import torch

    from hexz_tasks.model import ModelParams, make_model

    state = running.servers.state
    board, player = midgame_board(seed=8, moves=3)
    body = suggest_request(board, player, iterations=10).SerializeToString()
    assert post_suggest(running, body).status_code == 200
    latest = state.repo.latest()
    assert state.models.describe() == f"{running.settings.model_name} checkpoint {latest}"
    s = running.settings
    params = ModelParams(s.model_type, s.model_blocks, s.model_filters)
    torch.manual_seed(1)
    state.repo.save(latest + 1, make_model(params), params)
    state.repo.publish(running.redis, running.keys, latest + 1)
    r = post_suggest(running, body)
    assert r.status_code == 200
    check_response(hexz_pb2.SuggestMoveResponse.FromString(r.content), board, player, 0)
    assert state.models.describe() == f"{running.settings.model_name} checkpoint {latest + 1}"


def test_local_model_path_plays_the_original_projects_model(
    running: Running, tmp_path: Path
) -> None:
    """HEXZ_LOCAL_MODEL_PATH wins over the checkpoints; the original's TorchScript file plays."""
    from hexz_tasks.server import start_servers

    path = REPO_ROOT / "tests" / "data" / "original-conv2d5-scriptmodule.pt"
    settings = running.settings.replace(local_model_path=path)
    servers = start_servers(settings, port=0, grpc_port=None, client=running.redis)
    try:
        assert servers.grpc_port is None
        board, player = midgame_board(seed=9, moves=5)
        r = requests.post(
            f"http://127.0.0.1:{servers.http_port}/hexz/cpu/suggest",
            data=suggest_request(board, player, move_number=5, iterations=20).SerializeToString(),
            headers=PROTOBUF,
            timeout=60,
        )
        assert r.status_code == 200, r.text
        check_response(hexz_pb2.SuggestMoveResponse.FromString(r.content), board, player, 5)
        assert servers.state.models.describe() == str(path)
    finally:
        servers.stop()
