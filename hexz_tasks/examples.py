"""Array bytes inside TrainingExample protobufs: NUMPY (.npy) and PYTORCH (torch.save).

Readers accept both encodings; PYTORCH bytes are loaded with weights_only=True only.
"""

from __future__ import annotations

import io

import numpy as np

from hexz_tasks import hexz_pb2

BOARD_SHAPE = (11, 11, 10)
MASK_SHAPE = (2, 11, 10)


def npy_bytes(a: np.ndarray) -> bytes:
    """A complete .npy file of `a` (what numpy.save writes)."""
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def decode_array(data: bytes, encoding: int, what: str) -> np.ndarray:
    """Decodes one array field; raises ValueError naming `what` if the bytes are bad."""
    try:
        if encoding == hexz_pb2.TrainingExample.NUMPY:
            return np.load(io.BytesIO(data), allow_pickle=False)
        if encoding == hexz_pb2.TrainingExample.PYTORCH:
            import torch

            t = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"expected a tensor, got {type(t).__name__}")
            return t.numpy()
    except Exception as e:  # numpy/torch raise many types for corrupt bytes
        raise ValueError(f"{what}: cannot decode array bytes: {e}") from e
    raise ValueError(f"{what}: unknown encoding {encoding}")
