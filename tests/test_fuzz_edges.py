"""Hypothesis fuzzing of everything that decodes bytes from outside: the npy/PyTorch array
decoder, the example validator, AddTrainingExamples and SuggestMove requests (real
servers), and request bytes that do not parse.

The default run tries Hypothesis's 100 cases per test; the long run is
`pytest --hypothesis-profile=thorough tests/test_fuzz_edges.py` (10,000 each).
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_server_support import Running, game_examples, midgame_board, run_servers, suggest_request

from hexz_tasks import hexz_pb2
from hexz_tasks.examples import MAX_ARRAY_ELEMENTS, decode_array, npy_bytes
from hexz_tasks.model import ModelParams, make_model
from hexz_tasks.server.player import Busy, CpuPlayer, Unavailable
from hexz_tasks.settings import Settings
from hexz_tasks.suggest import ClientError
from hexz_tasks.validation import InvalidExample, validate_example

Example = hexz_pb2.TrainingExample
Status = hexz_pb2.AddTrainingExamplesResponse.Status
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Statuses a server may answer to any bytes; INTERNAL or UNKNOWN would be its own bug.
CLEAN_CODES = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def _torch_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    torch.save(torch.from_numpy(a), buf)
    return buf.getvalue()


VALID_ARRAYS = [
    (npy_bytes(np.zeros((11, 11, 10), np.float32)), Example.NUMPY),
    (npy_bytes(np.ones((2, 11, 10), bool)), Example.NUMPY),
    (_torch_bytes(np.zeros((2, 11, 10), np.float32)), Example.PYTORCH),
]


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """`data` with a few bytes replaced, inserted or cut off (or, at times, any bytes)."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=2 * len(data)))
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["replace", "insert", "truncate"]))
        i = draw(st.integers(0, max(0, len(out) - 1)))
        chunk = draw(st.binary(min_size=1, max_size=8))
        if kind == "replace":
            out[i : i + len(chunk)] = chunk
        elif kind == "insert":
            out[i:i] = chunk
        else:
            del out[i:]
    return bytes(out)


@st.composite
def mutated_array(draw: st.DrawFn) -> tuple[bytes, int]:
    data, encoding = draw(st.sampled_from(VALID_ARRAYS))
    return draw(mutated(data)), draw(st.sampled_from([encoding, Example.NUMPY, Example.PYTORCH]))


@FUZZ
@given(mutated_array())
def test_array_decoder_returns_a_small_array_or_a_value_error(case: tuple[bytes, int]) -> None:
    data, encoding = case
    try:
        a = decode_array(data, encoding, "field")
    except ValueError as e:
        assert str(e).startswith("field")
        return
    assert isinstance(a, np.ndarray) and a.size <= MAX_ARRAY_ELEMENTS


GOOD = game_examples(seed=5)[6]
SCALARS = {
    "result": st.floats(allow_nan=True, width=32),
    "turn": st.integers(-(2**31), 2**31 - 1),
    "encoding": st.integers(0, 5),
    "unix_micros": st.integers(-(2**63), 2**63 - 1),
    "move.player_num": st.integers(-5, 5),
    "move.row": st.integers(-3, 14),
    "move.col": st.integers(-3, 14),
    "move.cell_type": st.integers(-1, 10),
    "model_key.checkpoint": st.integers(-(2**31), 2**31 - 1),
    "model_key.name": st.text(max_size=80),
    "model_predictions.value": st.floats(allow_nan=True, width=32),
    "stats.visit_count": st.integers(-(2**31), 2**31 - 1),
    "stats.selected_child_q": st.floats(allow_nan=True, width=32),
}
ARRAYS = ["board", "move_probs", "action_mask", "model_predictions.priors"]


def _set(ex: Example, path: str, value: object) -> None:
    *parents, name = path.split(".")
    target = ex
    for p in parents:
        target = getattr(target, p)
    setattr(target, name, value)


def _get(ex: Example, path: str) -> object:
    for p in path.split("."):
        ex = getattr(ex, p)
    return ex


@st.composite
def mutated_example(draw: st.DrawFn) -> Example:
    ex = Example()
    ex.CopyFrom(GOOD)
    ex.model_predictions.value = 0.5
    ex.model_key.name = "flagz"
    for path in draw(st.lists(st.sampled_from(sorted(SCALARS)), max_size=3, unique=True)):
        _set(ex, path, draw(SCALARS[path]))
    for path in draw(st.lists(st.sampled_from(ARRAYS), max_size=2, unique=True)):
        _set(ex, path, draw(mutated(_get(ex, path) or GOOD.move_probs)))  # type: ignore[arg-type]
    return ex


@FUZZ
@given(mutated_example())
def test_validator_accepts_only_what_passes_again_unchanged(ex: Example) -> None:
    try:
        out = validate_example(ex, "ex")
    except InvalidExample as e:
        assert str(e).startswith("ex")
        return
    assert validate_example(out, "again") == out
    assert out.encoding == Example.NUMPY


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    yield from run_servers(tmp_path_factory, max_think_time_ms=50, max_suggest_iterations=20)


def _call(running: Running, method: str, body: bytes) -> tuple[grpc.StatusCode, bytes]:
    with running.channel() as ch:
        try:
            return grpc.StatusCode.OK, ch.unary_unary(method)(body, timeout=30)
        except grpc.RpcError as e:
            return e.code(), b""


GAME = hexz_pb2.AddTrainingExamplesRequest(examples=game_examples(seed=6)[:4]).SerializeToString()


@FUZZ
@given(mutated(GAME))
def test_add_training_examples_with_mutated_bytes(running: Running, body: bytes) -> None:
    before = running.counters()
    code, reply = _call(running, "/hexzpb.TrainingService/AddTrainingExamples", body)
    assert code in CLEAN_CODES
    if code != grpc.StatusCode.OK:
        assert running.counters() == before
        return
    resp = hexz_pb2.AddTrainingExamplesResponse.FromString(reply)
    assert resp.status in (Status.ACCEPTED, Status.REJECTED_OTHER, Status.REJECTED_WRONG_MODEL)
    if resp.status != Status.ACCEPTED:
        assert resp.error_message and running.counters() == before


BOARD, PLAYER = midgame_board(seed=7, moves=8)
SUGGEST = suggest_request(BOARD, PLAYER, move_number=8, iterations=5).SerializeToString()


@FUZZ
@given(mutated(SUGGEST))
def test_suggest_move_with_mutated_bytes_over_grpc(running: Running, body: bytes) -> None:
    code, reply = _call(running, "/hexzpb.CPUPlayerService/SuggestMove", body)
    assert code in CLEAN_CODES | {grpc.StatusCode.UNAVAILABLE}
    if code == grpc.StatusCode.OK:
        assert hexz_pb2.SuggestMoveResponse.FromString(reply).HasField("move")


@pytest.fixture(scope="module")
def player() -> CpuPlayer:
    from hexz_tasks.inference import Evaluator
    from hexz_tasks.model import to_scriptmodule_bytes

    torch.set_num_threads(1)
    model = Evaluator(to_scriptmodule_bytes(make_model(ModelParams("conv2d", 1, 8))))
    s = Settings.from_env({}, max_think_time_ms=20, max_suggest_iterations=10)
    return CpuPlayer(s, lambda: model)


@FUZZ
@given(mutated(SUGGEST))
def test_suggest_request_decoding(player: CpuPlayer, body: bytes) -> None:
    try:
        out = player.suggest(body)
    except (ClientError, Busy, Unavailable) as e:
        assert str(e)
        return
    assert hexz_pb2.SuggestMoveResponse.FromString(out).HasField("move")


@FUZZ
@given(
    st.sampled_from(
        [
            "/hexzpb.TrainingService/AddTrainingExamples",
            "/hexzpb.TrainingService/FetchModel",
            "/hexzpb.CPUPlayerService/SuggestMove",
        ]
    ),
    st.binary(max_size=64),
)
def test_any_bytes_to_any_unary_method(running: Running, method: str, body: bytes) -> None:
    code, _ = _call(running, method, body)
    assert code in CLEAN_CODES | {grpc.StatusCode.UNAVAILABLE}
