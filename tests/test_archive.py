"""Archives (*.gz AddTrainingExamplesRequest): print, import (both encodings), export."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import redis
from conftest import RedisServer
from synthetic import game_examples

from hexz_tasks import hexz_pb2
from hexz_tasks.archive import (
    export_to,
    import_files,
    print_request,
    read_request,
    stored_columns,
    write_request,
)
from hexz_tasks.dataset import Dataset
from hexz_tasks.examples import from_columns, npy_bytes, to_columns
from hexz_tasks.keys import Keys
from hexz_tasks.store import ExampleStore

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def store(redis_client: redis.Redis, test_keys: Keys) -> ExampleStore:
    return ExampleStore(redis_client, test_keys, settle_ms=0)


def _request(
    seed: int, encoding: int = hexz_pb2.TrainingExample.NUMPY
) -> hexz_pb2.AddTrainingExamplesRequest:
    examples = game_examples(1, seed, runs=30, max_moves=30)[0]
    if encoding == hexz_pb2.TrainingExample.PYTORCH:
        examples = from_columns(to_columns(examples, "x"), encoding)
    req = hexz_pb2.AddTrainingExamplesRequest(examples=examples, execution_id=f"run-{seed}")
    req.worker_config.device = "cpu"
    req.worker_config.runs_per_move = 30
    return req


def _key(e: hexz_pb2.TrainingExample) -> bytes:
    """What must survive import and export unchanged (priors are float16 in the store)."""
    e = from_columns(to_columns([e], "k"))[0]
    e.model_predictions.ClearField("priors")
    return e.SerializeToString()


@pytest.mark.parametrize("encoding", ["NUMPY", "PYTORCH"])
def test_import_then_export_round_trips(tmp_path: Path, store: ExampleStore, encoding: str) -> None:
    enc = hexz_pb2.TrainingExample.Encoding.Value(encoding)
    reqs = [_request(i, enc) for i in range(3)]
    paths = [write_request(tmp_path / "in" / f"{i}.gz", r) for i, r in enumerate(reqs)]
    added, errors = import_files(paths, store)
    want = [e for r in reqs for e in r.examples]
    assert errors == [] and added == len(want)
    assert import_files(paths, store) == (0, [])  # importing again adds nothing
    ds = Dataset(tmp_path / "ds")
    store.drain(ds)
    extra = _request(9, enc)
    import_files([write_request(tmp_path / "in" / "late.gz", extra)], store)  # still in Redis
    want += list(extra.examples)
    n, files = export_to(tmp_path / "out", stored_columns(ds, store), enc, per_file=25)
    assert n == len(want)
    assert files == -(-n // 25)
    got = [e for p in sorted((tmp_path / "out").glob("*.gz")) for e in read_request(p).examples]
    assert all(e.encoding == enc for e in got)
    assert [_key(e) for e in got] == [_key(e) for e in want]


def test_bad_archives_are_rejected_naming_file_and_example(
    tmp_path: Path, store: ExampleStore
) -> None:
    good = write_request(tmp_path / "good.gz", _request(1))
    req = _request(2)
    board = np.zeros((11, 11, 10), np.float32)
    board[0, 0, 0] = np.nan
    req.examples[4].board = npy_bytes(board)
    bad = write_request(tmp_path / "bad.gz", req)
    not_gzip = tmp_path / "plain.gz"
    not_gzip.write_bytes(b"hello")
    not_proto = tmp_path / "noproto.gz"
    not_proto.write_bytes(gzip.compress(b"\xff\xff\xff"))
    added, errors = import_files([bad, good, not_gzip, not_proto], store)
    assert added == len(_request(1).examples)  # the good file, nothing of the bad one
    assert errors[0] == f"{bad}: examples[4].board has NaN or infinite values"
    assert errors[1].startswith(f"{not_gzip}: not a gzip-compressed AddTrainingExamplesRequest")
    assert errors[2].startswith(f"{not_proto}: not a gzip-compressed AddTrainingExamplesRequest")


def test_print_request_summarises(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    req = _request(3)
    path = write_request(tmp_path / "r.gz", req)
    assert print_request(path) == 0
    out = capsys.readouterr().out
    ex = req.examples[0]
    assert f"examples: {len(req.examples)}" in out
    assert "execution_id: run-3" in out
    assert 'device: "cpu"' in out and "runs_per_move: 30" in out
    assert f"move: player 1 move 0 at ({ex.move.row}, {ex.move.col})" in out
    assert "model_key: flagz:0" in out
    assert f"value: {ex.model_predictions.value:.4f}" in out
    assert f"valid_moves: {ex.stats.valid_moves}" in out
    assert "prior of the chosen move: " in out
    assert "prior quantiles over" in out


def test_cli_import_and_export(
    tmp_path: Path, store: ExampleStore, redis_server: RedisServer
) -> None:
    good_req = _request(4)
    good = write_request(tmp_path / "good.gz", good_req)
    req = _request(5)
    req.examples[2].result = 3
    bad = write_request(tmp_path / "bad.gz", req)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("HEXZ_")},
        "PYTHONPATH": str(REPO_ROOT),
        "HEXZ_REDIS_URL": redis_server.url,
        "HEXZ_KEY_PREFIX": store.keys.prefix,
        "HEXZ_DATA_DIR": str(tmp_path / "data"),
    }
    hexz = [sys.executable, "-m", "hexz_tasks.cli"]
    run = subprocess.run(
        [*hexz, "import", str(good), str(bad)], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 1
    assert f"{bad}: examples[2].result must be -1, 0 or 1, got 3.0" in run.stderr
    assert store.total_examples() == len(good_req.examples)
    run = subprocess.run(
        [*hexz, "export", "--out", str(tmp_path / "out"), "--encoding", "pytorch"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    (out,) = (tmp_path / "out").glob("*.gz")
    got = read_request(out).examples
    assert [_key(e) for e in got] == [_key(e) for e in good_req.examples]
    run = subprocess.run(
        [*hexz, "print-request", str(out)], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0 and "encoding PYTORCH" in run.stdout
