"""The compact example encoding: lossless where training reads, small, strict on input."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hexz_tasks import codec, hexz_pb2, synthetic
from hexz_tasks.examples import decode_array, npy_bytes


def _games(n: int, seed: int = 0) -> list[list[hexz_pb2.TrainingExample]]:
    rng = np.random.default_rng(seed)
    return [synthetic.game_examples(rng, runs=200) for _ in range(n)]


def _without_priors(e: hexz_pb2.TrainingExample) -> bytes:
    e = hexz_pb2.TrainingExample.FromString(e.SerializeToString())
    e.model_predictions.ClearField("priors")
    return e.SerializeToString()


def test_round_trip_is_exact_except_float16_priors() -> None:
    examples = [e for g in _games(3) for e in g]
    cols = codec.from_blob(codec.to_blob(codec.encode_examples(examples, "t")))
    back = codec.to_examples(cols)
    assert [_without_priors(e) for e in back] == [_without_priors(e) for e in examples]
    for a, b in zip(back, examples, strict=True):
        pa = decode_array(a.model_predictions.priors, 0, "a")
        pb = decode_array(b.model_predictions.priors, 0, "b")
        np.testing.assert_array_equal(pa, pb.astype(np.float16).astype(np.float32))


def test_size_per_example_is_within_target() -> None:
    examples = [e for g in _games(4, seed=1) for e in g]
    per_game = [codec.to_blob(codec.encode_examples(g, "t")) for g in _games(4, seed=1)]
    in_redis = sum(map(len, per_game)) / len(examples)
    assert in_redis <= 400, in_redis
    buf = io.BytesIO()
    np.savez_compressed(buf, **codec.encode_examples(examples, "t"))
    assert len(buf.getvalue()) / len(examples) <= 400


def test_probabilities_that_are_not_count_fractions_stay_exact() -> None:
    g = _games(1, seed=2)[0][:6]
    rng = np.random.default_rng(5)
    for e in g:
        mask = decode_array(e.action_mask, 0, "m").reshape(-1)
        p = np.zeros(220, np.float32)
        p[mask] = rng.random(mask.sum()).astype(np.float32)
        p /= p.sum()
        e.move_probs = npy_bytes(p.reshape(2, 11, 10))
    cols = codec.encode_examples(g, "t")
    assert len(cols["probs_exc_rows"]) == len(g)
    back = codec.to_examples(cols)
    assert [e.move_probs for e in back] == [e.move_probs for e in g]


def test_pytorch_encoded_arrays_are_read() -> None:
    g = _games(1, seed=3)[0][:5]
    cols = codec.encode_examples(g, "t")
    as_torch = codec.to_examples(cols, hexz_pb2.TrainingExample.PYTORCH)
    t = torch.load(io.BytesIO(as_torch[0].board), weights_only=True)
    assert isinstance(t, torch.Tensor) and t.shape == (11, 11, 10)
    again = codec.to_examples(codec.encode_examples(as_torch, "t"))
    assert [_without_priors(e) for e in again] == [
        _without_priors(e) for e in codec.to_examples(cols)
    ]


def test_batch_board_decoding_matches_the_input() -> None:
    examples = [e for g in _games(2, seed=4) for e in g]
    cols = codec.encode_examples(examples, "t")
    boards = codec.decode_boards(cols["board_cells"], cols["board_grass"], cols["flags_left"])
    want = np.stack([decode_array(e.board, 0, "b") for e in examples])
    np.testing.assert_array_equal(boards, want)
    masks = codec.unpack_masks(cols["mask"])
    np.testing.assert_array_equal(
        masks, np.stack([decode_array(e.action_mask, 0, "m") for e in examples])
    )


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_any_board_in_range_round_trips(data: st.DataObject) -> None:
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    board = np.zeros((11, 11, 10), np.float32)
    for ch in (0, 2, 5, 7):
        board[ch] = rng.integers(0, 2, (11, 10))
    for ch in (1, 3, 6, 8, 10):
        board[ch] = rng.integers(0, 8, (11, 10))
    board[4], board[9] = rng.integers(0, 256), rng.integers(0, 256)
    e = _games(1, seed=seed % 1000)[0][0]
    e.board = npy_bytes(board)
    cols = codec.encode_examples([e], "t")
    np.testing.assert_array_equal(
        codec.decode_boards(cols["board_cells"], cols["board_grass"], cols["flags_left"])[0], board
    )


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda b: b.__setitem__((1, 0, 0), 0.5), "not integers"),
        (lambda b: b.__setitem__((0, 0, 0), 2), "flag/blocked not 0 or 1"),
        (lambda b: b.__setitem__((3, 0, 0), 9), "above 7"),
        (lambda b: b.__setitem__((4, 0, 0), 1), "flags-left channel not constant"),
        (lambda b: b.__setitem__((1, 0, 0), -1), "outside 0..255"),
    ],
)
def test_unencodable_boards_are_rejected(change, message: str) -> None:
    g = _games(1, seed=6)[0][:3]
    board = decode_array(g[1].board, 0, "b").copy()
    change(board)
    g[1].board = npy_bytes(board)
    with pytest.raises(ValueError, match=f"where example 1: .*{message}"):
        codec.encode_examples(g, "where")


def test_bad_result_and_corrupt_bytes_are_rejected() -> None:
    g = _games(1, seed=7)[0][:3]
    g[2].result = 0.5
    with pytest.raises(ValueError, match="w example 2: result is not -1, 0 or 1"):
        codec.encode_examples(g, "w")
    g[2].result = 1
    g[0].board = b"\x93NUMPY garbage"
    with pytest.raises(ValueError, match="w example 0: board: cannot decode"):
        codec.encode_examples(g, "w")
    with pytest.raises(ValueError, match="corrupt example blob"):
        codec.from_blob(b"HXZC1" + zlib.compress(b"\x05\x00\x00\x00{bad"))
