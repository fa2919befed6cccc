"""Array bytes inside TrainingExample protobufs: NUMPY (.npy) and PYTORCH (torch.save).

Readers accept both encodings; PYTORCH bytes are loaded with weights_only=True only.
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

import numpy as np

from hexz_tasks import hexz_pb2

BOARD_SHAPE = (11, 11, 10)
MASK_SHAPE = (2, 11, 10)
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


def decode_array(data: bytes, encoding: int, what: str) -> np.ndarray:
    """Decodes one array field; raises ValueError naming `what` if the bytes are bad."""
    try:
        if encoding == hexz_pb2.TrainingExample.NUMPY:
            return _load_npy(data)
        if encoding == hexz_pb2.TrainingExample.PYTORCH:
            return _load_torch(data)
    except Exception as e:  # numpy/torch raise many types for corrupt bytes
        raise ValueError(f"{what}: cannot decode array bytes: {e}") from e
    raise ValueError(f"{what}: unknown encoding {encoding}")


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
