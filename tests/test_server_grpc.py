"""The gRPC TrainingService as the original C++ workers use it, against real servers."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import torch
from conftest import wait_for, wait_for_examples_to_settle
from test_server_support import (
    NUMPY,
    PYTORCH,
    Running,
    add,
    game_examples,
    latest,
    npy_bytes,
    run_servers,
    torch_bytes,
)

from hexz_tasks import hexz_pb2
from hexz_tasks.examples import from_columns
from hexz_tasks.model import ModelParams, load_scriptmodule, make_model

Status = hexz_pb2.AddTrainingExamplesResponse.Status
Enc = hexz_pb2.ModelEncoding


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    yield from run_servers(tmp_path_factory)


def stored_examples(running: Running) -> list[hexz_pb2.TrainingExample]:
    out = []
    for _, cols in running.servers.state.store.pending_entries(None, count=10_000):
        out.extend(from_columns(cols))
    return out


@pytest.mark.parametrize("encoding", [NUMPY, PYTORCH])
def test_add_examples_both_encodings_idempotent(running: Running, encoding: int) -> None:
    examples = game_examples(seed=10 + encoding, encoding=encoding)
    before = running.counters()["examples"]
    resp = add(running, examples)
    assert resp.status == Status.ACCEPTED, resp.error_message
    assert (resp.latest_model.name, resp.latest_model.checkpoint) == latest(running)
    assert running.counters()["examples"] == before + len(examples)
    # The worker retries the same request (e.g. after a lost reply): stored once.
    resp = add(running, examples)
    assert resp.status == Status.ACCEPTED
    assert running.counters()["examples"] == before + len(examples)
    # What is stored is what was sent, whatever the encoding.
    sent = {ex.unix_micros: ex for ex in examples}
    got = [ex for ex in stored_examples(running) if ex.unix_micros in sent]
    assert len(got) == len(examples)
    decode = np.load if encoding == NUMPY else None
    for ex in got:
        orig = sent[ex.unix_micros]
        for field in ("board", "move_probs", "action_mask"):
            raw = getattr(orig, field)
            want = (
                decode(io.BytesIO(raw))
                if decode
                else torch.load(io.BytesIO(raw), weights_only=True).numpy()
            )
            assert np.array_equal(np.load(io.BytesIO(getattr(ex, field))), want), field
        assert ex.result == orig.result and ex.turn == orig.turn
        assert ex.move == orig.move


def test_add_examples_gzip_compressed_like_the_cpp_worker(running: Running) -> None:
    """The original worker gzips its requests (GRPC_COMPRESS_GZIP)."""
    examples = game_examples(seed=15, encoding=PYTORCH)
    before = running.counters()["examples"]
    resp = add(running, examples, compression=grpc.Compression.Gzip)
    assert resp.status == Status.ACCEPTED, resp.error_message
    assert running.counters()["examples"] == before + len(examples)


def test_add_examples_without_action_mask_derives_it(running: Running) -> None:
    examples = game_examples(seed=20)
    masks = {ex.unix_micros: np.load(io.BytesIO(ex.action_mask)) for ex in examples}
    for ex in examples:
        ex.ClearField("action_mask")
    resp = add(running, examples)
    assert resp.status == Status.ACCEPTED, resp.error_message
    got = [ex for ex in stored_examples(running) if ex.unix_micros in masks]
    assert len(got) == len(examples)
    for ex in got:
        assert np.array_equal(np.load(io.BytesIO(ex.action_mask)), masks[ex.unix_micros])


def _corrupt(kind: str) -> tuple[list[hexz_pb2.TrainingExample], str, int]:
    """A request broken in one way, the words the error must contain, and the status."""
    exs = game_examples(seed=30)
    ex = exs[3]
    other = Status.REJECTED_OTHER
    match kind:
        case "garbage_board":
            ex.board = b"not an array"
            return exs, "examples[3].board is not a .npy file", other
        case "wrong_shape":
            ex.board = npy_bytes(np.zeros((11, 11, 9), dtype=np.float32))
            return exs, "shape", other
        case "nan":
            probs = np.load(io.BytesIO(ex.move_probs))
            probs.flat[np.argmax(probs)] = np.nan
            ex.move_probs = npy_bytes(probs)
            return exs, "NaN", other
        case "probs_sum":
            ex.move_probs = npy_bytes(np.load(io.BytesIO(ex.move_probs)) * 2)
            return exs, "sum to 1", other
        case "illegal_prob":
            mask = np.load(io.BytesIO(ex.action_mask))
            probs = np.zeros(mask.shape, dtype=np.float32)
            probs[~mask] = 1 / (~mask).sum()
            ex.move_probs = npy_bytes(probs)
            return exs, "action_mask", other
        case "result":
            ex.result = 0.5
            return exs, "result", other
        case "turn":
            ex.turn = 2
            return exs, "turn", other
        case "encoding":
            ex.encoding = 7
            return exs, "encoding", other
        case "pickle":
            # torch.save of a non-tensor object: refused by weights_only loading.
            buf = io.BytesIO()
            torch.save({"a": np.zeros(3)}, buf)
            ex.encoding = PYTORCH
            ex.board = buf.getvalue()
            return exs, "examples[3].board: cannot decode", other
        case "impossible_board":
            board = np.load(io.BytesIO(ex.board))
            board[1, 0, 0] = 9  # a piece value beyond 5
            ex.board = npy_bytes(board)
            return exs, "examples[3].board has entries", other
        case "wrong_model":
            ex.model_key.CopyFrom(hexz_pb2.ModelKey(name="someone-else", checkpoint=3))
            return exs, "someone-else", Status.REJECTED_WRONG_MODEL
        case "empty":
            return [], "no examples", other
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "garbage_board", "wrong_shape", "nan", "probs_sum", "illegal_prob", "result", "turn",
        "encoding", "pickle", "impossible_board", "wrong_model", "empty",
    ],
)  # fmt: skip
def test_bad_examples_are_rejected_and_nothing_is_stored(running: Running, kind: str) -> None:
    examples, words, status = _corrupt(kind)
    counters, length = running.counters(), running.stream_len()
    resp = add(running, examples, execution_id=f"bad-{kind}")
    assert resp.status == status
    assert words in resp.error_message
    assert (resp.latest_model.name, resp.latest_model.checkpoint) == latest(running)
    assert running.counters() == counters
    assert running.stream_len() == length


def test_fetch_model_latest_as_torchscript_without_key(running: Running) -> None:
    name, checkpoint = latest(running)
    with running.channel() as ch:
        resp = running.training_stub(ch).FetchModel(hexz_pb2.FetchModelRequest(), timeout=30)
    assert (resp.model_key.name, resp.model_key.checkpoint) == (name, checkpoint)
    assert resp.encoding == Enc.JIT_SCRIPT
    module = load_scriptmodule(resp.model_bytes)
    boards = torch.zeros((3, 11, 11, 10))
    masks = torch.ones((3, 2, 11, 10), dtype=torch.bool)
    logits, value = module(boards, masks)
    assert logits.shape == (3, 220) and value.shape == (3, 1)


def test_fetch_model_state_dict_of_a_checkpoint(running: Running) -> None:
    name, _ = latest(running)
    req = hexz_pb2.FetchModelRequest(
        model_key=hexz_pb2.ModelKey(name=name, checkpoint=0), encoding=Enc.STATE_DICT
    )
    with running.channel() as ch:
        resp = running.training_stub(ch).FetchModel(req, timeout=30)
    assert resp.encoding == Enc.STATE_DICT and resp.model_key.checkpoint == 0
    state = torch.load(io.BytesIO(resp.model_bytes), weights_only=True)
    s = running.settings
    model = make_model(ModelParams(s.model_type, s.model_blocks, s.model_filters))
    model.load_state_dict(state)  # strict: every parameter present with the right shape
    disk = running.servers.state.repo.checkpoint_dir(0) / "model.pt"
    assert resp.model_bytes == disk.read_bytes()


@pytest.mark.parametrize(
    ("key", "encoding", "code", "words"),
    [
        (hexz_pb2.ModelKey(checkpoint=999), Enc.JIT_SCRIPT, grpc.StatusCode.NOT_FOUND, "999"),
        (hexz_pb2.ModelKey(name="../../etc", checkpoint=0), Enc.JIT_SCRIPT,
         grpc.StatusCode.INVALID_ARGUMENT, "model name"),
        (hexz_pb2.ModelKey(checkpoint=-5), Enc.JIT_SCRIPT, grpc.StatusCode.INVALID_ARGUMENT, "-5"),
        (hexz_pb2.ModelKey(checkpoint=0), Enc.JIT_TRACE, grpc.StatusCode.INVALID_ARGUMENT,
         "JIT_TRACE"),
        (hexz_pb2.ModelKey(name="nosuchmodel", checkpoint=-1), Enc.JIT_SCRIPT,
         grpc.StatusCode.NOT_FOUND, "nosuchmodel"),
    ],
)  # fmt: skip
def test_fetch_model_errors(
    running: Running, key: hexz_pb2.ModelKey, encoding: int, code: grpc.StatusCode, words: str
) -> None:
    with running.channel() as ch, pytest.raises(grpc.RpcError) as err:
        running.training_stub(ch).FetchModel(
            hexz_pb2.FetchModelRequest(model_key=key, encoding=encoding), timeout=30
        )
    assert err.value.code() == code
    assert words in err.value.details()


def test_control_events_see_a_real_training(running: Running) -> None:
    """A worker's ControlEvents stream sees TrainingStarted, then TrainingDone, when the
    Celery training task's body runs (as a gpu worker on any machine would run it);
    afterwards every reply names the new checkpoint and FetchModel returns it."""
    from hexz_tasks.training_tick import run_training_tick

    state = running.servers.state
    # Enough examples for a training, sent the way a worker sends them.
    for seed in range(40, 44):
        assert add(running, game_examples(seed)).status == Status.ACCEPTED
    before_name, before_cp = latest(running)
    events: list[str] = []
    ch = running.channel()
    stream = running.training_stub(ch).ControlEvents(
        hexz_pb2.ControlRequest(execution_id="exec-1"), timeout=120
    )

    def read() -> None:
        try:
            for ev in stream:
                events.append(ev.WhichOneof("event_type"))
                if len(events) == 2:
                    return
        except grpc.RpcError:
            pass  # cancelled at the end of the test

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_for(
            lambda: (
                dict(running.redis.pubsub_numsub(running.keys.events_channel)).get(
                    running.keys.events_channel.encode(), 0
                )
                >= 1
            ),
            20,
            "the ControlEvents stream to subscribe",
        )
        wait_for_examples_to_settle()
        result = run_training_tick(running.settings, running.redis, running.keys)
        assert result["trained"], result
        reader.join(30)
        assert events == ["training_started", "training_done"]
    finally:
        stream.cancel()
        ch.close()
    name, cp = latest(running)
    assert (name, cp) == (before_name, before_cp + 1)
    resp = add(running, game_examples(seed=45))
    assert (resp.latest_model.name, resp.latest_model.checkpoint) == (name, cp)
    with running.channel() as ch:
        fetched = running.training_stub(ch).FetchModel(hexz_pb2.FetchModelRequest(), timeout=30)
    assert fetched.model_key.checkpoint == cp
    assert fetched.model_bytes == state.repo.scriptmodule_bytes(cp)
    # The status page lists the run with its losses.
    runs = state.redis.lrange(running.keys.training_runs, 0, -1)
    assert any(json.loads(r)["checkpoint"] == cp for r in runs)


def test_pytorch_helper_matches_worker_format() -> None:
    """The PYTORCH bytes the tests send are what torch.save writes: a zip archive."""
    data = torch_bytes(np.zeros((2, 11, 10), dtype=np.float32))
    assert data[:2] == b"PK"
    assert torch.load(io.BytesIO(data), weights_only=True).shape == (2, 11, 10)
