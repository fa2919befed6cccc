"""The trainer's on-disk dataset: chunks, newest-window reads, batch decoding, sampling."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from hexz_tasks import codec, synthetic
from hexz_tasks.dataset import Dataset
from hexz_tasks.examples import decode_array
from hexz_tasks.settings import Settings
from hexz_tasks.training import batch_indices


@pytest.fixture(scope="module")
def examples() -> list:
    rng = np.random.default_rng(11)
    return [synthetic.game_examples(rng, runs=40, max_moves=50) for _ in range(5)]


def _expected(examples: list) -> tuple[np.ndarray, ...]:
    flat = [e for g in examples for e in g]
    boards = np.stack([decode_array(e.board, 0, "b") for e in flat])
    masks = np.stack([decode_array(e.action_mask, 0, "m") for e in flat])
    probs = np.stack([decode_array(e.move_probs, 0, "p").reshape(-1) for e in flat])
    results = np.array([e.result for e in flat], np.float32)
    return boards, masks, probs, results


def _filled(root: Path, examples: list) -> Dataset:
    ds = Dataset(root)
    for i, g in enumerate(examples):
        ds.append(codec.encode_examples(g, f"g{i}"), last_stream_id=f"{i + 1}-0")
    return ds


def test_window_holds_exactly_the_newest_examples(tmp_path: Path, examples: list) -> None:
    ds = _filled(tmp_path, examples)
    boards, masks, probs, results = _expected(examples)
    n = len(results)
    assert ds.count() == n
    assert ds.last_stream_id() == f"{len(examples)}-0"
    for w in (1, 7, len(examples[-1]), len(examples[-1]) + 3, n - 1, n, n + 100):
        win = ds.window(w)
        k = min(w, n)
        assert len(win) == k
        b = win.batch(np.arange(k))
        np.testing.assert_array_equal(b.boards, boards[n - k :])
        np.testing.assert_array_equal(b.masks, masks[n - k :])
        np.testing.assert_array_equal(b.move_probs, probs[n - k :])  # bit for bit
        np.testing.assert_array_equal(b.results, results[n - k :])


def test_batches_in_any_order_with_repeats(tmp_path: Path, examples: list) -> None:
    ds = _filled(tmp_path, examples)
    boards, masks, probs, results = _expected(examples)
    win = ds.window(10**6)
    idx = np.random.default_rng(0).integers(0, len(win), 300)
    b = win.batch(idx)
    np.testing.assert_array_equal(b.boards, boards[idx])
    np.testing.assert_array_equal(b.masks, masks[idx])
    np.testing.assert_array_equal(b.move_probs, probs[idx])
    np.testing.assert_array_equal(b.results, results[idx])
    assert b.boards.dtype == np.float32 and b.masks.dtype == bool


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
    chunk.path.write_bytes(b"not a zip")
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
