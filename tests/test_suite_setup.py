"""The test command on a machine that lacks a system tool says so once, clearly.

Each case runs pytest in a subprocess with a PATH that hides the tool.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REDIS_SERVER, REPO_ROOT


def _pytest(path_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": str(path_dir)}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-ra", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_without_redis_server_the_run_stops_with_one_message(tmp_path: Path) -> None:
    run = _pytest(tmp_path, "tests/test_settings.py")
    out = run.stdout + run.stderr
    assert run.returncode == pytest.ExitCode.USAGE_ERROR, out
    assert out.count("redis-server is not on PATH") == 1, out
    assert "apt-get install redis-server" in out
    assert "passed" not in out and "Traceback" not in out
    # Collecting needs no Redis: a clean clone can always be counted.
    run = _pytest(tmp_path, "--collect-only", "-q", "tests/test_settings.py")
    assert run.returncode == 0, run.stdout + run.stderr


def test_without_chromium_the_page_tests_skip_with_one_reason(tmp_path: Path) -> None:
    assert REDIS_SERVER is not None
    (tmp_path / "redis-server").symlink_to(REDIS_SERVER)
    run = _pytest(tmp_path, "tests/test_server_pages.py", "tests/test_settings.py")
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "chromium: MISSING" in out
    skipped = [line for line in out.splitlines() if line.startswith("SKIPPED")]
    assert len(skipped) == 1 and "chromium is not installed" in skipped[0], out
    assert "passed, 1 skipped" in out.splitlines()[-1], out
