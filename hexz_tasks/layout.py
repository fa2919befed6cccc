"""The board layout: the network's tensors, the policy index and the example store's
packed board, as every part of the project sees them.

Keep in sync with workers/engine/layout.h (tests/test_layout.py checks that they agree).
"""

from __future__ import annotations

ROWS = 11
COLS = 10
CELLS = ROWS * COLS  # 110 slots (r * COLS + c), 105 valid cells
VALID_CELLS = 105
INITIAL_FLAGS = 3

# The (CHANNELS, ROWS, COLS) float32 board tensor, from one player's view: that player's
# block is channels 0-4, the other's 5-9 (PLAYER_CHANNELS + these), grass 10.
CHANNELS = 11
PLAYER_CHANNELS = 5
CH_FLAG, CH_VALUE, CH_BLOCKED, CH_NEXT, CH_FLAGS_LEFT = range(PLAYER_CHANNELS)
CH_GRASS = 10
BOARD_SHAPE = (CHANNELS, ROWS, COLS)
# The other player's view of a board tensor: the two player blocks swapped.
SWAP_PLAYERS = (5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 10)

# Moves and the policy: (MOVE_TYPES, ROWS, COLS) planes, index typ * CELLS + cell;
# typ 0 places a flag, typ 1 a normal piece.
MOVE_TYPES = 2
MASK_SHAPE = (MOVE_TYPES, ROWS, COLS)
POLICY_SIZE = MOVE_TYPES * CELLS  # 220
# The action mask as bits, little bit order (bit i of byte i // 8 is policy index i),
# padded to whole 32-bit words.
MASK_BYTES = (POLICY_SIZE + 31) // 32 * 4  # 28

# The packed board of the example store, from the player to move's view: one byte per
# player and cell, flag | blocked << 1 | value << 2 | next << 5; grass two cells per
# byte (cell 2k in the low nibble); the flags left of both players.
PACK_FLAG_SHIFT = 0
PACK_BLOCKED_SHIFT = 1
PACK_VALUE_SHIFT = 2
PACK_NEXT_SHIFT = 5
GRASS_BYTES = CELLS // 2  # 55
# The cell byte as (channel of the player's block, shift, bits).
PACKED_CELL = (
    (CH_FLAG, PACK_FLAG_SHIFT, 1),
    (CH_BLOCKED, PACK_BLOCKED_SHIFT, 1),
    (CH_VALUE, PACK_VALUE_SHIFT, 3),
    (CH_NEXT, PACK_NEXT_SHIFT, 3),
)

# Field.CellType of the wire format for a move's type (GameEngineMove.cell_type).
WIRE_CELL_TYPE_FLAG = 5
WIRE_CELL_TYPE_NORMAL = 0


def policy_index(typ: int, r: int, c: int) -> int:
    return typ * CELLS + r * COLS + c
