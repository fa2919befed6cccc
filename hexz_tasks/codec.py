"""The example store's format: a batch of examples as named NumPy arrays ("columns").

One format from the engine to the trainer: the C++ self-play driver hands Python each
finished game in these columns (workers/engine/selfplay.h, ExampleColumns), a Redis
stream entry holds one batch as a blob (:func:`to_blob`), the trainer's chunk files hold
the same columns (hexz_tasks.dataset), and :func:`decode` turns rows into the network's
inputs and targets. Protobuf TrainingExamples exist only at the edges (the gRPC
TrainingService, ``hexz import/export``, the archives): see hexz_tasks.examples.

Format version 2 (:data:`FORMAT_VERSION`); per example, n examples in a batch:

- ``board_cells`` (n, 2, 110) u1, ``board_grass`` (n, 55) u1, ``flags_left`` (n, 2) u1:
  the board packed from the player to move's view (hexz_tasks.layout); lossless.
- ``mask`` (n, 28) u1: the legal moves as bits.
- ``counts`` u2 (u4 where a count does not fit), ragged: the root's visit count of each legal
  move (one entry per set mask bit, in policy index order). The policy target is
  ``float32(count) / float32(sum of the row's counts)``.
- ``probs_rows`` (k,) i4 (ascending) and ``probs`` (k, 220) f4: rows whose policy target
  is kept as floats instead (examples from the edge, which arrive as floats; a search
  whose budget left no child visited, whose target is the priors). Their counts are 0.
- ``result`` (n,) i1: the final result for the player to move (-1, 0, 1).
- ``root_q`` (n,) f2: the root's search value (mean backed-up result, player to move's
  view); NaN where unknown (examples from the edge or of format version 1).
- ``value`` (n,) f4: the network's value of the root (mixed with random playouts, as
  the search used it, when RANDOM_PLAYOUTS > 0); ``priors`` f2, ragged like counts: the
  root's priors (noise included).
- ``turn`` (n,) i4; ``move`` (n, 5) i4: the move played as GameEngineMove (player_num,
  move number, row, col, cell_type); ``unix_micros`` (n,) i8.
- ``model_ckpt`` (n,) i4, ``model_name_idx`` (n,) i2 into ``names`` (u1: JSON list of
  model names): the model whose network the search used.
- ``stats`` (n, 9) (:data:`STATS_FIELDS`), ``duration_micros`` (n,) i8,
  ``selected_child_q`` (n,) f4, ``depth_len`` (n, 2) i4 and the ragged
  ``nodes_per_depth``, ``max_visit_count_per_depth``: TrainingExample.Stats (the
  integer columns u2 where all entries fit, else i4).
- ``has`` (n,) u1: which optional parts of a TrainingExample the row carries (HAS_*).

Format version 1 (``HXZC1`` blobs, chunk files without a version in their name) is read
by :func:`upgrade`: its ``probs_exc_rows``/``probs_exc`` are ``probs_rows``/``probs``,
its stats are protobuf bytes (``stats_len``, ``stats_pb``) and it has no ``root_q``.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from hexz_tasks.errors import FormatError
from hexz_tasks.layout import (
    BOARD_SHAPE,
    CELLS,
    CH_FLAGS_LEFT,
    CH_GRASS,
    GRASS_BYTES,
    MASK_BYTES,
    MASK_SHAPE,
    PACKED_CELL,
    PLAYER_CHANNELS,
    POLICY_SIZE,
)

Columns = dict[str, np.ndarray]

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)

# `has` bits: which optional parts of a TrainingExample the row carries.
HAS_MOVE, HAS_PREDICTIONS, HAS_MODEL_KEY, HAS_STATS, HAS_PRIORS = 1, 2, 4, 8, 16
HAS_ALL = HAS_MOVE | HAS_PREDICTIONS | HAS_MODEL_KEY | HAS_STATS | HAS_PRIORS

STATS_FIELDS = (
    "valid_moves", "visit_count", "visited_children", "search_depth", "search_tree_size",
    "branch_nodes", "min_child_vc", "max_child_vc", "selected_child_vc",
)  # fmt: skip


@dataclass(frozen=True)
class Column:
    """How a column is laid out: `per` says what one entry belongs to ("row": an
    example, "mask": a legal move, "depth0"/"depth1": a search depth of the first/second
    per-depth list, "float": a row in probs_rows, "bytes": free-form), `dtypes` the
    element types a reader accepts (writers write the first that fits), `shape` one
    entry's shape."""

    per: str
    dtypes: tuple[str, ...]
    shape: tuple[int, ...] = ()


SCHEMA: dict[str, Column] = {
    "board_cells": Column("row", ("|u1",), (2, CELLS)),
    "board_grass": Column("row", ("|u1",), (GRASS_BYTES,)),
    "flags_left": Column("row", ("|u1",), (2,)),
    "mask": Column("row", ("|u1",), (MASK_BYTES,)),
    "counts": Column("mask", ("<u2", "<u4")),
    "probs_rows": Column("float", ("<i4",)),
    "probs": Column("float", ("<f4",), (POLICY_SIZE,)),
    "result": Column("row", ("|i1",)),
    "root_q": Column("row", ("<f2",)),
    "value": Column("row", ("<f4",)),
    "priors": Column("mask", ("<f2",)),
    "turn": Column("row", ("<i4",)),
    "move": Column("row", ("<i4",), (5,)),
    "unix_micros": Column("row", ("<i8",)),
    "model_ckpt": Column("row", ("<i4",)),
    "model_name_idx": Column("row", ("<i2",)),
    "names": Column("bytes", ("|u1",)),
    "stats": Column("row", ("<u2", "<i4"), (len(STATS_FIELDS),)),
    "duration_micros": Column("row", ("<i8",)),
    "selected_child_q": Column("row", ("<f4",)),
    "depth_len": Column("row", ("<i4",), (2,)),
    "nodes_per_depth": Column("depth0", ("<u2", "<i4")),
    "max_visit_count_per_depth": Column("depth1", ("<u2", "<i4")),
    "has": Column("row", ("|u1",)),
}
# Integer columns stored as u2 where every entry fits (see narrow).
_NARROWED = ("counts", "stats", "nodes_per_depth", "max_visit_count_per_depth")
# What training reads (the rest is for export and statistics).
TRAINING_COLUMNS = (
    "board_cells", "board_grass", "flags_left", "mask", "counts", "probs_rows", "probs",
    "result", "root_q",
)  # fmt: skip


# ----------------------------------------------------------------- boards and masks


def pack_boards(boards: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cells, grass, flags_left) of (n, 11, 11, 10) float boards, as the engine packs
    them (Board::Pack); ValueError naming `where` and the example for values that do
    not fit (non-integers, flag/blocked not 0/1, values above 7, a flags-left channel
    that is not constant)."""
    n = len(boards)
    b = boards.reshape(n, BOARD_SHAPE[0], CELLS)  # (n, channel, cell)
    reject_first(~np.isfinite(b).all(axis=(1, 2)), where, "board contains NaN or infinity")
    reject_first(((b < 0) | (b > 255)).any(axis=(1, 2)), where, "board values outside 0..255")
    bi = b.astype(np.uint8)
    reject_first((bi != b).any(axis=(1, 2)), where, "board values are not integers")
    bits = {ch: width for ch, _, width in PACKED_CELL}
    ones = [PLAYER_CHANNELS * p + ch for p in range(2) for ch in bits if bits[ch] == 1]
    sevens = [PLAYER_CHANNELS * p + ch for p in range(2) for ch in bits if bits[ch] == 3]
    reject_first((bi[:, ones] > 1).any(axis=(1, 2)), where, "flag/blocked not 0 or 1")
    reject_first((bi[:, [*sevens, CH_GRASS]] > 7).any(axis=(1, 2)), where, "board values above 7")
    fl = bi[:, [CH_FLAGS_LEFT, PLAYER_CHANNELS + CH_FLAGS_LEFT]]  # (n, 2, cell)
    reject_first((fl != fl[:, :, :1]).any(axis=(1, 2)), where, "flags-left channel not constant")
    cells = np.zeros((n, 2, CELLS), dtype=np.uint8)
    for p in range(2):
        for ch, shift, _ in PACKED_CELL:
            cells[:, p] |= bi[:, PLAYER_CHANNELS * p + ch] << shift
    grass = bi[:, CH_GRASS, 0::2] | (bi[:, CH_GRASS, 1::2] << 4)
    return cells, grass, np.ascontiguousarray(fl[:, :, 0])


def reject_first(bad: np.ndarray, where: str, message: str) -> None:
    """ValueError naming `where`, the first example flagged in `bad` and the problem."""
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{where} example {i}: {message}")


# Decoding tables: cell byte -> board channel of its player, grass byte -> two cells.
_CELL_LUTS = {
    ch: np.array([(i >> shift) & ((1 << width) - 1) for i in range(256)], dtype=np.float32)
    for ch, shift, width in PACKED_CELL
}
_GRASS_LO = np.arange(256, dtype=np.uint8) & 15
_GRASS_HI = np.arange(256, dtype=np.uint8) >> 4


def decode_boards(cells: np.ndarray, grass: np.ndarray, flags_left: np.ndarray) -> np.ndarray:
    """(B, 11, 11, 10) float32 boards from the packed columns, vectorised (np.take
    releases the GIL, so several threads decode in parallel)."""
    n = len(cells)
    out = np.empty((n, BOARD_SHAPE[0], CELLS), dtype=np.float32)
    for p in range(2):
        base = PLAYER_CHANNELS * p
        for ch, lut in _CELL_LUTS.items():
            np.take(lut, cells[:, p], out=out[:, base + ch])
        out[:, base + CH_FLAGS_LEFT] = flags_left[:, p, None]
    out[:, CH_GRASS, 0::2] = _GRASS_LO[grass]
    out[:, CH_GRASS, 1::2] = _GRASS_HI[grass]
    return out.reshape(n, *BOARD_SHAPE)


def pack_masks(masks: np.ndarray) -> np.ndarray:
    """(n, 28) bit-packed masks of (n, 220) or (n, 2, 11, 10) bool masks."""
    bits = np.packbits(masks.reshape(len(masks), POLICY_SIZE), axis=1, bitorder="little")
    return np.pad(bits, ((0, 0), (0, MASK_BYTES - bits.shape[1])))


def unpack_masks(mask: np.ndarray) -> np.ndarray:
    """(B, 2, 11, 10) bool from (B, 28) bit-packed masks."""
    bits = np.unpackbits(mask, axis=1, count=POLICY_SIZE, bitorder="little")
    return bits.view(bool).reshape(len(mask), *MASK_SHAPE)


def mask_popcount(mask: np.ndarray) -> np.ndarray:
    """Number of legal moves per row of a packed mask column (int64)."""
    if len(mask) == 0:
        return np.zeros(0, dtype=np.int64)
    if not hasattr(np, "bitwise_count"):  # NumPy < 2.0
        return np.unpackbits(mask, axis=1).sum(axis=1, dtype=np.int64)
    words = np.ascontiguousarray(mask).view("<u4")  # (N, 7): 28 bytes per row
    return np.bitwise_count(words).sum(axis=1, dtype=np.int64)


# ----------------------------------------------------------------- rows and batches


def num_rows(cols: Columns) -> int:
    return len(cols["result"])


def names_column(names: Sequence[str]) -> np.ndarray:
    return np.frombuffer(json.dumps(list(names)).encode(), dtype=np.uint8).copy()


def names_of(cols: Columns) -> list[str]:
    return json.loads(cols["names"].tobytes().decode()) if len(cols["names"]) else []


def narrow(a: np.ndarray) -> np.ndarray:
    """An integer column as u2 where every entry fits (almost always: visit counts and
    tree sizes stay below 65,536 unless a search has that many runs), else unchanged."""
    if a.size == 0 or (int(a.min()) >= 0 and int(a.max()) <= np.iinfo(np.uint16).max):
        return a.astype(np.uint16)
    return a


def from_engine(raw: Columns, model_name: str | None) -> Columns:
    """The store's columns of one game from the engine's (ExampleColumns): counts
    narrowed, priors to float16, the model name added; rows whose search visited no
    child (a budget of one run) get their priors as a float target."""
    n = len(raw["result"])
    legal = mask_popcount(raw["mask"])
    row_of = np.repeat(np.arange(n), legal)
    totals = np.bincount(row_of, weights=raw["counts"], minlength=n)
    probs_rows = np.flatnonzero(totals == 0).astype(np.int32)
    probs = np.zeros((len(probs_rows), POLICY_SIZE), dtype=np.float32)
    if len(probs_rows):
        priors = np.zeros((n, POLICY_SIZE), dtype=np.float32)
        priors[unpack_masks(raw["mask"]).reshape(n, POLICY_SIZE)] = raw["priors"]
        probs[:] = priors[probs_rows]
    has = HAS_ALL if model_name is not None else HAS_ALL & ~HAS_MODEL_KEY
    return {
        **raw,
        **{k: narrow(raw[k]) for k in _NARROWED},
        "root_q": raw["root_q"].astype(np.float16),
        "priors": raw["priors"].astype(np.float16),
        "probs_rows": probs_rows,
        "probs": probs,
        "model_name_idx": np.zeros(n, dtype=np.int16),
        "names": names_column([] if model_name is None else [model_name]),
        "has": np.full(n, has, dtype=np.uint8),
    }


# The unused high bits of a packed mask's last byte (little bit order).
_MASK_PADDING = (0xFF << (POLICY_SIZE - 8 * (MASK_BYTES - 1))) & 0xFF


def _entry_counts(cols: Columns, n: int) -> dict[str, int | None]:
    """Entries each kind of column must have (None: not derivable from these columns)."""
    counts: dict[str, int | None] = {"row": n, "bytes": None, "float": None}
    counts["mask"] = int(mask_popcount(cols["mask"]).sum()) if "mask" in cols else None
    for k in range(2):
        depth = cols.get("depth_len")
        counts[f"depth{k}"] = int(depth[:, k].sum(dtype=np.int64)) if depth is not None else None
    if "probs_rows" in cols:
        counts["float"] = len(cols["probs_rows"])
    return counts


def check(cols: Columns, what: str, complete: bool = True) -> Columns:
    """`cols` if they are well-formed current-format columns (all of them, or with
    complete=False any subset); FormatError naming `what` and the problem otherwise."""
    unknown = set(cols) - set(SCHEMA)
    missing = set(SCHEMA) - set(cols) if complete else set()
    if unknown or missing or "result" not in cols:
        raise FormatError(
            f"{what}: columns do not match format {FORMAT_VERSION} "
            f"(unknown {sorted(unknown)}, missing {sorted(missing | ({'result'} - set(cols)))})"
        )
    for name, a in cols.items():
        spec = SCHEMA[name]
        if a.dtype.str not in spec.dtypes:
            raise FormatError(f"{what}: column {name} has dtype {a.dtype.str}, not {spec.dtypes}")
        if a.ndim != 1 + len(spec.shape) or a.shape[1:] != spec.shape:
            raise FormatError(f"{what}: column {name} has shape {a.shape}")
    if "depth_len" in cols and (cols["depth_len"] < 0).any():
        raise FormatError(f"{what}: negative depth_len")
    if "mask" in cols and len(cols["mask"]) and (cols["mask"][:, -1] & _MASK_PADDING).any():
        # Counted by mask_popcount, dropped by unpack_masks: the ragged columns would
        # not line up with the moves.
        raise FormatError(f"{what}: mask has bits set beyond the {POLICY_SIZE} moves")
    n = len(cols["result"])
    entries = _entry_counts(cols, n)
    for name, a in cols.items():
        want = entries[SCHEMA[name].per]
        if want is not None and len(a) != want:
            raise FormatError(f"{what}: column {name} has {len(a)} entries, expected {want}")
    rows = cols.get("probs_rows")
    if (
        rows is not None
        and len(rows)
        and (rows[0] < 0 or rows[-1] >= n or (len(rows) > 1 and (np.diff(rows) <= 0).any()))
    ):
        raise FormatError(f"{what}: probs_rows are not ascending rows of the batch")
    if "names" in cols:
        try:
            names = names_of(cols)
        except (UnicodeDecodeError, ValueError) as e:
            raise FormatError(f"{what}: names are not a JSON list: {e}") from None
        if not isinstance(names, list) or not all(isinstance(x, str) for x in names):
            raise FormatError(f"{what}: names are not a list of strings")
        idx, has = cols.get("model_name_idx"), cols.get("has")
        if idx is not None and has is not None:
            named = idx[(has & HAS_MODEL_KEY) != 0]
            if len(named) and (named.min() < 0 or named.max() >= len(names)):
                raise FormatError(f"{what}: model_name_idx outside the names table")
    return cols


def take_rows(cols: Columns, rows: np.ndarray) -> Columns:
    """The columns (all of them or any subset) of the given rows, strictly ascending."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) > 1 and (np.diff(rows) <= 0).any():
        raise ValueError("take_rows needs strictly ascending row indices")
    n = num_rows(cols)
    sel = np.zeros(n, dtype=bool)
    sel[rows] = True
    per_entry: dict[str, np.ndarray] = {"row": sel}
    if "mask" in cols:
        per_entry["mask"] = np.repeat(sel, mask_popcount(cols["mask"]))
    if "depth_len" in cols:
        for k in range(2):
            per_entry[f"depth{k}"] = np.repeat(sel, cols["depth_len"][:, k])
    out: Columns = {}
    for name, a in cols.items():
        per = SCHEMA[name].per
        if per == "bytes":
            out[name] = a
        elif per != "float":
            out[name] = a[rows] if per == "row" else a[per_entry[per]]
    if "probs_rows" in cols:
        keep = sel[cols["probs_rows"]]
        new_index = np.cumsum(sel) - 1
        out["probs_rows"] = new_index[cols["probs_rows"][keep]].astype(np.int32)
        out["probs"] = cols["probs"][keep]
    return out


def concat(parts: Sequence[Columns]) -> Columns:
    """One batch of columns from several (row indices and name tables remapped)."""
    if len(parts) == 1:
        return parts[0]
    names: dict[str, int] = {}
    out: dict[str, list[np.ndarray]] = {k: [] for k in parts[0]}
    row = 0
    for p in parts:
        remap = np.array(
            [names.setdefault(nm, len(names)) for nm in names_of(p)] or [0], dtype=np.int16
        )
        for k, v in p.items():
            if k == "probs_rows":
                v = (v + row).astype(np.int32)
            elif k == "model_name_idx":
                v = remap[v]
            out[k].append(v)
        row += num_rows(p)
    cols = {k: np.concatenate(v) for k, v in out.items() if k != "names"}
    cols["names"] = names_column(list(names))
    return cols


def dense_by_mask(ragged: np.ndarray, masks: np.ndarray, dtype: np.dtype | type) -> np.ndarray:
    """(n, 220) array of a ragged-by-mask column; masks (n, 220) bool."""
    out = np.zeros(masks.shape, dtype=dtype)
    out[masks] = ragged
    return out


def move_probs(counts: np.ndarray, probs_rows: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """float32 policy targets (B, 220) from dense counts (B, 220); rows in probs_rows
    (indices into the batch) take their float targets `probs` instead."""
    c = counts.astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):  # float rows have no counts
        out = c / c.sum(axis=1, keepdims=True, dtype=np.float32)
    if len(probs_rows):
        out[probs_rows] = probs
    return out


@dataclass
class Batch:
    """What training reads, decoded."""

    boards: np.ndarray  # (B, 11, 11, 10) float32, the player to move's view
    masks: np.ndarray  # (B, 2, 11, 10) bool
    move_probs: np.ndarray  # (B, 220) float32
    results: np.ndarray  # (B,) float32
    root_q: np.ndarray  # (B,) float32, NaN where unknown


def decode(cols: Columns) -> Batch:
    """Every row of `cols` (the training columns at least), decoded."""
    n = num_rows(cols)
    masks = unpack_masks(cols["mask"])
    counts = dense_by_mask(cols["counts"], masks.reshape(n, POLICY_SIZE), cols["counts"].dtype)
    return Batch(
        boards=decode_boards(cols["board_cells"], cols["board_grass"], cols["flags_left"]),
        masks=masks,
        move_probs=move_probs(counts, cols["probs_rows"], cols["probs"]),
        results=cols["result"].astype(np.float32),
        root_q=cols["root_q"].astype(np.float32),
    )


# ------------------------------------------------------------- bytes and versions

_BLOB_MAGIC = b"HXZC"
# Largest decompressed blob accepted: far above any batch a producer writes (an import
# batch of 4,096 examples is ~5 MB) and small enough that a corrupt one cannot exhaust
# the trainer's memory.
MAX_BLOB_BODY = 256 << 20


def to_blob(cols: Columns, level: int = 1) -> bytes:
    """One Redis stream entry's bytes: ``HXZC<version>`` and the zlib-compressed columns
    (a JSON header of names, dtypes and shapes, then the raw arrays; no pickle)."""
    header = {k: [v.dtype.str, list(v.shape)] for k, v in cols.items()}
    hb = json.dumps(header, separators=(",", ":")).encode()
    body = b"".join(
        [struct.pack("<I", len(hb)), hb, *(np.ascontiguousarray(v).data for v in cols.values())]
    )
    return _BLOB_MAGIC + str(FORMAT_VERSION).encode() + zlib.compress(body, level)


def blob_version(blob: bytes) -> int:
    """The format version a blob names; FormatError if it names none or an unknown one."""
    if not blob.startswith(_BLOB_MAGIC):
        raise FormatError("not an example blob (no HXZC marker)")
    digits = bytes(blob[len(_BLOB_MAGIC) : len(_BLOB_MAGIC) + 1])
    if not digits.isdigit():
        raise FormatError("example blob names no format version")
    return check_version(int(digits), "example blob")


def check_version(version: int, what: str) -> int:
    if version not in READABLE_VERSIONS:
        raise FormatError(
            f"{what} has format version {version}; this code reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))} (is it newer than this worker?)"
        )
    return version


def from_blob(blob: bytes) -> Columns:
    """Current-format columns from :func:`to_blob` bytes of any readable version;
    FormatError if they are corrupt or of an unknown version."""
    version = blob_version(blob)
    try:
        z = zlib.decompressobj()
        body = z.decompress(bytes(blob[len(_BLOB_MAGIC) + 1 :]), MAX_BLOB_BODY)
        if z.unconsumed_tail:
            raise ValueError(f"more than {MAX_BLOB_BODY} bytes decompressed")
        (hl,) = struct.unpack_from("<I", body)
        header = json.loads(body[4 : 4 + hl])
        off = 4 + hl
        cols = {}
        for k, (dt, shape) in header.items():
            dtype = np.dtype(dt)
            if dtype.hasobject:
                raise ValueError("object arrays are not allowed")
            count = math.prod(shape)
            cols[k] = np.frombuffer(body, dtype=dtype, count=count, offset=off).reshape(shape)
            off += count * dtype.itemsize
    except (zlib.error, struct.error, ValueError, TypeError, KeyError, AttributeError) as e:
        raise FormatError(f"corrupt example blob: {e}") from e
    if off != len(body):
        raise FormatError("corrupt example blob: trailing bytes")
    return upgrade(cols, version, "example blob", complete=True)


# Version 1 names of columns whose meaning did not change.
_V1_NAMES = {"probs_rows": "probs_exc_rows", "probs": "probs_exc"}
_V1_ONLY = ("stats_len", "stats_pb")


def stored_names(version: int, names: Iterable[str]) -> list[str]:
    """The names under which a file of `version` stores the given current columns."""
    if version == FORMAT_VERSION:
        return list(names)
    out = []
    for name in names:
        if name in ("stats", "duration_micros", "selected_child_q", "depth_len"):
            out += [n for n in _V1_ONLY if n not in out]
        elif name not in ("root_q", "nodes_per_depth", "max_visit_count_per_depth"):
            out.append(_V1_NAMES.get(name, name))
    return out


def upgrade(cols: Columns, version: int, what: str, complete: bool) -> Columns:
    """Current-format columns from columns stored in `version` (all of them, or with
    complete=False a subset), checked (see :func:`check`)."""
    check_version(version, what)
    try:
        if version == 1:
            cols = _upgrade_v1(cols)
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise FormatError(f"{what}: corrupt format 1 columns: {e}") from e
    return check(cols, what, complete)


def _upgrade_v1(cols: Columns) -> Columns:
    out = {k: v for k, v in cols.items() if k not in _V1_ONLY and k not in _V1_NAMES.values()}
    for new, old in _V1_NAMES.items():
        if old in cols:
            out[new] = cols[old]
    if "result" in cols:
        out["root_q"] = np.full(len(cols["result"]), np.nan, dtype=np.float16)
    if "stats_pb" in cols:
        out.update(_stats_from_protobuf(cols["stats_len"], cols["stats_pb"].tobytes()))
    return out


def _stats_from_protobuf(lengths: np.ndarray, data: bytes) -> Columns:
    from google.protobuf.message import DecodeError

    from hexz_tasks import hexz_pb2

    stats = [hexz_pb2.TrainingExample.Stats() for _ in lengths]
    off = 0
    for s, n in zip(stats, lengths.tolist(), strict=True):
        try:
            s.ParseFromString(data[off : off + n])
        except DecodeError as e:
            raise ValueError(f"stats bytes: {e}") from None
        off += n
    if off != len(data):
        raise ValueError("stats bytes do not add up")
    return stats_columns(stats)


def stats_columns(stats: Sequence) -> Columns:
    """The stats columns of TrainingExample.Stats messages (absent ones: all zero)."""
    cols = {
        "stats": np.array(
            [[getattr(s, f) for f in STATS_FIELDS] for s in stats], dtype=np.int32
        ).reshape(len(stats), len(STATS_FIELDS)),
        "duration_micros": np.array([s.duration_micros for s in stats], dtype=np.int64),
        "selected_child_q": np.array([s.selected_child_q for s in stats], dtype=np.float32),
        "depth_len": np.array(
            [(len(s.nodes_per_depth), len(s.max_visit_count_per_depth)) for s in stats],
            dtype=np.int32,
        ).reshape(len(stats), 2),
        "nodes_per_depth": np.array([x for s in stats for x in s.nodes_per_depth], dtype=np.int32),
        "max_visit_count_per_depth": np.array(
            [x for s in stats for x in s.max_visit_count_per_depth], dtype=np.int32
        ),
    }
    return {k: narrow(v) if k in _NARROWED else v for k, v in cols.items()}
