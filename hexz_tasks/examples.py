"""TrainingExample protobufs, the edge format: the gRPC TrainingService, ``hexz
import/export`` and the archive files (shared/spec/wire-format.md).

Inside the pipeline examples are the example store's columns (hexz_tasks.codec);
:func:`to_columns` and :func:`from_columns` convert at the edges. Array fields are
NUMPY (.npy) or PYTORCH (torch.save) bytes; PYTORCH bytes are loaded with
weights_only=True only. Edge examples keep their move_probs as float32 (they arrive
as floats): converting costs time and memory in proportion to the examples' size.
Bytes from outside cost at most what was sent: a .npy header must describe exactly the
data that follows, and a torch.save zip must hold only stored (uncompressed) records of
bounded size, checked before torch.load sees them (a deflated record could expand a
thousandfold).
"""

from __future__ import annotations

import io
import math
import struct
import zipfile
from collections.abc import Sequence

import numpy as np
from celery.exceptions import SoftTimeLimitExceeded

from hexz_tasks import codec, hexz_pb2
from hexz_tasks.codec import reject_first
from hexz_tasks.layout import BOARD_SHAPE, MASK_SHAPE, POLICY_SIZE

NUMPY = hexz_pb2.TrainingExample.NUMPY
PYTORCH = hexz_pb2.TrainingExample.PYTORCH
# The largest array of an example is a board (1210 values); anything far bigger is not one.
MAX_ARRAY_ELEMENTS = 1 << 14
# torch.save writes ~7 small records per tensor (pickle, data, version, byte order, ...).
MAX_ZIP_RECORDS = 16
MAX_ZIP_RECORD_BYTES = 8 * MAX_ARRAY_ELEMENTS
_LOCAL_HEADER = struct.Struct("<4sHHH")  # signature, version, flags, compression method
_LOCAL_SIGNATURE = b"PK\x03\x04"


def npy_bytes(a: np.ndarray) -> bytes:
    """A complete .npy file of `a` (what numpy.save writes)."""
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def torch_bytes(a: np.ndarray) -> bytes:
    """`a` as a tensor file (what torch.save writes)."""
    import torch

    buf = io.BytesIO()
    torch.save(torch.from_numpy(np.ascontiguousarray(a)), buf)
    return buf.getvalue()


def decode_array(data: bytes, encoding: int, what: str) -> np.ndarray:
    """Decodes one array field; raises ValueError naming `what` if the bytes are bad."""
    try:
        if encoding == NUMPY:
            return _load_npy(data)
        if encoding == PYTORCH:
            return _load_torch(data)
    except SoftTimeLimitExceeded:  # the task's time is up: the bytes are not bad
        raise
    except Exception as e:  # numpy/torch raise many types for corrupt bytes
        raise ValueError(f"{what}: cannot decode array bytes: {e}") from e
    raise ValueError(f"{what}: unknown encoding {encoding}")


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


def to_columns(examples: Sequence[hexz_pb2.TrainingExample], where: str) -> codec.Columns:
    """Validated store columns of protobuf examples; ValueError names `where` and the
    example index. Their move_probs stay float32 targets (``probs_rows``)."""
    n = len(examples)
    if n == 0:
        raise ValueError(f"{where}: no examples")
    enc = [e.encoding for e in examples]
    for i, e in enumerate(enc):
        if e not in (NUMPY, PYTORCH):
            raise ValueError(f"{where} example {i}: unknown array encoding {e}")
    f4, b1 = np.dtype("<f4"), np.dtype("bool")
    boards = _arrays([e.board for e in examples], enc, _BOARD_HDR, BOARD_SHAPE, f4, "board", where)
    probs = _arrays(
        [e.move_probs for e in examples], enc, _PROBS_HDR, MASK_SHAPE, f4, "move_probs", where
    ).reshape(n, POLICY_SIZE)
    masks = _arrays(
        [e.action_mask for e in examples], enc, _MASK_HDR, MASK_SHAPE, b1, "action_mask", where
    ).reshape(n, POLICY_SIZE)
    results = np.array([e.result for e in examples], dtype=np.float32)

    cells, grass, flags_left = codec.pack_boards(boards, where)
    reject_first(~np.isfinite(probs).all(axis=1), where, "move_probs contains NaN or infinity")
    reject_first((probs < 0).any(axis=1), where, "move_probs has negative entries")
    reject_first(
        ((probs != 0) & ~masks).any(axis=1), where, "move_probs nonzero outside the action mask"
    )
    sums = probs.sum(axis=1, dtype=np.float64)
    reject_first(np.abs(sums - 1) > 1e-3, where, "move_probs do not sum to 1")
    reject_first(~np.isin(results, (-1.0, 0.0, 1.0)), where, "result is not -1, 0 or 1")

    has = np.zeros(n, dtype=np.uint8)
    move = np.zeros((n, 5), dtype=np.int32)
    model_ckpt = np.zeros(n, dtype=np.int32)
    name_idx = np.zeros(n, dtype=np.int16)
    value = np.zeros(n, dtype=np.float32)
    names: dict[str, int] = {}
    prior_rows: list[int] = []
    empty_stats = hexz_pb2.TrainingExample.Stats()
    stats = []
    for i, e in enumerate(examples):
        if e.HasField("move"):
            m = e.move
            has[i] |= codec.HAS_MOVE
            move[i] = (m.player_num, m.move, m.row, m.col, m.cell_type)
        if e.HasField("model_predictions"):
            has[i] |= codec.HAS_PREDICTIONS
            value[i] = e.model_predictions.value
            if e.model_predictions.priors:
                has[i] |= codec.HAS_PRIORS
                prior_rows.append(i)
        if e.HasField("model_key"):
            has[i] |= codec.HAS_MODEL_KEY
            model_ckpt[i] = e.model_key.checkpoint
            name_idx[i] = names.setdefault(e.model_key.name, len(names))
        if e.HasField("stats"):
            has[i] |= codec.HAS_STATS
        stats.append(e.stats if e.HasField("stats") else empty_stats)
    priors = np.zeros((n, POLICY_SIZE), dtype=np.float32)
    if prior_rows:
        p = _arrays(
            [examples[i].model_predictions.priors for i in prior_rows],
            [enc[i] for i in prior_rows],
            _PROBS_HDR,
            MASK_SHAPE,
            f4,
            "model_predictions.priors",
            where,
        ).reshape(len(prior_rows), POLICY_SIZE)
        reject_first(~np.isfinite(p).all(axis=1), where, "priors contain NaN")
        priors[prior_rows] = p

    return {
        "board_cells": cells,
        "board_grass": grass,
        "flags_left": flags_left,
        "mask": codec.pack_masks(masks),
        "counts": np.zeros(int(masks.sum()), dtype=np.uint16),
        "probs_rows": np.arange(n, dtype=np.int32),
        "probs": np.ascontiguousarray(probs),
        "result": results.astype(np.int8),
        "root_q": np.full(n, np.nan, dtype=np.float16),
        "value": value,
        "priors": priors[masks].astype(np.float16),
        "turn": np.array([e.turn for e in examples], dtype=np.int32),
        "move": move,
        "unix_micros": np.array([e.unix_micros for e in examples], dtype=np.int64),
        "model_ckpt": model_ckpt,
        "model_name_idx": name_idx,
        "names": codec.names_column(list(names)),
        **codec.stats_columns(stats),
        "has": has,
    }


def from_columns(cols: codec.Columns, encoding: int = NUMPY) -> list[hexz_pb2.TrainingExample]:
    """Protobuf TrainingExamples of store columns (arrays in `encoding`); root_q, which
    the wire format has no field for, is left out."""
    if encoding == NUMPY:
        to_bytes = npy_bytes
    elif encoding == PYTORCH:
        to_bytes = torch_bytes
    else:
        raise ValueError(f"unknown encoding {encoding}")
    n = codec.num_rows(cols)
    batch = codec.decode(cols)
    masks = batch.masks.reshape(n, POLICY_SIZE)
    priors = codec.dense_by_mask(cols["priors"].astype(np.float32), masks, np.float32)
    names = codec.names_of(cols)
    depth_off = [np.concatenate([[0], np.cumsum(cols["depth_len"][:, k])]) for k in range(2)]
    out = []
    for i in range(n):
        h = int(cols["has"][i])
        e = hexz_pb2.TrainingExample(
            unix_micros=int(cols["unix_micros"][i]),
            board=to_bytes(batch.boards[i]),
            move_probs=to_bytes(batch.move_probs[i].reshape(MASK_SHAPE)),
            result=float(cols["result"][i]),
            encoding=encoding,  # type: ignore[arg-type]
            turn=int(cols["turn"][i]),
            action_mask=to_bytes(batch.masks[i]),
        )
        if h & codec.HAS_MOVE:
            pn, mv, r, c, ct = (int(x) for x in cols["move"][i])
            e.move.CopyFrom(
                hexz_pb2.GameEngineMove(player_num=pn, move=mv, row=r, col=c, cell_type=ct)  # type: ignore[arg-type]
            )
        if h & codec.HAS_PREDICTIONS:
            e.model_predictions.value = float(cols["value"][i])
            if h & codec.HAS_PRIORS:
                e.model_predictions.priors = to_bytes(priors[i].reshape(MASK_SHAPE))
        if h & codec.HAS_MODEL_KEY:
            e.model_key.name = names[int(cols["model_name_idx"][i])]
            e.model_key.checkpoint = int(cols["model_ckpt"][i])
        if h & codec.HAS_STATS:
            s = e.stats
            for field, x in zip(codec.STATS_FIELDS, cols["stats"][i].tolist(), strict=True):
                setattr(s, field, x)
            s.duration_micros = int(cols["duration_micros"][i])
            s.selected_child_q = float(cols["selected_child_q"][i])
            lo0, lo1 = depth_off[0][i], depth_off[1][i]
            s.nodes_per_depth.extend(cols["nodes_per_depth"][lo0 : depth_off[0][i + 1]].tolist())
            s.max_visit_count_per_depth.extend(
                cols["max_visit_count_per_depth"][lo1 : depth_off[1][i + 1]].tolist()
            )
        out.append(e)
    return out


def _load_npy(data: bytes) -> np.ndarray:
    f = io.BytesIO(data)
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f".npy format version {version} is not supported")
    if dtype.hasobject:
        raise ValueError("object arrays are not allowed")
    count = math.prod(shape)  # exact: a crafted shape cannot overflow into a small count
    if count > MAX_ARRAY_ELEMENTS:
        raise ValueError(f"shape {shape} has more than {MAX_ARRAY_ELEMENTS} elements")
    if len(data) - f.tell() != count * dtype.itemsize:
        raise ValueError(
            f"header says {count * dtype.itemsize} data bytes, {len(data) - f.tell()} follow"
        )
    a = np.frombuffer(data, dtype=dtype, count=count, offset=f.tell())
    return a.reshape(shape, order="F" if fortran else "C").copy()


def _check_torch_zip(data: bytes) -> None:
    """Refuses zip archives whose records are compressed, many or large."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        infos = z.infolist()
        if len(infos) > MAX_ZIP_RECORDS:
            raise ValueError(f"{len(infos)} zip records, at most {MAX_ZIP_RECORDS} expected")
        for info in infos:
            if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
                raise ValueError(f"zip record {info.filename!r} is compressed (torch.save stores)")
            if info.file_size > MAX_ZIP_RECORD_BYTES:
                raise ValueError(f"zip record {info.filename!r} is {info.file_size} bytes")
            # torch's reader takes the method from the local header: it must agree.
            head = data[info.header_offset : info.header_offset + _LOCAL_HEADER.size]
            if len(head) < _LOCAL_HEADER.size:
                raise ValueError(f"zip record {info.filename!r} has no local header")
            signature, _, _, method = _LOCAL_HEADER.unpack(head)
            if signature != _LOCAL_SIGNATURE or method != zipfile.ZIP_STORED:
                raise ValueError(f"zip record {info.filename!r} has a bad local header")


def _load_torch(data: bytes) -> np.ndarray:
    import torch

    _check_torch_zip(data)
    t = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"expected a tensor, got {type(t).__name__}")
    if t.numel() > MAX_ARRAY_ELEMENTS:
        raise ValueError(f"tensor of shape {tuple(t.shape)} is too large")
    return t.numpy().copy()
