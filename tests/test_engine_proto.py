"""Boards arriving from the game server: Board.from_proto (a serialized GameEngineState)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hexz_tasks import hexz_pb2
from hexz_tasks.engine import Board, decode_proto, encode_proto

FIELD = hexz_pb2.Field


def played_board(seed: int, n_moves: int) -> Board:
    b = Board.random(seed)
    rng = np.random.default_rng(seed)
    p = 0
    for _ in range(n_moves):
        moves = b.legal_moves(p) or b.legal_moves(1 - p)
        if not moves:
            break
        if not b.legal_moves(p):
            p = 1 - p
        b.make_move(p, moves[rng.integers(len(moves))])
        p = 1 - p
    return b


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("n_moves", [0, 5, 30, 200])
def test_round_trip_through_the_server_format(seed: int, n_moves: int) -> None:
    b = played_board(seed, n_moves)
    state = encode_proto(b, 1, 17)
    # The server writes -1 for "blocked by a 5": the decoder treats it as no next value.
    for f in state.flagz.board.flat_fields:
        if f.type == FIELD.NORMAL and f.value == 0:
            for p in range(2):
                f.next_val[p] = f.next_val[p] or -(f.blocked >> p & 1)
    decoded, player = Board.from_proto(state.SerializeToString())
    assert player == 1
    np.testing.assert_array_equal(decoded.tensor(0), b.tensor(0))


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 120), st.integers(0, 1), st.integers(0, 10**6))
def test_encode_proto_inverts_decode_proto(seed: int, n_moves: int, player: int, move: int) -> None:
    b = played_board(seed, n_moves)
    state = encode_proto(b, player, move)
    assert state.flagz.board.move == move
    assert state.flagz.board.state == hexz_pb2.Board.RUNNING
    t, p = decode_proto(state.SerializeToString())
    assert p == player
    np.testing.assert_array_equal(t, b.tensor(0))


def test_missing_next_val_counts_as_none_and_invalid_cells_are_blocked() -> None:
    state = encode_proto(Board(), 0)
    for f in state.flagz.board.flat_fields:
        del f.next_val[:]
    f = state.flagz.board.flat_fields[12]  # (1, 2)
    f.next_val.append(3)  # only player 0's entry
    f.blocked = 2
    board, player = Board.from_proto(state.SerializeToString())
    t = board.tensor(0)
    assert player == 0
    assert t[3, 1, 2] == 3 and t[8, 1, 2] == 0 and t[2, 1, 2] == 0 and t[7, 1, 2] == 1
    for r in range(1, 11, 2):
        assert t[2, r, 9] == 1 and t[7, r, 9] == 1


def _mutated(mutate) -> bytes:
    state = encode_proto(played_board(1, 20), 0)
    mutate(state.flagz.board)
    return state.SerializeToString()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: setattr(b, "turn", 0), "turn must be 1 or 2"),
        (lambda b: setattr(b, "turn", 3), "turn must be 1 or 2"),
        (lambda b: b.flat_fields.pop(), "105 cells"),
        (lambda b: b.flat_fields.add(), "105 cells"),
        (lambda b: b.resources.pop(), "2 entries"),
        (lambda b: b.resources.add(), "2 entries"),
        (lambda b: b.resources[1].num_pieces.__delitem__(slice(5, None)), "has 5 counts"),
        (lambda b: b.resources[0].num_pieces.__setitem__(5, 4), "flags left"),
        (lambda b: b.flat_fields[3].CopyFrom(FIELD(type=FIELD.FLAG, owner=3)), "owner"),
        (lambda b: b.flat_fields[3].CopyFrom(FIELD(type=FIELD.FLAG, owner=0)), "owner"),
        (lambda b: b.flat_fields[3].CopyFrom(FIELD(type=FIELD.NORMAL, value=2)), "owner"),
        (lambda b: b.flat_fields[3].CopyFrom(FIELD(type=FIELD.NORMAL, owner=1, value=6)), "value"),
        (lambda b: b.flat_fields[3].CopyFrom(FIELD(type=FIELD.GRASS, value=9)), "GRASS value"),
        (lambda b: b.flat_fields[3].CopyFrom(FIELD(type=FIELD.FIRE)), "cell type"),
        (lambda b: b.flat_fields[3].CopyFrom(FIELD(type=42)), "cell type"),
    ],
)
def test_invalid_boards_name_the_problem(mutate, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Board.from_proto(_mutated(mutate))


def test_other_game_types_and_garbage() -> None:
    classic = hexz_pb2.GameEngineState(classic=hexz_pb2.GameEngineClassicState())
    with pytest.raises(ValueError, match="not flagz"):
        Board.from_proto(classic.SerializeToString())
    with pytest.raises(ValueError, match="not flagz"):
        Board.from_proto(b"")
    with pytest.raises(ValueError, match="not a serialized GameEngineState"):
        Board.from_proto(b"\xff\xff\xff\xff")
    with pytest.raises(ValueError, match="bytes"):
        Board.from_proto("a string")  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data: bytes) -> None:
    try:
        board, player = Board.from_proto(data)
    except ValueError:
        return
    assert player in (0, 1) and board.tensor(0).shape == (11, 11, 10)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.integers(0, 104),
            st.sampled_from(["type", "owner", "value", "blocked", "next_val"]),
            st.integers(-(2**31), 2**31 - 1) | st.integers(-3, 8),
        ),
        max_size=6,
    ),
    st.integers(0, 1000),
)
def test_fuzz_mutated_fields(edits: list[tuple[int, str, int]], flip: int) -> None:
    state = encode_proto(played_board(flip % 5, flip % 60), 0)
    fields = state.flagz.board.flat_fields
    for i, name, v in edits:
        if name == "next_val":
            fields[i].next_val.append(v)
        elif name == "type":
            fields[i].type = v % 12 - 2  # includes unknown enum values
        else:
            setattr(fields[i], name, v)
    data = state.SerializeToString()
    # Chop or corrupt a byte now and then.
    if flip % 7 == 0:
        data = data[: flip % max(1, len(data))]
    elif flip % 7 == 1:
        pos = flip % len(data)
        data = data[:pos] + bytes([flip % 256]) + data[pos + 1 :]
    try:
        board, player = Board.from_proto(data)
    except ValueError:
        return
    assert player in (0, 1)
    np.testing.assert_array_equal(Board.from_tensor(board.tensor(0)).tensor(0), board.tensor(0))
