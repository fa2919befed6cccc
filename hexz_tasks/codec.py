"""Compact, columnar encoding of TrainingExamples (in Redis and in the trainer's chunk files).

A batch of n examples becomes a dict of NumPy arrays ("columns"). What training reads is
lossless:

- board: per cell and player one byte ``flag | blocked << 1 | value << 2 | next << 5``
  (``board_cells`` (n, 2, 110)), grass two cells per byte (``board_grass`` (n, 55)) and
  the flags-left channels as one byte each (``flags_left`` (n, 2)). Boards whose values
  do not fit (non-integers, flag/blocked not 0/1, values above 7, a flags-left channel
  that is not constant) are rejected.
- action mask: bits (``mask`` (n, 28), little bit order).
- move_probs: visit counts at the legal moves (``counts``, uint16, ragged: one entry per
  set mask bit, row-major), decoded as ``float32(count) / float32(sum of counts)``. The
  encoder checks that this reproduces the input bit for bit; examples whose move_probs
  are not such fractions keep their float32 vector in ``probs_exc`` (rows in
  ``probs_exc_rows``).
- result: int8 (-1, 0, 1).

The other fields are kept for export: unix_micros, turn, move, model key (name table
``names`` + index), the model's value (float32, exact), stats (exact, as protobuf bytes)
and the root priors as **float16 at the legal moves only** (the one lossy field; priors
off the mask, which a softmax over legal moves never produces, are dropped).

On the wire (Redis) a batch is one zlib-compressed blob (:func:`to_blob`); on disk a
chunk is an .npz of the same columns (see hexz_tasks.dataset).
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Sequence

import numpy as np

from hexz_tasks import hexz_pb2
from hexz_tasks.examples import BOARD_SHAPE, MASK_SHAPE, decode_array, npy_bytes

Columns = dict[str, np.ndarray]

CELLS = 110
POLICY = 220
MASK_BYTES = 28
# Columns the trainer reads; the rest only matter for export.
CORE_COLUMNS = (
    "board_cells", "board_grass", "flags_left", "mask", "counts", "result",
    "probs_exc_rows", "probs_exc",
)  # fmt: skip
# Columns with one entry per set mask bit rather than one row per example.
RAGGED_BY_MASK = ("counts", "priors")
ROW_COLUMNS = (
    "board_cells", "board_grass", "flags_left", "mask", "result", "has", "unix_micros",
    "turn", "move", "model_ckpt", "model_name_idx", "value", "stats_len",
)  # fmt: skip
# `has` bits: which optional sub-messages the example carried.
HAS_MOVE, HAS_PREDICTIONS, HAS_MODEL_KEY, HAS_STATS, HAS_PRIORS = 1, 2, 4, 8, 16

_BLOB_MAGIC = b"HXZC1"


def _npy_header(shape: tuple[int, ...], dtype: str) -> bytes:
    a = np.zeros(shape, dtype=dtype)
    return npy_bytes(a)[: -a.nbytes]


_BOARD_HDR = _npy_header(BOARD_SHAPE, "<f4")
_PROBS_HDR = _npy_header(MASK_SHAPE, "<f4")
_MASK_HDR = _npy_header(MASK_SHAPE, "|b1")


def _arrays(
    blobs: Sequence[bytes],
    encodings: Sequence[int],
    header: bytes,
    shape: tuple[int, ...],
    dtype: np.dtype,
    what: str,
    where: str,
) -> np.ndarray:
    """Stacks one array field of every example; the common NUMPY case needs no np.load."""
    n = len(blobs)
    size = int(np.prod(shape)) * dtype.itemsize
    hl = len(header)
    fast = (
        not any(encodings)  # all NUMPY
        and {len(b) for b in blobs} == {hl + size}
        and {b[:hl] for b in blobs} == {header}
    )
    if fast:
        joined = b"".join([b[hl:] for b in blobs])
        return np.frombuffer(joined, dtype=dtype).reshape((n, *shape))
    out = np.empty((n, *shape), dtype=dtype)
    for i, (b, e) in enumerate(zip(blobs, encodings, strict=True)):
        label = f"{where} example {i}"
        if not b:
            raise ValueError(f"{label}: {what} is missing")
        a = decode_array(b, e, f"{label}: {what}")
        if a.shape != shape:
            raise ValueError(f"{label}: {what} has shape {a.shape}, expected {shape}")
        if a.dtype != dtype:
            raise ValueError(f"{label}: {what} has dtype {a.dtype}, expected {dtype}")
        out[i] = a
    return out


def _first_bad(bad: np.ndarray, where: str, message: str) -> None:
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{where} example {i}: {message}")


def _pack_boards(boards: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(boards)
    b = boards.reshape(n, 11, CELLS)  # (n, channel, cell)
    _first_bad(~np.isfinite(b).all(axis=(1, 2)), where, "board contains NaN or infinity")
    _first_bad(((b < 0) | (b > 255)).any(axis=(1, 2)), where, "board values outside 0..255")
    bi = b.astype(np.uint8)
    _first_bad((bi != b).any(axis=(1, 2)), where, "board values are not integers")
    _first_bad((bi[:, [0, 2, 5, 7]] > 1).any(axis=(1, 2)), where, "flag/blocked not 0 or 1")
    _first_bad((bi[:, [1, 3, 6, 8, 10]] > 7).any(axis=(1, 2)), where, "board values above 7")
    fl = bi[:, [4, 9]]  # (n, 2, cell)
    _first_bad((fl != fl[:, :, :1]).any(axis=(1, 2)), where, "flags-left channel not constant")
    cells = np.empty((n, 2, CELLS), dtype=np.uint8)
    for p in range(2):
        c = 5 * p
        cells[:, p] = bi[:, c] | (bi[:, c + 2] << 1) | (bi[:, c + 1] << 2) | (bi[:, c + 3] << 5)
    grass = bi[:, 10, 0::2] | (bi[:, 10, 1::2] << 4)
    return cells, grass, np.ascontiguousarray(fl[:, :, 0])


# Decoding tables: cell byte -> board channel 0..3 of its player (flag, value, blocked,
# next), and grass byte -> the two cells' grass values.
_CELL_LUTS = [
    np.array([f(i) for i in range(256)], dtype=np.float32)
    for f in (lambda i: i & 1, lambda i: (i >> 2) & 7, lambda i: (i >> 1) & 1, lambda i: i >> 5)
]
_GRASS_LO = np.arange(256, dtype=np.uint8) & 15
_GRASS_HI = np.arange(256, dtype=np.uint8) >> 4


def decode_boards(cells: np.ndarray, grass: np.ndarray, flags_left: np.ndarray) -> np.ndarray:
    """(B, 11, 11, 10) float32 boards from the packed columns, vectorised (np.take
    releases the GIL, so several threads decode in parallel)."""
    n = len(cells)
    out = np.empty((n, 11, CELLS), dtype=np.float32)
    for p in range(2):
        for k, lut in enumerate(_CELL_LUTS):
            np.take(lut, cells[:, p], out=out[:, 5 * p + k])
    out[:, 4] = flags_left[:, 0, None]
    out[:, 9] = flags_left[:, 1, None]
    out[:, 10, 0::2] = _GRASS_LO[grass]
    out[:, 10, 1::2] = _GRASS_HI[grass]
    return out.reshape(n, *BOARD_SHAPE)


def unpack_masks(mask: np.ndarray) -> np.ndarray:
    """(B, 2, 11, 10) bool from (B, 28) bit-packed masks."""
    bits = np.unpackbits(mask, axis=1, count=POLICY, bitorder="little")
    return bits.view(bool).reshape(len(mask), *MASK_SHAPE)


def mask_popcount(mask: np.ndarray) -> np.ndarray:
    """Number of legal moves per row of a packed mask column (int64)."""
    if len(mask) == 0:
        return np.zeros(0, dtype=np.int64)
    if not hasattr(np, "bitwise_count"):  # NumPy < 2.0
        return np.unpackbits(mask, axis=1).sum(axis=1, dtype=np.int64)
    words = np.ascontiguousarray(mask).view("<u4")  # (N, 7): 28 bytes per row
    return np.bitwise_count(words).sum(axis=1, dtype=np.int64)


# Blocks of candidate visit counts of the least visited child (searched in this order).
_CMIN_BLOCKS = ((1, 65), (65, 513), (513, 4097))


def _search_counts(
    p32: np.ndarray, p64: np.ndarray, pmin: np.ndarray, lo: int, hi: int
) -> tuple[np.ndarray, np.ndarray]:
    """For each row, the first c_min in [lo, hi) whose counts reproduce the row exactly.

    Returns (found (m,) bool, counts (m, W) float64). A cheap first pass tests the
    candidates on the 4 largest entries and the smallest only; the full row is then
    checked for the first survivor (rows where it fails get the full search).
    """
    m = len(p32)
    s = np.rint(np.arange(lo, hi)[None, :] / pmin[:, None])  # (m, K) candidate totals
    few = np.concatenate([p64[:, :4], pmin[:, None]], axis=1)  # (m, <=5)
    few32 = few.astype(np.float32)
    c = np.rint(few[:, None, :] * s[:, :, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        ok = (s <= 65535) & (
            c.astype(np.float32) / s.astype(np.float32)[:, :, None] == few32[:, None, :]
        ).all(axis=2)
    first = ok.argmax(axis=1)
    total = s[np.arange(m), first]  # (m,)
    counts = np.rint(p64 * total[:, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        exact = (counts.astype(np.float32) / total.astype(np.float32)[:, None] == p32).all(axis=1)
    found = ok.any(axis=1) & exact & (counts.sum(axis=1) == total)
    retry = np.flatnonzero(ok.any(axis=1) & ~found)
    if len(retry):  # a candidate passed the cheap test but not the full one: test them all
        c = np.rint(p64[retry, None, :] * s[retry, :, None])  # (r, K, W)
        with np.errstate(invalid="ignore", divide="ignore"):
            dec = c.astype(np.float32) / s[retry].astype(np.float32)[:, :, None]
        full = (
            (s[retry] <= 65535)
            & (c.sum(axis=2) == s[retry])
            & (dec == p32[retry, None, :]).all(axis=2)
        )
        hit = full.any(axis=1)
        counts[retry[hit]] = c[hit, full.argmax(axis=1)[hit]]
        found[retry[hit]] = True
    return found, counts


def _counts_from_probs(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Visit counts c with float32(c) / float32(sum c) == probs bit for bit, per row.

    The least visited child has c_min visits, so the total is S = c_min / p_min; each
    candidate c_min gives S and c = rint(p * S), kept if it reproduces probs exactly.
    Works on the nonzero entries only (visited children), vectorised over rows.
    Returns (counts (n, 220) uint16, exact (n,) bool); rows that are not such fractions
    (or need more than 2048 visits on the least visited child) are marked inexact.
    """
    n = len(probs)
    width = max(1, int((probs > 0).sum(axis=1).max(initial=0)))
    where = np.argsort(-probs, axis=1, kind="stable")[:, :width]  # largest first
    p32 = np.take_along_axis(probs, where, axis=1)  # (n, W), zero padded
    p64 = p32.astype(np.float64)
    pmin = np.where(p32 > 0, p64, np.inf).min(axis=1)
    found_c = np.zeros((n, width), dtype=np.float64)
    exact = np.zeros(n, dtype=bool)
    todo = np.flatnonzero(np.isfinite(pmin))
    for lo, hi in _CMIN_BLOCKS:
        if not len(todo):
            break
        found, counts = _search_counts(p32[todo], p64[todo], pmin[todo], lo, hi)
        found_c[todo[found]] = counts[found]
        exact[todo[found]] = True
        todo = todo[~found]
    counts = np.zeros((n, POLICY), dtype=np.uint16)
    np.put_along_axis(counts, where, found_c.astype(np.uint16), axis=1)
    return counts, exact


def encode_examples(examples: Sequence[hexz_pb2.TrainingExample], where: str) -> Columns:
    """Validates and encodes examples; ValueError names `where` and the example index."""
    n = len(examples)
    if n == 0:
        raise ValueError(f"{where}: no examples")
    enc = [e.encoding for e in examples]
    for i, e in enumerate(enc):
        if e not in (0, 1):
            raise ValueError(f"{where} example {i}: unknown array encoding {e}")
    f4, b1 = np.dtype("<f4"), np.dtype("bool")
    boards = _arrays([e.board for e in examples], enc, _BOARD_HDR, BOARD_SHAPE, f4, "board", where)
    probs = _arrays(
        [e.move_probs for e in examples], enc, _PROBS_HDR, MASK_SHAPE, f4, "move_probs", where
    ).reshape(n, POLICY)
    masks = _arrays(
        [e.action_mask for e in examples], enc, _MASK_HDR, MASK_SHAPE, b1, "action_mask", where
    ).reshape(n, POLICY)
    results = np.array([e.result for e in examples], dtype=np.float32)

    cells, grass, flags_left = _pack_boards(boards, where)
    _first_bad(~np.isfinite(probs).all(axis=1), where, "move_probs contains NaN or infinity")
    _first_bad((probs < 0).any(axis=1), where, "move_probs has negative entries")
    _first_bad(
        ((probs != 0) & ~masks).any(axis=1), where, "move_probs nonzero outside the action mask"
    )
    sums = probs.sum(axis=1, dtype=np.float64)
    _first_bad(np.abs(sums - 1) > 1e-3, where, "move_probs do not sum to 1")
    _first_bad(~np.isin(results, (-1.0, 0.0, 1.0)), where, "result is not -1, 0 or 1")

    counts, exact = _counts_from_probs(probs)
    exc_rows = np.flatnonzero(~exact).astype(np.int32)

    # Export-only fields (one pass; NumPy arrays built from lists at the end).
    has = np.zeros(n, dtype=np.uint8)
    move = np.zeros((n, 5), dtype=np.int32)
    model_ckpt = np.zeros(n, dtype=np.int32)
    name_idx = np.zeros(n, dtype=np.int16)
    value = np.zeros(n, dtype=np.float32)
    stats_len = np.zeros(n, dtype=np.int32)
    move_rows, moves, key_rows, ckpts, pred_rows, values = [], [], [], [], [], []
    stat_rows: list[int] = []
    stats: list[bytes] = []
    names: dict[str, int] = {}
    prior_blobs: list[bytes] = []
    prior_enc: list[int] = []
    prior_rows: list[int] = []
    for i, e in enumerate(examples):
        if e.HasField("move"):
            m = e.move
            move_rows.append(i)
            moves.append((m.player_num, m.move, m.row, m.col, m.cell_type))
        if e.HasField("model_predictions"):
            mp = e.model_predictions
            pred_rows.append(i)
            values.append(mp.value)
            if mp.priors:
                prior_blobs.append(mp.priors)
                prior_enc.append(enc[i])
                prior_rows.append(i)
        if e.HasField("model_key"):
            key_rows.append(i)
            ckpts.append(e.model_key.checkpoint)
            name_idx[i] = names.setdefault(e.model_key.name, len(names))
        if e.HasField("stats"):  # kept as protobuf bytes: exact, small and fast
            stat_rows.append(i)
            stats.append(e.stats.SerializeToString())
    for rows, bit in ((move_rows, HAS_MOVE), (pred_rows, HAS_PREDICTIONS),
                      (key_rows, HAS_MODEL_KEY), (stat_rows, HAS_STATS)):  # fmt: skip
        has[rows] |= bit
    if move_rows:
        move[move_rows] = moves
    if pred_rows:
        value[pred_rows] = values
    if key_rows:
        model_ckpt[key_rows] = ckpts
    if stat_rows:
        stats_len[stat_rows] = [len(b) for b in stats]
    priors = np.zeros((n, POLICY), dtype=np.float32)
    if prior_rows:
        p = _arrays(
            prior_blobs, prior_enc, _PROBS_HDR, MASK_SHAPE, f4, "model_predictions.priors", where
        )
        _first_bad(~np.isfinite(p.reshape(len(p), -1)).all(axis=1), where, "priors contain NaN")
        priors[prior_rows] = p.reshape(len(p), POLICY)
    has_priors = np.zeros(n, dtype=bool)
    has_priors[prior_rows] = True
    has |= np.where(has_priors, HAS_PRIORS, 0).astype(np.uint8)

    return {
        "board_cells": cells,
        "board_grass": grass,
        "flags_left": flags_left,
        "mask": np.packbits(masks, axis=1, bitorder="little"),
        "counts": counts[masks],
        "result": results.astype(np.int8),
        "probs_exc_rows": exc_rows,
        "probs_exc": probs[exc_rows].astype(np.float32),
        "has": has,
        "unix_micros": np.array([e.unix_micros for e in examples], dtype=np.int64),
        "turn": np.array([e.turn for e in examples], dtype=np.int32),
        "move": move,
        "model_ckpt": model_ckpt,
        "model_name_idx": name_idx,
        "names": _names_column(list(names)),
        "value": value,
        "priors": priors[masks].astype(np.float16),
        "stats_len": stats_len,
        "stats_pb": np.frombuffer(b"".join(stats), dtype=np.uint8),
    }


def _names_column(names: list[str]) -> np.ndarray:
    return np.frombuffer(json.dumps(names).encode(), dtype=np.uint8).copy()


def names_of(cols: Columns) -> list[str]:
    return json.loads(cols["names"].tobytes().decode()) if len(cols["names"]) else []


def num_rows(cols: Columns) -> int:
    return len(cols["result"])


def decode_move_probs(
    counts_dense: np.ndarray, exc_rows: np.ndarray, exc_probs: np.ndarray
) -> np.ndarray:
    """float32 move_probs (B, 220) from dense counts; rows listed in exc_rows are replaced."""
    c = counts_dense.astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):  # exception rows have no counts
        probs = c / c.sum(axis=1, keepdims=True, dtype=np.float32)
    if len(exc_rows):
        probs[exc_rows] = exc_probs
    return probs


def to_examples(
    cols: Columns, encoding: int = hexz_pb2.TrainingExample.NUMPY
) -> list[hexz_pb2.TrainingExample]:
    """Protobuf TrainingExamples back from columns (arrays in `encoding`)."""
    n = num_rows(cols)
    masks = unpack_masks(cols["mask"]).reshape(n, POLICY)
    counts = np.zeros((n, POLICY), dtype=np.uint16)
    counts[masks] = cols["counts"]
    probs = decode_move_probs(counts, cols["probs_exc_rows"], cols["probs_exc"])
    priors = np.zeros((n, POLICY), dtype=np.float32)
    priors[masks] = cols["priors"].astype(np.float32)
    boards = decode_boards(cols["board_cells"], cols["board_grass"], cols["flags_left"])
    names = names_of(cols)
    if encoding == hexz_pb2.TrainingExample.NUMPY:
        to_bytes = npy_bytes
    elif encoding == hexz_pb2.TrainingExample.PYTORCH:
        to_bytes = _torch_bytes
    else:
        raise ValueError(f"unknown encoding {encoding}")
    stats_off = np.concatenate([[0], np.cumsum(cols["stats_len"])])
    stats_pb = cols["stats_pb"].tobytes()
    out = []
    for i in range(n):
        h = int(cols["has"][i])
        e = hexz_pb2.TrainingExample(
            unix_micros=int(cols["unix_micros"][i]),
            board=to_bytes(boards[i]),
            move_probs=to_bytes(probs[i].reshape(MASK_SHAPE)),
            result=float(cols["result"][i]),
            encoding=encoding,
            turn=int(cols["turn"][i]),
            action_mask=to_bytes(masks[i].reshape(MASK_SHAPE)),
        )
        if h & HAS_MOVE:
            pn, mv, r, c, ct = (int(x) for x in cols["move"][i])
            e.move.CopyFrom(
                hexz_pb2.GameEngineMove(player_num=pn, move=mv, row=r, col=c, cell_type=ct)
            )
        if h & HAS_PREDICTIONS:
            e.model_predictions.value = float(cols["value"][i])
            if h & HAS_PRIORS:
                e.model_predictions.priors = to_bytes(priors[i].reshape(MASK_SHAPE))
        if h & HAS_MODEL_KEY:
            e.model_key.name = names[int(cols["model_name_idx"][i])]
            e.model_key.checkpoint = int(cols["model_ckpt"][i])
        if h & HAS_STATS:
            e.stats.ParseFromString(stats_pb[stats_off[i] : stats_off[i + 1]])
        out.append(e)
    return out


def _torch_bytes(a: np.ndarray) -> bytes:
    import io

    import torch

    buf = io.BytesIO()
    torch.save(torch.from_numpy(np.ascontiguousarray(a)), buf)
    return buf.getvalue()


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
            if k == "names":
                continue
            if k == "probs_exc_rows":
                v = v + row
            elif k == "model_name_idx":
                v = remap[v]
            out[k].append(v)
        row += num_rows(p)
    cols = {k: np.concatenate(v) for k, v in out.items() if k != "names"}
    cols["probs_exc_rows"] = cols["probs_exc_rows"].astype(np.int32)
    cols["names"] = _names_column(list(names))
    return cols


def to_blob(cols: Columns, level: int = 1) -> bytes:
    """One compressed byte string of the columns (no pickle: a JSON header + raw arrays)."""
    header = {k: [v.dtype.str, list(v.shape)] for k, v in cols.items()}
    hb = json.dumps(header, separators=(",", ":")).encode()
    body = b"".join(
        [struct.pack("<I", len(hb)), hb, *(np.ascontiguousarray(v).data for v in cols.values())]
    )
    return _BLOB_MAGIC + zlib.compress(body, level)


def from_blob(blob: bytes) -> Columns:
    """Columns from :func:`to_blob` bytes; ValueError if they are corrupt."""
    if not blob.startswith(_BLOB_MAGIC):
        raise ValueError("not an example blob (bad magic)")
    try:
        body = zlib.decompress(blob[len(_BLOB_MAGIC) :])
        (hl,) = struct.unpack_from("<I", body)
        header = json.loads(body[4 : 4 + hl])
        off = 4 + hl
        cols = {}
        for k, (dt, shape) in header.items():
            dtype = np.dtype(dt)
            if dtype.hasobject:
                raise ValueError("object arrays are not allowed")
            size = int(np.prod(shape)) * dtype.itemsize
            cols[k] = np.frombuffer(
                body, dtype=dtype, count=int(np.prod(shape)), offset=off
            ).reshape(shape)
            off += size
    except (zlib.error, struct.error, ValueError, TypeError, KeyError) as e:
        raise ValueError(f"corrupt example blob: {e}") from e
    if off != len(body):
        raise ValueError("corrupt example blob: trailing bytes")
    return cols


def take_rows(cols: Columns, rows: np.ndarray) -> Columns:
    """The columns of the given rows (strictly ascending), ragged columns included."""
    if len(rows) > 1 and (np.diff(rows) <= 0).any():
        raise ValueError("take_rows needs strictly ascending row indices")
    n = num_rows(cols)
    legal = mask_popcount(cols["mask"])
    sel = np.zeros(n, dtype=bool)
    sel[rows] = True
    out = {k: cols[k][rows] for k in ROW_COLUMNS}
    per_entry = np.repeat(sel, legal)
    for k in RAGGED_BY_MASK:
        out[k] = cols[k][per_entry]
    out["stats_pb"] = cols["stats_pb"][np.repeat(sel, cols["stats_len"])]
    new_index = np.cumsum(sel) - 1
    exc_keep = sel[cols["probs_exc_rows"]]
    out["probs_exc_rows"] = new_index[cols["probs_exc_rows"][exc_keep]].astype(np.int32)
    out["probs_exc"] = cols["probs_exc"][exc_keep]
    out["names"] = cols["names"]
    return out
