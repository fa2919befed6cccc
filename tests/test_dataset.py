"""The trainer's on-disk dataset: chunks, newest-window reads, batch decoding, sampling."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from synthetic import game_columns, game_examples

from hexz_tasks import codec
from hexz_tasks.dataset import Batch, Dataset
from hexz_tasks.examples import to_columns
from hexz_tasks.settings import Settings
from hexz_tasks.training import batch_indices


@pytest.fixture(scope="module")
def examples() -> list[codec.Columns]:
    """Self-play games, and one batch from the edge (float targets, no root_q)."""
    games = game_columns(4, seed=11, runs=40, max_moves=50)
    edge = to_columns(game_examples(1, seed=12, runs=20, max_moves=30)[0], "edge")
    return [*games[:2], edge, *games[2:]]


def _expected(examples: list[codec.Columns]) -> Batch:
    """All rows decoded at once (the window gathers them chunk by chunk)."""
    return codec.decode(codec.concat(examples))


def _filled(root: Path, examples: list[codec.Columns]) -> Dataset:
    ds = Dataset(root)
    for i, g in enumerate(examples):
        ds.append(g, last_stream_id=f"{i + 1}-0")
    return ds


def _assert_rows(b: Batch, want: Batch, rows: np.ndarray) -> None:
    for field in ("boards", "masks", "move_probs", "results", "root_q"):
        np.testing.assert_array_equal(getattr(b, field), getattr(want, field)[rows], field)


def test_window_holds_exactly_the_newest_examples(tmp_path: Path, examples: list) -> None:
    ds = _filled(tmp_path, examples)
    want = _expected(examples)
    n = len(want.results)
    last = codec.num_rows(examples[-1])
    assert ds.count() == n
    assert ds.last_stream_id() == f"{len(examples)}-0"
    for w in (1, 7, last, last + 3, n - 1, n, n + 100):
        win = ds.window(w)
        k = min(w, n)
        assert len(win) == k
        _assert_rows(win.batch(np.arange(k)), want, np.arange(n - k, n))  # bit for bit


def test_batches_in_any_order_with_repeats(tmp_path: Path, examples: list) -> None:
    ds = _filled(tmp_path, examples)
    want = _expected(examples)
    win = ds.window(10**6)
    idx = np.random.default_rng(0).integers(0, len(win), 300)
    b = win.batch(idx)
    _assert_rows(b, want, idx)
    assert b.boards.dtype == np.float32 and b.masks.dtype == bool
    assert b.root_q.dtype == np.float32 and b.root_q.shape == (300,)
    from_edge = np.isnan(b.root_q)
    assert 0 < from_edge.sum() < 300  # the edge batch has none, self-play every one


def test_temporary_and_covered_chunks_are_ignored(tmp_path: Path, examples: list) -> None:
    ds = _filled(tmp_path, examples[:2])
    (tmp_path / ".tmp-chunk-00000002-00000002-9.npz-1").write_bytes(b"partial")
    count = ds.count()
    # A merged chunk written before its parts were deleted (interrupted compaction).
    merged = codec.concat([ds.read_chunk(c) for c in ds.chunks()])
    ds._write(0, 1, merged, "2-0", "ts")
    assert ds.count() == count
    assert len(ds.chunks()) == 1


def test_corrupt_chunk_names_the_file(tmp_path: Path, examples: list) -> None:
    ds = _filled(tmp_path, examples[:1])
    (chunk,) = ds.chunks()
    data = chunk.path.read_bytes()
    for damaged in (b"not a zip", data[: len(data) // 2], data[:-300] + bytes(300)):
        chunk.path.write_bytes(damaged)
        with pytest.raises(ValueError, match=re.escape(f"corrupt example chunk {chunk.path}")):
            ds.window(10)


def test_window_mode_batches_cover_every_example_once_per_epoch() -> None:
    s = Settings(batch_size=64, num_epochs=3, shuffle=True)
    batches = batch_indices(s, 1000, np.random.default_rng(0))
    assert len(batches) == 3 * 16
    per_epoch = np.concatenate(batches[:16])
    assert sorted(per_epoch.tolist()) == list(range(1000))
    assert not np.array_equal(per_epoch, np.arange(1000))  # shuffled
    unshuffled = batch_indices(s.replace(shuffle=False), 1000, np.random.default_rng(0))
    np.testing.assert_array_equal(np.concatenate(unshuffled[:16]), np.arange(1000))


def test_replay_mode_samples_with_replacement() -> None:
    s = Settings(training_mode="replay", replay_buffer_size=4096, batch_size=256)
    batches = batch_indices(s, 500, np.random.default_rng(0))
    assert len(batches) == 4096 // 256
    idx = np.concatenate(batches)
    assert idx.min() >= 0 and idx.max() < 500
    assert len(np.unique(idx)) < len(idx)  # repeats: sampled with replacement
    assert all(len(b) == 256 for b in batches)


def _rezip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


@pytest.fixture(scope="module")
def chunk_file(tmp_path_factory: pytest.TempPathFactory, examples: list) -> tuple[str, bytes]:
    """Name and bytes of one chunk file (an edge batch: float targets among them)."""
    (chunk,) = _filled(tmp_path_factory.mktemp("chunk"), examples[2:3]).chunks()
    return chunk.path.name, chunk.path.read_bytes()


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_damaged_chunk_file_is_refused_naming_it_or_read_whole(
    tmp_path_factory: pytest.TempPathFactory, chunk_file: tuple[str, bytes], data: st.DataObject
) -> None:
    """Flipped, cut or inserted bytes in a chunk file, in its zip or inside one of its
    arrays (re-zipped, so the zip itself is sound): every reader of the trainer (the
    newest stream id, the archive writer, the training window and its batches) raises
    a ValueError naming the file, or reads well-formed examples. `pytest
    --hypothesis-profile=thorough` runs 10,000 cases."""
    name, raw = chunk_file
    ds = Dataset(tmp_path_factory.mktemp("damaged"))
    (ds.root / name).write_bytes(raw)
    (chunk,) = ds.chunks()
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        members = {name: z.read(name) for name in z.namelist()}
    target = data.draw(st.sampled_from(["file", *sorted(members)]))
    damaged = bytearray(raw if target == "file" else members[target])
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(damaged) - 1))
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip":
            damaged[i] ^= data.draw(st.integers(1, 255))
        elif action == "cut":
            del damaged[i : i + data.draw(st.integers(1, 64))]
        else:
            damaged[i:i] = data.draw(st.binary(min_size=1, max_size=16))
    out = bytes(damaged) if target == "file" else _rezip({**members, target: bytes(damaged)})
    chunk.path.write_bytes(out)
    named = re.escape(str(chunk.path))
    for read in (
        ds.last_stream_id,
        lambda: ds.chunk_timestamp(chunk),
        lambda: codec.check(ds.read_chunk(chunk), "read"),
    ):
        try:
            read()
        except ValueError as e:
            assert re.search(named, str(e)), e
    try:
        window = ds.window(10**6)
    except ValueError as e:
        assert re.search(named, str(e)), e
        return
    b = window.batch(np.arange(len(window)))
    assert len(b.results) == len(window) <= chunk.count
    assert np.isfinite(b.move_probs).all() and np.isfinite(b.boards).all()
