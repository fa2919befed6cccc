"""Checks TrainingExamples that come from outside (gRPC AddTrainingExamples, `hexz import`)
against the rules, before anything of them is stored.

Every field is checked: the board decodes to a possible Flagz position, the action mask
equals that position's legal moves (it is derived when absent), move_probs are finite,
non-negative, sum to 1 and sit on legal moves only, the move played is legal and made by
the player to move, result, value and priors are in range, enums are known, unix_micros
and the checkpoint are plausible and the search statistics bounded. Unknown fields are
dropped. What passes is a copy with NUMPY-encoded arrays; what fails raises
:class:`InvalidExample` naming the example and the field.

Works on the protobuf and decoded NumPy arrays only, so it does not depend on how the
store encodes examples.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence

import numpy as np

from hexz_tasks import hexz_pb2
from hexz_tasks.examples import BOARD_SHAPE, MASK_SHAPE, decode_array, npy_bytes
from hexz_tasks.settings import valid_model_name

Example = hexz_pb2.TrainingExample
_FLAG = hexz_pb2.Field.FLAG
_NORMAL = hexz_pb2.Field.NORMAL
ROWS, COLS = BOARD_SHAPE[1], BOARD_SHAPE[2]

# 2020-01-01: no example of this project is older. 0 means "not recorded".
MIN_UNIX_MICROS = 1_577_836_800 * 10**6
# Clocks of other machines may run ahead a little, not a day.
MAX_CLOCK_SKEW_MICROS = 24 * 3600 * 10**6
# Moves in one game: a Flagz board has 105 cells; the spec's cap is 200 moves.
MAX_MOVE_NUMBER = 1000
# Entries of a per-depth statistics list: no search tree is deeper than a game is long.
MAX_STATS_DEPTH = 512
MAX_STATS_DURATION_MICROS = 3600 * 10**6
PROBS_TOLERANCE = 1e-3
PRIORS_TOLERANCE = 1e-2
MAX_CHECKPOINT = 2**31 - 1


class InvalidExample(ValueError):
    """An example breaks a rule; the message names the example and the field."""


def validate_examples(
    examples: Sequence[Example], where: str = "", *, max_checkpoint: int | None = None
) -> list[Example]:
    """Checked copies of `examples` (see :func:`validate_example`); `where` prefixes the
    field names in errors (e.g. a file name)."""
    now = int(time.time() * 1e6)
    return [
        validate_example(ex, f"{where}examples[{i}]", max_checkpoint=max_checkpoint, now=now)
        for i, ex in enumerate(examples)
    ]


def validate_example(
    ex: Example, what: str, *, max_checkpoint: int | None = None, now: int | None = None
) -> Example:
    """A checked copy of `ex` with NUMPY arrays and without unknown fields.

    `max_checkpoint`: the newest checkpoint that exists (examples claiming a newer one
    are refused); `now`: the current time in unix microseconds.
    """
    out = Example()
    out.CopyFrom(ex)
    out.DiscardUnknownFields()
    _check_scalars(out, what, int(time.time() * 1e6) if now is None else now)
    if out.HasField("model_key"):
        _check_model_key(out.model_key, what, max_checkpoint)
    if out.HasField("stats"):
        _check_stats(out.stats, what)
    enc = out.encoding
    board = _array(out.board, enc, f"{what}.board", BOARD_SHAPE, np.float32)
    legal = legal_moves(board, f"{what}.board")
    if out.action_mask:
        mask = _array(out.action_mask, enc, f"{what}.action_mask", MASK_SHAPE, np.bool_)
        if not np.array_equal(mask, legal):
            raise InvalidExample(
                f"{what}.action_mask differs from the legal moves of the board "
                f"({int((mask != legal).sum())} of 220 entries)"
            )
    probs = _array(out.move_probs, enc, f"{what}.move_probs", MASK_SHAPE, np.float32)
    _check_distribution(probs, legal, f"{what}.move_probs", PROBS_TOLERANCE, exact_sum=True)
    if out.HasField("move"):
        _check_move(out.move, out.turn, legal, what)
    out.encoding = Example.NUMPY
    out.board = npy_bytes(board)
    out.move_probs = npy_bytes(probs)
    out.action_mask = npy_bytes(legal)
    if out.HasField("model_predictions"):
        value = out.model_predictions.value
        if not (math.isfinite(value) and -1.0 <= value <= 1.0):
            raise InvalidExample(f"{what}.model_predictions.value must be in [-1, 1], got {value}")
        if out.model_predictions.priors:
            where = f"{what}.model_predictions.priors"
            priors = _array(out.model_predictions.priors, enc, where, MASK_SHAPE, np.float32)
            _check_distribution(priors, legal, where, PRIORS_TOLERANCE, exact_sum=False)
            out.model_predictions.priors = npy_bytes(priors)
    return out


def legal_moves(board: np.ndarray, what: str) -> np.ndarray:
    """(2, 11, 10) bool legal moves of the player to move (player 0 of the board's view);
    InvalidExample if `board` is not a possible Flagz position."""
    from hexz_tasks.engine import Board

    if ((board != np.round(board)) | (board < 0) | (board > 5)).any():
        raise InvalidExample(f"{what} has entries that are not whole numbers in 0..5")
    try:
        legal = Board.from_tensor(board).action_mask(0)
    except ValueError as e:
        raise InvalidExample(f"{what} is not a possible board: {e}") from None
    if not legal.any():
        raise InvalidExample(f"{what}: the player to move has no legal move")
    return legal


def _check_scalars(ex: Example, what: str, now: int) -> None:
    if ex.encoding not in (Example.NUMPY, Example.PYTORCH):
        raise InvalidExample(f"{what}.encoding is unknown: {ex.encoding}")
    if ex.result not in (-1.0, 0.0, 1.0):
        raise InvalidExample(f"{what}.result must be -1, 0 or 1, got {ex.result}")
    if ex.turn not in (0, 1):
        raise InvalidExample(f"{what}.turn must be 0 or 1, got {ex.turn}")
    if ex.unix_micros and not MIN_UNIX_MICROS <= ex.unix_micros <= now + MAX_CLOCK_SKEW_MICROS:
        raise InvalidExample(
            f"{what}.unix_micros {ex.unix_micros} is not a time between 2020 and now"
        )


def _check_model_key(key: hexz_pb2.ModelKey, what: str, max_checkpoint: int | None) -> None:
    if not valid_model_name(key.name):
        raise InvalidExample(f"{what}.model_key.name is not a valid model name: {key.name[:80]!r}")
    top = MAX_CHECKPOINT if max_checkpoint is None else max_checkpoint
    if not 0 <= key.checkpoint <= top:
        raise InvalidExample(
            f"{what}.model_key.checkpoint must be in 0..{top} (the newest), got {key.checkpoint}"
        )


def _check_stats(stats: Example.Stats, what: str) -> None:
    for field, value in stats.ListFields():
        name = f"{what}.stats.{field.name}"
        if field.is_repeated:
            if len(value) > MAX_STATS_DEPTH:
                raise InvalidExample(f"{name} has {len(value)} entries, at most {MAX_STATS_DEPTH}")
            if any(v < 0 for v in value):
                raise InvalidExample(f"{name} has negative entries")
        elif field.name == "selected_child_q":
            if not (math.isfinite(value) and -1.0 <= value <= 1.0):
                raise InvalidExample(f"{name} must be in [-1, 1], got {value}")
        elif value < 0:
            raise InvalidExample(f"{name} must be >= 0, got {value}")
    if stats.duration_micros > MAX_STATS_DURATION_MICROS:
        raise InvalidExample(f"{what}.stats.duration_micros is more than an hour")


def _check_move(move: hexz_pb2.GameEngineMove, turn: int, legal: np.ndarray, what: str) -> None:
    if move.player_num != turn + 1:
        raise InvalidExample(
            f"{what}.move.player_num must be turn + 1 = {turn + 1}, got {move.player_num}"
        )
    if move.cell_type not in (_FLAG, _NORMAL):
        raise InvalidExample(f"{what}.move.cell_type must be FLAG or NORMAL, got {move.cell_type}")
    if not (0 <= move.row < ROWS and 0 <= move.col < COLS - move.row % 2):
        raise InvalidExample(f"{what}.move ({move.row}, {move.col}) is not a cell of the board")
    if not 0 <= move.move <= MAX_MOVE_NUMBER:
        raise InvalidExample(f"{what}.move.move must be in 0..{MAX_MOVE_NUMBER}, got {move.move}")
    kind = 0 if move.cell_type == _FLAG else 1
    if not legal[kind, move.row, move.col]:
        raise InvalidExample(f"{what}.move is not a legal move on the example's board")


def _check_distribution(
    p: np.ndarray, legal: np.ndarray, what: str, tolerance: float, *, exact_sum: bool
) -> None:
    """Probabilities: non-negative, on legal moves only, summing to 1 (or at most 1)."""
    if (p < 0).any():
        raise InvalidExample(f"{what} has negative entries")
    if (p[~legal] != 0).any():
        raise InvalidExample(f"{what} puts weight on moves that are not legal (action_mask)")
    total = float(p.sum(dtype=np.float64))
    if (exact_sum and abs(total - 1.0) > tolerance) or total > 1.0 + tolerance:
        raise InvalidExample(f"{what} must sum to 1, sum is {total:.4f}")


def _array(data: bytes, encoding: int, what: str, shape: tuple, dtype: type) -> np.ndarray:
    if not data:
        raise InvalidExample(f"{what} is missing")
    if encoding == Example.NUMPY and not data.startswith(b"\x93NUMPY"):
        raise InvalidExample(f"{what} is not a .npy file (the example says encoding NUMPY)")
    try:
        a = decode_array(data, encoding, what)
    except ValueError as e:
        # torch's refusals run over many lines with terminal colour codes: keep the gist.
        first = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).split("\n")[0]
        raise InvalidExample(first[:300]) from None
    if a.shape != shape:
        raise InvalidExample(f"{what} must have shape {shape}, got {a.shape}")
    if dtype is np.bool_:
        if a.dtype != np.bool_ and not np.isin(a, (0, 1)).all():
            raise InvalidExample(f"{what} must be boolean, got {a.dtype} with other values")
        return a.astype(np.bool_)
    if not np.issubdtype(a.dtype, np.floating):
        raise InvalidExample(f"{what} must be floating point, got {a.dtype}")
    if not np.isfinite(a).all():
        raise InvalidExample(f"{what} has NaN or infinite values")
    return a.astype(dtype)
