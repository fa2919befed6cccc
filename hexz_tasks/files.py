"""Files that appear complete or not at all: write to a temporary name, fsync, rename,
fsync the directory. Used by the trainer's dataset, the model repository and archives."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path


def write_synced(path: Path, data: bytes) -> None:
    """Writes `data` to `path` and fsyncs the file (not its directory)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write(path: Path, data: bytes) -> Path:
    """Writes `data` so that `path` appears complete or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    write_synced(tmp, data)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


def temp_path(path: Path) -> Path:
    """A temporary name next to `path`, private to this process (listings skip ``.tmp-*``)."""
    return path.parent / f".tmp-{path.name}-{os.getpid()}"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def utc_timestamp() -> str:
    """The time now for file names, sortable: 20250101-120000.123456."""
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S.%f")
