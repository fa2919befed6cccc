"""One board layout: Python (hexz_tasks.layout) and C++ (workers/engine/layout.h) agree,
and the engine's packed boards are what the example store decodes."""

from __future__ import annotations

import numpy as np

from hexz_tasks import _engine, _search, codec, hexz_pb2, layout
from hexz_tasks.engine import Board, random_position


def test_python_and_cpp_layout_constants_agree() -> None:
    python = {k: v for k, v in vars(layout).items() if k.isupper() and isinstance(v, int)}
    assert python == _engine.LAYOUT
    assert _search.BOARD_SHAPE == layout.BOARD_SHAPE
    assert _search.MASK_SHAPE == layout.MASK_SHAPE
    assert _search.STATS_INTS == len(codec.STATS_FIELDS)


def test_derived_constants_and_the_wire_formats_cell_types() -> None:
    assert layout.BOARD_SHAPE == (layout.CHANNELS, layout.ROWS, layout.COLS)
    assert layout.POLICY_SIZE == int(np.prod(layout.MASK_SHAPE))
    assert layout.MASK_BYTES * 8 >= layout.POLICY_SIZE and layout.MASK_BYTES % 4 == 0
    assert layout.SWAP_PLAYERS == (*range(5, 10), *range(5), layout.CH_GRASS)
    assert layout.WIRE_CELL_TYPE_FLAG == hexz_pb2.Field.FLAG
    assert layout.WIRE_CELL_TYPE_NORMAL == hexz_pb2.Field.NORMAL
    assert layout.policy_index(1, 3, 4) == layout.CELLS + 3 * layout.COLS + 4


def _positions(n: int, seed: int) -> list[tuple[Board, int]]:
    rng = np.random.default_rng(seed)
    return [random_position(rng, int(rng.integers(0, 60))) for _ in range(n)]


def test_the_engines_packed_board_decodes_to_its_tensor() -> None:
    for board, player in _positions(40, seed=1):
        for view in (player, 1 - player):
            cells, grass, flags_left = board.packed(view)
            tensor = board.tensor(view)
            decoded = codec.decode_boards(cells[None], grass[None], flags_left[None])[0]
            np.testing.assert_array_equal(decoded, tensor)
            # ... and Python packs a tensor exactly as the engine does.
            py = codec.pack_boards(tensor[None], "t")
            for a, b in zip(py, (cells, grass, flags_left), strict=True):
                np.testing.assert_array_equal(a[0], b)


def test_packed_masks_round_trip() -> None:
    for board, player in _positions(10, seed=2):
        mask = board.action_mask(player)
        packed = codec.pack_masks(mask[None])
        assert packed.shape == (1, layout.MASK_BYTES)
        np.testing.assert_array_equal(codec.unpack_masks(packed)[0], mask)
        assert codec.mask_popcount(packed)[0] == mask.sum()
