// The board layout: the network's tensors, the policy index and the example store's
// packed board, as every part of the project sees them.
//
// Keep in sync with hexz_tasks/layout.py (tests/test_layout.py checks that they agree).
#pragma once

namespace hexz {

constexpr int kRows = 11;
constexpr int kCols = 10;
constexpr int kCells = kRows * kCols;  // 110 slots (r * kCols + c), 105 valid cells
constexpr int kValidCells = 105;
constexpr int kInitialFlags = 3;

// The (kChannels, kRows, kCols) float32 board tensor, from one player's view: that
// player's block is channels 0-4, the other's 5-9 (kPlayerChannels + these), grass 10.
constexpr int kChannels = 11;
constexpr int kPlayerChannels = 5;
constexpr int kChFlag = 0;
constexpr int kChValue = 1;
constexpr int kChBlocked = 2;
constexpr int kChNext = 3;
constexpr int kChFlagsLeft = 4;
constexpr int kChGrass = 10;
constexpr int kTensorSize = kChannels * kCells;  // 1210 floats, [channel][row][col]

// Moves and the policy: (kMoveTypes, kRows, kCols) planes, index typ * kCells + cell;
// typ 0 places a flag, typ 1 a normal piece.
constexpr int kMoveTypes = 2;
constexpr int kPolicySize = kMoveTypes * kCells;  // 220
// The action mask as bits, little bit order (bit i of byte i / 8 is policy index i).
constexpr int kMaskBytes = (kPolicySize + 31) / 32 * 4;  // 28: whole 32-bit words

// The packed board of the example store, from the player to move's view: one byte per
// player and cell, flag | blocked << 1 | value << 2 | next << 5; grass two cells per
// byte (cell 2k in the low nibble); the flags left of both players.
constexpr int kPackFlagShift = 0;
constexpr int kPackBlockedShift = 1;
constexpr int kPackValueShift = 2;
constexpr int kPackNextShift = 5;
constexpr int kGrassBytes = kCells / 2;  // 55

// Field.CellType of the wire format for a move's type (GameEngineMove.cell_type).
constexpr int kWireCellTypeFlag = 5;
constexpr int kWireCellTypeNormal = 0;

}  // namespace hexz
