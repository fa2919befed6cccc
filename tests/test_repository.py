"""The model repository: atomic checkpoints, clear errors, publishing through Redis."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import torch

from hexz_tasks.keys import Keys
from hexz_tasks.model import ModelParams, load_scriptmodule, make_model
from hexz_tasks.model_source import fetch_latest
from hexz_tasks.repository import CheckpointError, ModelRepository, fetch_model_bytes

PARAMS = ModelParams("conv2d", 1, 8)


def test_initial_checkpoint_has_the_spec_layout(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path, "m1")
    assert repo.latest() is None
    assert repo.ensure_initial(PARAMS) == 0
    assert repo.ensure_initial(PARAMS) == 0  # idempotent
    d = tmp_path / "models" / "flagz" / "m1" / "checkpoints" / "0"
    assert {p.name for p in d.iterdir()} >= {
        "model.pt",
        "model.pt.params",
        "scriptmodule.pt",
        "stats.json",
    }
    assert json.loads((d / "model.pt.params").read_text()) == PARAMS.to_dict()
    state = torch.load(d / "model.pt", weights_only=True)
    assert set(state) == set(make_model(PARAMS).state_dict())


def test_scriptmodule_computes_what_the_state_dict_computes(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path, "m")
    repo.ensure_initial(PARAMS)
    model = repo.load_model(0).eval()
    script = load_scriptmodule(repo.scriptmodule_path(0))
    board = torch.rand(4, 11, 11, 10)
    mask = torch.rand(4, 2, 11, 10) > 0.5
    with torch.no_grad():
        for a, b in zip(model(board, mask), script(board, mask), strict=True):
            torch.testing.assert_close(a, b)


def test_temp_directories_are_never_checkpoints(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path, "m")
    repo.ensure_initial(PARAMS)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = repo.checkpoints_dir / f".tmp-1-{dead.stdout.strip()}-abcd"
    stale.mkdir()
    (stale / "model.pt").write_bytes(b"half")
    live = repo.checkpoints_dir / f".tmp-1-{os.getpid()}-ef01"
    live.mkdir()
    assert repo.latest() == 0
    repo.save(1, make_model(PARAMS), PARAMS)
    assert repo.checkpoints() == [0, 1]
    assert not stale.exists()  # its writer is dead
    assert live.exists()  # may still be written
    with pytest.raises(FileExistsError):
        repo.save(1, make_model(PARAMS), PARAMS)
    assert not any(
        p.name.startswith(".tmp-1-") and p != live for p in repo.checkpoints_dir.iterdir()
    )


def test_corrupt_checkpoint_names_the_file_and_keeps_it(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path, "m")
    repo.ensure_initial(PARAMS)
    path = repo.checkpoint_dir(0) / "model.pt"
    path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=re.escape(f"corrupt checkpoint file {path}")):
        repo.load_model(0)
    assert path.read_bytes() == b"garbage"
    (repo.checkpoint_dir(0) / "model.pt.params").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"model\.pt\.params"):
        repo.load_params(0)
    (repo.checkpoint_dir(0) / "model.pt.params").unlink()
    with pytest.raises(CheckpointError, match=r"checkpoint file missing: .*model\.pt\.params"):
        repo.load_model(0)


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path, "m")
    repo.ensure_initial(PARAMS)
    torch.save({"x": object.__new__(ModelParams)}, repo.checkpoint_dir(0) / "model.pt")
    with pytest.raises(CheckpointError, match=r"model\.pt"):
        repo.load_model(0)


def test_publish_and_fetch_through_redis(
    tmp_path: Path, redis_client: redis.Redis, test_keys: Keys
) -> None:
    r, keys = redis_client, test_keys
    repo = ModelRepository(tmp_path, "pub")
    repo.ensure_initial(PARAMS)
    assert fetch_latest(r, keys) is None
    for n in range(1, 7):
        repo.save(n, make_model(PARAMS), PARAMS)
        repo.publish(r, keys, n)
    assert fetch_latest(r, keys) == ("pub", 6)
    data = fetch_model_bytes(r, keys, "pub", 6)
    assert data == repo.scriptmodule_bytes(6)
    load_scriptmodule(data)
    assert fetch_model_bytes(r, keys, "pub", 1) is None  # old ones retired


def test_sigkill_during_saves_leaves_only_complete_checkpoints(tmp_path: Path) -> None:
    code = (
        "import sys; from hexz_tasks.repository import ModelRepository; "
        "from hexz_tasks.model import ModelParams, make_model; "
        "p = ModelParams('conv2d', 2, 32); r = ModelRepository(sys.argv[1], 'k'); "
        "[r.save(n, make_model(p), p, stats={'n': n}) for n in range(10**6)]"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env=env)
    repo = ModelRepository(tmp_path, "k")
    deadline = time.monotonic() + 60
    while len(repo.checkpoints()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=10)
    cps = repo.checkpoints()
    assert len(cps) >= 3 and cps == list(range(len(cps)))
    for n in cps:
        repo.load_model(n)
        assert json.loads((repo.checkpoint_dir(n) / "stats.json").read_text()) == {"n": n}
        load_scriptmodule(repo.scriptmodule_path(n))
    p = ModelParams("conv2d", 2, 32)
    repo.save(cps[-1] + 1, make_model(p), p)
    assert not list(repo.checkpoints_dir.glob(".tmp-*"))  # the killed writer's leftovers
