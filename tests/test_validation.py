"""Data that must not be stored: the 12 kinds of bad example issue 16 found accepted by
AddTrainingExamples, refused by a real server with the store untouched; unknown bytes
dropped; `hexz import` checked the same way; pages that stay up whatever is stored."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from test_server_support import Running, add, game_examples, run_servers

from hexz_tasks import hexz_pb2
from hexz_tasks.archive import import_files, write_request
from hexz_tasks.examples import npy_bytes
from hexz_tasks.validation import InvalidExample, validate_example

Status = hexz_pb2.AddTrainingExamplesResponse.Status
Example = hexz_pb2.TrainingExample


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    yield from run_servers(tmp_path_factory)


def _load(b: bytes) -> np.ndarray:
    return np.load(io.BytesIO(b))


def _with_predictions(ex: Example) -> None:
    """Adds the root priors and value a worker sends (priors on the legal moves)."""
    mask = _load(ex.action_mask)
    priors = np.where(mask, 1.0 / mask.sum(), 0).astype(np.float32)
    ex.model_predictions.CopyFrom(hexz_pb2.ModelPredictions(priors=npy_bytes(priors), value=0.25))


def _two_pieces_on_one_cell(ex: Example) -> None:
    board = _load(ex.board)
    r, c = np.argwhere(board[1] > 0)[0]
    board[6, r, c] = 1  # the opponent's piece on the mover's cell
    ex.board = npy_bytes(board)


def _mask_with_an_extra_move(ex: Example) -> None:
    mask = _load(ex.action_mask)
    mask[0, 0, 0] = not mask[0, 0, 0]
    ex.action_mask = npy_bytes(mask)


def _probs_on_an_illegal_move(ex: Example) -> None:
    """The mask is forged to allow an occupied cell and the probabilities put weight
    there: consistent with each other, not with the board."""
    mask, board = _load(ex.action_mask), _load(ex.board)
    r, c = np.argwhere(board[1] > 0)[0]
    mask[1, r, c] = True
    probs = _load(ex.move_probs) * 0.5
    probs[1, r, c] = 0.5
    ex.action_mask, ex.move_probs = npy_bytes(mask), npy_bytes(probs)


def _negative_prior(ex: Example) -> None:
    priors = _load(ex.model_predictions.priors)
    legal = np.argwhere(_load(ex.action_mask))
    priors[tuple(legal[0])] = -0.5
    ex.model_predictions.priors = npy_bytes(priors)


def _priors_summing_to_5(ex: Example) -> None:
    ex.model_predictions.priors = npy_bytes(_load(ex.model_predictions.priors) * 5)


def _illegal_move_played(ex: Example) -> None:
    board = _load(ex.board)
    r, c = np.argwhere(board[1] > 0)[0]
    ex.move.row, ex.move.col = int(r), int(c)


def _setter(**fields: object) -> Callable[[Example], None]:
    def apply(ex: Example) -> None:
        for path, value in fields.items():
            target = ex
            *parents, name = path.split("__")
            for p in parents:
                target = getattr(target, p)
            setattr(target, name, value)

    return apply


BAD: dict[str, tuple[Callable[[Example], None], str]] = {
    "impossible board with a mask": (_two_pieces_on_one_cell, "board is not a possible board"),
    "mask that is not the legal moves": (_mask_with_an_extra_move, "action_mask differs"),
    "probabilities on an illegal move": (_probs_on_an_illegal_move, "action_mask differs"),
    "NaN value": (_setter(model_predictions__value=math.nan), "value must be in [-1, 1]"),
    "value out of range": (_setter(model_predictions__value=3.0), "value must be in [-1, 1]"),
    "negative prior": (_negative_prior, "priors has negative entries"),
    "priors summing to 5": (_priors_summing_to_5, "priors must sum to 1"),
    "cell_type 99": (_setter(move__cell_type=99), "cell_type must be FLAG or NORMAL"),
    "unix_micros 2**63-1": (_setter(unix_micros=2**63 - 1), "unix_micros"),
    "checkpoint -5": (_setter(model_key__checkpoint=-5), "checkpoint must be in 0.."),
    "100,000 stats entries": (
        lambda ex: ex.stats.nodes_per_depth.extend([1] * 100_000),
        "nodes_per_depth has 100000 entries",
    ),
    "illegal move played": (_illegal_move_played, "move is not a legal move"),
}


def _game(running: Running, seed: int) -> list[Example]:
    key = hexz_pb2.ModelKey(name=running.settings.model_name, checkpoint=0)
    examples = game_examples(seed, model_key=key)
    for ex in examples:
        _with_predictions(ex)
    return examples


def test_a_good_game_with_every_field_is_accepted(running: Running) -> None:
    assert add(running, _game(running, 80), execution_id="good").status == Status.ACCEPTED


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_examples_are_rejected_with_the_store_untouched(running: Running, kind: str) -> None:
    examples = _game(running, 81)
    spoil, words = BAD[kind]
    spoil(examples[10])
    counters, length = running.counters(), running.stream_len()
    resp = add(running, examples, execution_id=f"bad-{kind}")
    assert resp.status == Status.REJECTED_OTHER, kind
    assert "examples[10]" in resp.error_message and words in resp.error_message
    assert running.counters() == counters
    assert running.stream_len() == length


def test_unknown_bytes_are_dropped_not_stored(running: Running) -> None:
    """1 MB of unknown fields inside stats: the example is stored without them."""
    examples = _game(running, 82)
    stats = hexz_pb2.TrainingExample.Stats(visit_count=10, nodes_per_depth=[1, 4, 9])
    examples[0].stats.MergeFromString(stats.SerializeToString() + _length_delimited(999, 1 << 20))
    assert examples[0].stats.ByteSize() > 1 << 20
    length = running.stream_len()
    assert add(running, examples, execution_id="unknown").status == Status.ACCEPTED
    entries = running.redis.xrange(running.keys.examples_stream, count=10_000)[length:]
    assert len(entries) == 1
    assert len(entries[0][1][b"d"]) < 100_000  # the game, not the megabyte
    stored = [ex for ex in _stored(running, entries) if ex.HasField("stats")]
    assert [list(ex.stats.nodes_per_depth) for ex in stored] == [[1, 4, 9]]
    assert stored[0].stats.visit_count == 10
    assert stored[0].stats.ByteSize() < 100


def _length_delimited(field: int, size: int) -> bytes:
    """A protobuf field `field` of wire type 2 holding `size` random (incompressible) bytes."""

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)

    noise = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    return varint(field << 3 | 2) + varint(size) + noise


def _stored(running: Running, entries: list) -> list[Example]:
    from hexz_tasks import codec
    from hexz_tasks.examples import from_columns

    out = []
    for _, fields in entries:
        out.extend(from_columns(codec.from_blob(fields[b"d"])))
    return out


def test_examples_claiming_a_checkpoint_that_does_not_exist_are_rejected(
    running: Running,
) -> None:
    examples = _game(running, 83)
    examples[0].model_key.checkpoint = 10_000
    resp = add(running, examples, execution_id="future")
    assert resp.status == Status.REJECTED_OTHER
    assert "examples[0].model_key.checkpoint" in resp.error_message


@pytest.mark.parametrize("kind", ["cell_type 99", "NaN value", "impossible board with a mask"])
def test_import_checks_every_example(tmp_path: Path, running: Running, kind: str) -> None:
    examples = _game(running, 84)
    BAD[kind][0](examples[10])
    path = write_request(
        tmp_path / "bad.gz", hexz_pb2.AddTrainingExamplesRequest(examples=examples)
    )
    length = running.stream_len()
    added, errors = import_files([path], running.servers.state.store)
    assert added == 0
    assert len(errors) == 1 and errors[0].startswith(f"{path}: examples[10]")
    assert BAD[kind][1] in errors[0]
    assert running.stream_len() == length


def test_the_validator_returns_numpy_arrays_and_derives_a_missing_mask(running: Running) -> None:
    ex = _game(running, 85)[2]
    mask = _load(ex.action_mask)
    ex.ClearField("action_mask")
    out = validate_example(ex, "ex")
    assert out.encoding == Example.NUMPY
    assert np.array_equal(_load(out.action_mask), mask)
    with pytest.raises(InvalidExample, match=r"ex\.turn"):
        validate_example(Example(turn=5), "ex")


def test_pages_stay_up_whatever_is_stored(running: Running) -> None:
    """Examples stored before validation existed (or by a bug): the page shows them,
    latest.json is strict JSON (null for NaN), nothing answers 500."""
    examples = _game(running, 86)[:3]
    examples[0].model_predictions.value = math.nan
    examples[1].move.cell_type = 99
    examples[2].unix_micros = 2**63 - 1
    examples[2].model_predictions.value = math.inf
    running.servers.state.store.add_examples("stored-by-a-bug", examples)

    page = requests.get(f"{running.http}/examples/latest?n=3", timeout=30)
    assert page.status_code == 200, page.text[:500]
    data = requests.get(f"{running.http}/examples/latest.json?n=3", timeout=30)
    assert data.status_code == 200

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    shown = json.loads(data.text, parse_constant=refuse)
    assert [e["value"] for e in shown] == [None, 0.25, None]
    assert shown[1]["move"]["cell_type"] == 99
    assert requests.get(f"{running.http}/", timeout=30).status_code == 200
    assert requests.get(f"{running.http}/status.json", timeout=30).status_code == 200
