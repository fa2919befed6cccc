"""The trainer's on-disk dataset: chunks, newest-window reads, batch decoding, sampling."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
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
