"""The trainer's on-disk example dataset: append-only chunk files of compact columns.

Layout: ``<model dir>/examples-store/chunk-<first>-<last>-<count>.v<version>.npz``, where
first..last is the range of sequence numbers the chunk covers (a drain writes [s, s];
compaction merges small neighbours into [a, b] and then deletes them, and a listing
ignores any chunk covered by a wider one, so a crash in between doubles nothing) and
version the format of its columns (hexz_tasks.codec; a name without one is format 1).
Each .npz holds the codec columns plus ``meta`` (JSON bytes: last stream id, timestamp);
no pickle. Every file is written to a temporary name, fsynced and renamed. Reading a
chunk of an unknown format version fails with a message saying so.

:meth:`Dataset.window` loads the newest W examples (training columns only) into a
:class:`Window`, whose :meth:`Window.batch` decodes a batch of rows with NumPy only.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import re
import zipfile
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from tokenize import TokenError
from typing import Any

import numpy as np

from hexz_tasks import codec
from hexz_tasks.codec import Batch
from hexz_tasks.files import atomic_write, utc_timestamp
from hexz_tasks.layout import CELLS, GRASS_BYTES, MASK_BYTES, MASK_SHAPE, POLICY_SIZE

__all__ = ["Batch", "Chunk", "Dataset", "Window"]

_CHUNK_RE = re.compile(r"^chunk-(\d{8})-(\d{8})-(\d+)(?:\.v(\d+))?\.npz$")
_STREAM_ID_RE = re.compile(r"\d{1,20}-\d{1,20}")
# What reading a damaged chunk file raises (a JSON or UTF-8 error is a ValueError, an
# unparsable .npy header a SyntaxError or TokenError).
_READ_ERRORS = (
    OSError, ValueError, KeyError, EOFError, SyntaxError, TokenError, zipfile.BadZipFile,
    zlib.error,
)  # fmt: skip


@dataclass(frozen=True)
class Chunk:
    first: int
    last: int
    count: int
    path: Path
    version: int = codec.FORMAT_VERSION

    def meta(self) -> dict:
        """{"last_stream_id", "timestamp", ...}; FormatError naming the file if corrupt."""
        what = f"example chunk {self.path}"
        codec.check_version(self.version, what)
        try:
            with np.load(self.path, allow_pickle=False) as z:
                meta = json.loads(_array(z, "meta").tobytes().decode())
            stream_id, timestamp = meta["last_stream_id"], meta["timestamp"]
        except FileNotFoundError:
            raise  # compacted or collected meanwhile: gone, not corrupt
        except (*_READ_ERRORS, TypeError) as e:
            raise codec.FormatError(f"corrupt {what}: {e}") from e
        if not isinstance(timestamp, str) or not (
            stream_id is None or (isinstance(stream_id, str) and _STREAM_ID_RE.fullmatch(stream_id))
        ):
            raise codec.FormatError(f"corrupt {what}: meta {str(meta)[:200]}")
        return meta


def _array(npz: Any, name: str) -> np.ndarray:
    """Member `name` of an open .npz; ValueError if it is not an array (np.load hands out
    such a member as raw bytes)."""
    value = npz[name]
    if not isinstance(value, np.ndarray):
        raise ValueError(f"{name} is not an array")
    return value


class _Part:
    """Training columns of one chunk (or its tail), as read from disk: never copied."""

    def __init__(self, cols: codec.Columns) -> None:
        self.cells = cols["board_cells"]
        self.grass = cols["board_grass"]
        self.flags_left = cols["flags_left"]
        self.mask = cols["mask"]
        self.counts = cols["counts"]
        self.result = cols["result"]
        self.root_q = cols["root_q"]
        n = len(self.result)
        self.offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(codec.mask_popcount(self.mask), out=self.offsets[1:])
        # Rows whose policy targets are kept as floats: their index into probs.
        self.float_index = np.full(n, -1, dtype=np.int32)
        self.float_index[cols["probs_rows"]] = np.arange(len(cols["probs_rows"]))
        self.float_probs = cols["probs"]

    def __len__(self) -> int:
        return len(self.result)

    def move_probs(self, idx: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """(B, 220) float32 targets of rows `idx`; `masks` (B, 220) bool are their masks."""
        starts = self.offsets[idx]
        lens = self.offsets[idx + 1] - starts
        # Positions of the selected rows' ragged entries, in row order.
        shift = np.repeat(starts - (np.cumsum(lens) - lens), lens)
        dense = codec.dense_by_mask(
            self.counts[shift + np.arange(shift.size)], masks, self.counts.dtype
        )
        floats = self.float_index[idx]
        rows = np.flatnonzero(floats >= 0)
        return codec.move_probs(dense, rows, self.float_probs[floats[rows]])


class Window:
    """The training columns of N examples in memory (one part per chunk, not copied
    together); batches are gathered and decoded vectorised."""

    def __init__(self, parts: list[_Part]) -> None:
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def batch(self, idx: np.ndarray) -> Batch:
        """Decodes rows `idx` (any order, repeats allowed)."""
        b = len(idx)
        cells = np.empty((b, 2, CELLS), np.uint8)
        grass = np.empty((b, GRASS_BYTES), np.uint8)
        flags_left = np.empty((b, 2), np.uint8)
        packed = np.empty((b, MASK_BYTES), np.uint8)
        results = np.empty(b, np.float32)
        root_q = np.empty(b, np.float32)
        probs = np.empty((b, POLICY_SIZE), np.float32)
        part_of = np.searchsorted(self.starts, idx, side="right") - 1
        order = np.argsort(part_of, kind="stable")
        bounds = np.searchsorted(part_of[order], np.arange(len(self.parts) + 1))
        masks = np.empty((b, POLICY_SIZE), bool)
        for k, part in enumerate(self.parts):
            sel = order[bounds[k] : bounds[k + 1]]
            if not len(sel):
                continue
            local = idx[sel] - self.starts[k]
            cells[sel] = part.cells[local]
            grass[sel] = part.grass[local]
            flags_left[sel] = part.flags_left[local]
            packed[sel] = part.mask[local]
            results[sel] = part.result[local]
            root_q[sel] = part.root_q[local]
            masks[sel] = codec.unpack_masks(packed[sel]).reshape(len(sel), -1)
            probs[sel] = part.move_probs(local, masks[sel])
        boards = codec.decode_boards(cells, grass, flags_left)
        return Batch(boards, masks.reshape(b, *MASK_SHAPE), probs, results, root_q)


class Dataset:
    """Append-only chunk files of examples, next to the model repository."""

    def __init__(self, root: Path, compact_below: int = 1 << 15) -> None:
        """Chunks smaller than `compact_below` examples get merged once several pile up."""
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.compact_below = compact_below

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive across processes: only one drain or compaction at a time."""
        with open(self.root / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def chunks(self) -> list[Chunk]:
        """Live chunks in sequence order (chunks covered by a merged one are skipped)."""
        found = []
        for name in os.listdir(self.root):
            m = _CHUNK_RE.match(name)
            if m:
                first, last, count = (int(g) for g in m.groups()[:3])
                version = int(m[4]) if m[4] else 1
                found.append(Chunk(first, last, count, self.root / name, version))
        found.sort(key=lambda c: (c.first, -c.last))
        live: list[Chunk] = []
        for c in found:
            if live and c.last <= live[-1].last:
                continue  # covered by a merged chunk: a leftover of an interrupted compaction
            live.append(c)
        return live

    def count(self) -> int:
        return sum(c.count for c in self.chunks())

    def last_stream_id(self) -> str | None:
        """The newest Redis stream id on disk (chunks not written by a drain have none)."""
        for chunk in reversed(self.chunks()):
            if (sid := chunk.meta()["last_stream_id"]) is not None:
                return sid
        return None

    def append(self, cols: codec.Columns, last_stream_id: str | None) -> Chunk:
        """Writes a new chunk after the newest one; appears complete or not at all."""
        chunks = self.chunks()
        seq = chunks[-1].last + 1 if chunks else 0
        return self._write(seq, seq, cols, last_stream_id, utc_timestamp())

    def _write(
        self, first: int, last: int, cols: codec.Columns, stream_id: str | None, ts: str
    ) -> Chunk:
        n = codec.num_rows(cols)
        version = codec.FORMAT_VERSION
        path = self.root / f"chunk-{first:08d}-{last:08d}-{n}.v{version}.npz"
        meta = json.dumps({"last_stream_id": stream_id, "timestamp": ts, "format": version})
        buf = io.BytesIO()
        np.savez_compressed(buf, meta=np.frombuffer(meta.encode(), dtype=np.uint8), **cols)
        atomic_write(path, buf.getvalue())
        return Chunk(first, last, n, path, version)

    def read_chunk(self, chunk: Chunk, columns: tuple[str, ...] | None = None) -> codec.Columns:
        """The chunk's columns (all, or the named ones) in the current format, whatever
        format it was written in; FormatError for a corrupt chunk or an unknown format."""
        what = f"example chunk {chunk.path}"
        codec.check_version(chunk.version, what)
        try:
            with np.load(chunk.path, allow_pickle=False) as z:
                if columns is None:
                    names = [k for k in z.files if k != "meta"]
                else:
                    names = codec.stored_names(chunk.version, columns)
                cols = {k: _array(z, k) for k in names}
        except FileNotFoundError:
            raise  # compacted or collected meanwhile: gone, not corrupt
        except _READ_ERRORS as e:
            raise codec.FormatError(f"corrupt {what}: {e}") from e
        return codec.upgrade(cols, chunk.version, what, complete=columns is None)

    # --- archives (written once per chunk, see store.write_pending_archives) ---
    def _archived_upto(self) -> int:
        try:
            return int((self.root / "archived").read_text())
        except FileNotFoundError:
            return -1

    def unarchived_chunks(self) -> list[Chunk]:
        upto = self._archived_upto()
        return [c for c in self.chunks() if c.last > upto]

    def mark_archived(self, chunk: Chunk) -> None:
        atomic_write(self.root / "archived", str(chunk.last).encode())

    def chunk_timestamp(self, chunk: Chunk) -> str:
        return chunk.meta()["timestamp"]

    # --- compaction ---
    def compact(self, max_count: int = 1 << 16) -> int:
        """Merges runs of small archived chunks (call under lock()); returns files merged."""
        upto = self._archived_upto()
        chunks = [c for c in self.chunks() if c.last <= upto]
        merged = 0
        run: list[Chunk] = []

        def flush() -> None:
            nonlocal merged
            if len(run) >= 4:
                parts = [self.read_chunk(c) for c in run]
                meta = run[-1].meta()
                self._write(run[0].first, run[-1].last, codec.concat(parts),
                            meta["last_stream_id"], meta["timestamp"])  # fmt: skip
                for c in run:
                    c.path.unlink()
                merged += len(run)
            run.clear()

        for c in chunks:
            if c.count >= self.compact_below or sum(r.count for r in run) + c.count > max_count:
                flush()
            if c.count < self.compact_below:
                run.append(c)
        flush()
        return merged

    # --- training reads ---
    def window(self, n: int, threads: int = 4) -> Window:
        """The newest `n` examples (fewer if the dataset is smaller)."""
        picked: list[tuple[Chunk, int]] = []
        need = n
        for c in reversed(self.chunks()):
            if need <= 0:
                break
            picked.append((c, max(0, c.count - need)))
            need -= c.count
        picked.reverse()
        if not picked:
            raise ValueError(f"no examples in {self.root}")

        def load(item: tuple[Chunk, int]) -> _Part:
            chunk, start = item
            cols = self.read_chunk(chunk, codec.TRAINING_COLUMNS)
            if start:
                cols = codec.take_rows(cols, np.arange(start, codec.num_rows(cols)))
            return _Part(cols)

        with ThreadPoolExecutor(threads) as pool:
            return Window(list(pool.map(load, picked)))
