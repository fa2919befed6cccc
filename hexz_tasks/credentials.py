"""Generated local secrets: the embedded Redis password and `hexz flower`'s login.

Each is made once, on first use by any local process, and kept in a mode-600 file in the
data directory, where every later process (workers, beat, servers, the CLI) reads it.
Creation is exclusive (O_EXCL), so processes starting together agree on one value.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

REDIS_PASSWORD_FILE = Path("redis") / "password"
FLOWER_AUTH_FILE = Path("flower-basic-auth")
FLOWER_USER = "hexz"


def read_or_create_secret(path: Path, make: str) -> tuple[str, bool]:
    """The secret in `path`, or `make` written there (mode 600) if the file did not exist.

    Returns (secret, created). A file another process is still writing is waited for
    briefly; an empty or unreadable one raises ValueError naming it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        deadline = time.monotonic() + 2.0
        while not (text := path.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.01)  # created by a process that has not written it yet
        if not text:
            raise ValueError(f"{path} is empty: delete it to generate a new secret") from None
        return text, False
    with os.fdopen(fd, "w") as f:
        f.write(make + "\n")
        f.flush()
        os.fsync(f.fileno())
    return make, True


def embedded_redis_password(data_dir: Path) -> str:
    """The project-managed Redis's password (<data_dir>/redis/password)."""
    return read_or_create_secret(Path(data_dir) / REDIS_PASSWORD_FILE, secrets.token_urlsafe(24))[0]


def flower_basic_auth(data_dir: Path) -> tuple[str, Path, bool]:
    """(user:password, the file that keeps it, whether it was just generated)."""
    path = Path(data_dir) / FLOWER_AUTH_FILE
    auth, created = read_or_create_secret(path, f"{FLOWER_USER}:{secrets.token_urlsafe(18)}")
    return auth, path, created
