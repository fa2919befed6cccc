"""The example store's format: the engine's columns, the edge's protobufs, versions.

Lossless where training reads, small, strict on input, and every format version ever
written stays readable (tests/data/format-v1 was written by the code before versions).
"""

from __future__ import annotations

import gzip
import io
import shutil
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from synthetic import game_columns, game_examples

from hexz_tasks import codec, hexz_pb2
from hexz_tasks.dataset import Dataset
from hexz_tasks.examples import PYTORCH, decode_array, from_columns, npy_bytes, to_columns
from hexz_tasks.layout import MASK_SHAPE, POLICY_SIZE

V1 = Path(__file__).resolve().parent / "data" / "format-v1"


def _equal(a: codec.Columns, b: codec.Columns) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _without_priors(e: hexz_pb2.TrainingExample) -> bytes:
    e = hexz_pb2.TrainingExample.FromString(e.SerializeToString())
    e.model_predictions.ClearField("priors")
    return e.SerializeToString()


def _float_targets(examples: list, seed: int) -> list:
    """The examples with move_probs that are no visit-count fractions."""
    rng = np.random.default_rng(seed)
    for e in examples:
        mask = decode_array(e.action_mask, 0, "m").reshape(-1)
        p = np.zeros(POLICY_SIZE, np.float32)
        p[mask] = rng.random(mask.sum()).astype(np.float32) + 0.01
        e.move_probs = npy_bytes((p / p.sum()).reshape(MASK_SHAPE))
    return examples


# ------------------------------------------------------------------ engine columns


def test_engine_columns_are_complete_and_blobs_round_trip_exactly() -> None:
    (cols,) = game_columns(1, seed=1, runs=30, model=("m", 9))
    codec.check(cols, "game")
    assert cols["counts"].dtype == np.uint16 and cols["priors"].dtype == np.float16
    assert len(cols["probs_rows"]) == 0  # every target is a visit-count fraction
    assert (cols["model_ckpt"] == 9).all() and codec.names_of(cols) == ["m"]
    assert (cols["has"] == codec.HAS_ALL).all()
    blob = codec.to_blob(cols)
    assert blob.startswith(b"HXZC2")
    _equal(codec.from_blob(blob), cols)


def test_policy_targets_are_the_visit_fractions() -> None:
    (cols,) = game_columns(1, seed=2, runs=25)
    batch = codec.decode(cols)
    n = codec.num_rows(cols)
    masks = batch.masks.reshape(n, -1)
    counts = codec.dense_by_mask(cols["counts"], masks, np.int64)
    totals = counts.sum(1, keepdims=True).astype(np.float32)
    np.testing.assert_array_equal(batch.move_probs, counts.astype(np.float32) / totals)
    assert (batch.move_probs[~masks] == 0).all()
    np.testing.assert_allclose(batch.move_probs.sum(1), 1, atol=1e-6)
    stats = dict(zip(codec.STATS_FIELDS, cols["stats"].T.astype(np.int64), strict=True))
    np.testing.assert_array_equal(stats["valid_moves"], masks.sum(1))
    np.testing.assert_array_equal(stats["visited_children"], (counts > 0).sum(1))
    np.testing.assert_array_equal(stats["max_child_vc"], counts.max(1))
    assert np.isfinite(batch.root_q).all() and (np.abs(batch.root_q) <= 1).all()


def test_a_search_that_visits_no_child_keeps_its_priors_as_the_target() -> None:
    (cols,) = game_columns(1, seed=3, runs=1, max_moves=12)
    n = codec.num_rows(cols)
    assert len(cols["probs_rows"]) > 0
    batch = codec.decode(cols)
    priors = codec.dense_by_mask(cols["priors"], batch.masks.reshape(n, -1), np.float32)
    for row in cols["probs_rows"]:
        np.testing.assert_allclose(batch.move_probs[row], priors[row], atol=1e-3)
        assert batch.move_probs[row].sum() == pytest.approx(1, abs=1e-5)


def test_take_rows_and_concat_keep_every_kind_of_column() -> None:
    games = game_columns(3, seed=4, runs=10, max_moves=20)
    edge = to_columns(_float_targets(from_columns(games[1])[:7], seed=0), "edge")
    joined = codec.concat([games[0], edge, games[2]])
    codec.check(joined, "joined")
    n0, ne = codec.num_rows(games[0]), codec.num_rows(edge)
    np.testing.assert_array_equal(joined["probs_rows"], np.arange(n0, n0 + ne))
    _equal(codec.take_rows(joined, np.arange(n0, n0 + ne)), edge)
    _equal(codec.take_rows(joined, np.arange(n0 + ne, codec.num_rows(joined))), games[2])
    rows = np.array([1, n0 + 2, n0 + ne + 3])
    part = codec.take_rows(joined, rows)
    full, sub = codec.decode(joined), codec.decode(part)
    np.testing.assert_array_equal(sub.move_probs, full.move_probs[rows])
    np.testing.assert_array_equal(sub.boards, full.boards[rows])
    assert from_columns(part)[1].SerializeToString() == from_columns(edge)[2].SerializeToString()


def test_size_per_example_is_within_target() -> None:
    games = game_columns(4, seed=5, runs=200)
    n = sum(map(codec.num_rows, games))
    assert sum(len(codec.to_blob(g)) for g in games) / n <= 400
    buf = io.BytesIO()
    np.savez_compressed(buf, **codec.concat(games))
    assert len(buf.getvalue()) / n <= 400


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda c: c.pop("root_q"), "missing \\['root_q'\\]"),
        (lambda c: c.__setitem__("extra", np.zeros(3)), "unknown \\['extra'\\]"),
        (lambda c: c.__setitem__("counts", c["counts"][:-1]), "counts has .* entries"),
        (lambda c: c.__setitem__("turn", c["turn"].astype(np.int64)), "turn has dtype"),
        (
            lambda c: c.update(
                probs_rows=np.array([10**6], np.int32), probs=np.zeros((1, 220), np.float32)
            ),
            "probs_rows are not ascending rows",
        ),
        (lambda c: c.__setitem__("names", np.frombuffer(b"{", np.uint8)), "names"),
        # A bit among the 4 unused of the packed mask (found by the chunk file fuzzing):
        # counted as a move by the ragged columns, not by the unpacked mask.
        (lambda c: c["mask"].__setitem__((0, -1), c["mask"][0, -1] | 0x10), "beyond the 220"),
    ],
)
def test_malformed_columns_are_refused(change, message: str) -> None:
    (cols,) = game_columns(1, seed=6, runs=5, max_moves=10)
    cols = {k: v.copy() for k, v in cols.items()}
    change(cols)
    with pytest.raises(codec.FormatError, match=message):
        codec.from_blob(codec.to_blob(cols))


def test_corrupt_and_unknown_blobs_are_refused() -> None:
    with pytest.raises(codec.FormatError, match="corrupt example blob"):
        codec.from_blob(b"HXZC2" + zlib.compress(b"\x05\x00\x00\x00{bad"))
    with pytest.raises(codec.FormatError, match="no HXZC marker"):
        codec.from_blob(b"PK\x03\x04")
    with pytest.raises(codec.FormatError, match="names no format version"):
        codec.from_blob(b"HXZCx")
    (cols,) = game_columns(1, seed=7, runs=5, max_moves=10)
    future = b"HXZC9" + codec.to_blob(cols)[5:]
    with pytest.raises(codec.FormatError, match="format version 9; this code reads versions 1, 2"):
        codec.from_blob(future)


# -------------------------------------------------------------------- the edge


def test_protobuf_round_trip_is_exact_except_float16_priors() -> None:
    examples = [e for g in game_examples(2, seed=8, runs=30, max_moves=30) for e in g]
    back = from_columns(codec.from_blob(codec.to_blob(to_columns(examples, "t"))))
    assert [_without_priors(e) for e in back] == [_without_priors(e) for e in examples]
    for a, b in zip(back, examples, strict=True):
        pa = decode_array(a.model_predictions.priors, 0, "a")
        pb = decode_array(b.model_predictions.priors, 0, "b")
        np.testing.assert_array_equal(pa, pb.astype(np.float16).astype(np.float32))


def test_edge_examples_keep_float_targets_exactly() -> None:
    g = _float_targets(game_examples(1, seed=9, runs=20, max_moves=8)[0], seed=1)
    cols = to_columns(g, "t")
    np.testing.assert_array_equal(cols["probs_rows"], np.arange(len(g)))
    assert np.isnan(codec.decode(cols).root_q).all()  # the wire format has no root_q
    assert [e.move_probs for e in from_columns(cols)] == [e.move_probs for e in g]


def test_pytorch_encoded_arrays_are_read() -> None:
    (cols,) = game_columns(1, seed=10, runs=10, max_moves=5)
    as_torch = from_columns(cols, PYTORCH)
    t = torch.load(io.BytesIO(as_torch[0].board), weights_only=True)
    assert isinstance(t, torch.Tensor) and t.shape == (11, 11, 10)
    again = from_columns(to_columns(as_torch, "t"))
    assert [_without_priors(e) for e in again] == [_without_priors(e) for e in from_columns(cols)]


def test_edge_decoding_costs_in_proportion_to_the_input() -> None:
    """The count search that once recovered visit counts from floats (up to 6.7 MB per
    crafted row, issue 16) is gone: floats are stored as they came."""
    g = game_examples(2, seed=11, runs=800, max_moves=60)
    examples = _float_targets([e for x in g for e in x], seed=2) * 4
    # Rows of visit fractions with huge counts, the shape the search struggled with.
    for e in examples[::2]:
        mask = decode_array(e.action_mask, 0, "m").reshape(-1)
        c = np.zeros(POLICY_SIZE, np.float64)
        c[mask] = np.arange(60_000, 60_000 + mask.sum())
        e.move_probs = npy_bytes((c / c.sum()).astype(np.float32).reshape(MASK_SHAPE))
    size = sum(e.ByteSize() for e in examples)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        cols = to_columns(examples, "t")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 10
    assert codec.num_rows(cols) == len(examples)
    assert peak < 4 * size, (peak, size)


def test_batch_board_decoding_matches_the_input() -> None:
    examples = [e for g in game_examples(2, seed=12, runs=10, max_moves=40) for e in g]
    cols = to_columns(examples, "t")
    batch = codec.decode(cols)
    np.testing.assert_array_equal(
        batch.boards, np.stack([decode_array(e.board, 0, "b") for e in examples])
    )
    np.testing.assert_array_equal(
        batch.masks, np.stack([decode_array(e.action_mask, 0, "m") for e in examples])
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
    cells, grass, flags_left = codec.pack_boards(board[None], "t")
    np.testing.assert_array_equal(codec.decode_boards(cells, grass, flags_left)[0], board)


@pytest.fixture(scope="module")
def few_examples() -> list:
    return game_examples(1, seed=13, runs=10, max_moves=3)[0]


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
def test_unencodable_boards_are_rejected(few_examples: list, change, message: str) -> None:
    g = [hexz_pb2.TrainingExample.FromString(e.SerializeToString()) for e in few_examples]
    board = decode_array(g[1].board, 0, "b").copy()
    change(board)
    g[1].board = npy_bytes(board)
    with pytest.raises(ValueError, match=f"where example 1: .*{message}"):
        to_columns(g, "where")


def test_bad_result_and_corrupt_bytes_are_rejected(few_examples: list) -> None:
    g = [hexz_pb2.TrainingExample.FromString(e.SerializeToString()) for e in few_examples]
    g[2].result = 0.5
    with pytest.raises(ValueError, match="w example 2: result is not -1, 0 or 1"):
        to_columns(g, "w")
    g[2].result = 1
    g[0].board = b"\x93NUMPY garbage"
    with pytest.raises(ValueError, match="w example 0: board: cannot decode"):
        to_columns(g, "w")


# ----------------------------------------------------------------- format versions


def _v1_source() -> list[hexz_pb2.TrainingExample]:
    data = gzip.decompress((V1 / "examples.pb.gz").read_bytes())
    return list(hexz_pb2.AddTrainingExamplesRequest.FromString(data).examples)


def _check_v1_columns(cols: codec.Columns) -> None:
    """Format 1 columns, read today, hold what the source examples held."""
    source = _v1_source()
    codec.check(cols, "v1")
    assert codec.num_rows(cols) == len(source) == 28
    assert np.isnan(cols["root_q"].astype(np.float32)).all()
    np.testing.assert_array_equal(cols["probs_rows"], [24, 25, 26, 27])
    want = codec.decode(to_columns(source, "source"))
    got = codec.decode(cols)
    for field in ("boards", "masks", "move_probs", "results"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)
    back = from_columns(cols)
    assert [_without_priors(e) for e in back] == [_without_priors(e) for e in source]


def test_format_1_blobs_stay_readable() -> None:
    blob = (V1 / "entry-HXZC1.bin").read_bytes()
    assert codec.blob_version(blob) == 1
    _check_v1_columns(codec.from_blob(blob))


def test_format_1_chunks_stay_readable_for_training_and_export(tmp_path: Path) -> None:
    ds = Dataset(tmp_path)
    shutil.copy(V1 / "chunk-00000000-00000000-28.npz", tmp_path)
    (chunk,) = ds.chunks()
    assert chunk.version == 1 and ds.last_stream_id() == "1700000000000-0"
    _check_v1_columns(ds.read_chunk(chunk))
    source = codec.decode(to_columns(_v1_source(), "source"))
    window = ds.window(10)
    batch = window.batch(np.arange(10))
    np.testing.assert_array_equal(batch.move_probs, source.move_probs[18:])
    np.testing.assert_array_equal(batch.boards, source.boards[18:])
    assert np.isnan(batch.root_q).all()
    # A new chunk after it is format 2; compaction merges both into format 2.
    (cols,) = game_columns(1, seed=14, runs=5, max_moves=10)
    ds.append(cols, "1700000000001-0")
    assert [c.version for c in ds.chunks()] == [1, 2]
    (tmp_path / "archived").write_text(str(ds.chunks()[-1].last))
    assert Dataset(tmp_path, compact_below=1000).compact() == 0  # fewer than 4 chunks
    merged = codec.concat([ds.read_chunk(c) for c in ds.chunks()])
    ds._write(0, 1, merged, "1700000000001-0", "ts")
    ((merged_chunk),) = ds.chunks()
    assert merged_chunk.version == codec.FORMAT_VERSION
    _equal(ds.read_chunk(merged_chunk), merged)


def test_chunks_of_an_unknown_format_are_refused(tmp_path: Path) -> None:
    ds = Dataset(tmp_path)
    (cols,) = game_columns(1, seed=15, runs=5, max_moves=10)
    chunk = ds.append(cols, "1-0")
    chunk.path.rename(tmp_path / "chunk-00000001-00000001-10.v9.npz")
    with pytest.raises(codec.FormatError, match="format version 9; this code reads"):
        ds.window(10)
    with pytest.raises(codec.FormatError, match="format version 9"):
        ds.last_stream_id()


@pytest.fixture(scope="module")
def small_game() -> codec.Columns:
    return game_columns(1, seed=16, runs=5, max_moves=8)[0]


# 300 cases in the default run; the `thorough` profile's 10,000 when it is chosen.
@settings(max_examples=max(300, settings.default.max_examples), deadline=None)
@given(data=st.data())
def test_a_damaged_blob_is_refused_or_well_formed(small_game, data: st.DataObject) -> None:
    """Flipped, cut or inserted bytes anywhere in a blob (the compressed stream, or the
    header and arrays inside it): FormatError, or columns that every reader takes."""
    cols = small_game
    body = zlib.decompress(codec.to_blob(cols)[5:])
    target = data.draw(st.sampled_from(["blob", "body"]))
    raw = bytearray(codec.to_blob(cols) if target == "blob" else body)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip":
            raw[i] ^= data.draw(st.integers(1, 255))
        elif action == "cut":
            del raw[i : i + data.draw(st.integers(1, 64))]
        else:
            raw[i:i] = data.draw(st.binary(min_size=1, max_size=16))
    blob = bytes(raw) if target == "blob" else b"HXZC2" + zlib.compress(bytes(raw))
    try:
        out = codec.from_blob(blob)
    except codec.FormatError:
        return
    codec.check(out, "fuzzed")
    codec.decode(out)
    codec.take_rows(out, np.arange(codec.num_rows(out)))
    from_columns(out)
