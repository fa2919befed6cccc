// The Flagz board: rules and tensor encoding of shared/spec/flagz-rules.md.
//
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "layout.h"
#include "rng.h"

namespace hexz {

constexpr int kMaxNeighbours = 6;

inline bool IsValidCell(int r, int c) {
  return r >= 0 && r < kRows && c >= 0 && c < kCols - (r & 1);
}

// A move: typ 0 = flag (value 1), typ 1 = normal piece of `value`.
struct Move {
  int8_t typ;
  int8_t r;
  int8_t c;
  int8_t value;
  int PolicyIndex() const { return typ * kCells + r * kCols + c; }
  bool operator==(const Move& o) const {
    return typ == o.typ && r == o.r && c == o.c && value == o.value;
  }
};

// Thrown for impossible boards and illegal moves; the binding maps it to ValueError.
class InvalidInput : public std::exception {
 public:
  explicit InvalidInput(std::string msg) : msg_(std::move(msg)) {}
  const char* what() const noexcept override { return msg_.c_str(); }

 private:
  std::string msg_;
};

class Board {
 public:
  // An empty board: no pieces, no rocks, 3 flags each, invalid cells blocked.
  Board();

  // A fresh random board (15 rocks, 5 grass cells valued 1..5), drawn from rng.
  static Board Random(Rng& rng);

  // Decodes a stored (11, 11, 10) tensor (player 0 in channels 0-4).
  // Throws InvalidInput naming the problem if the contents are impossible.
  static Board FromTensor(const float* data);

  // Writes the (11, 11, 10) float32 tensor from `player`'s view into out[kTensorSize].
  void Encode(int player, float* out) const;
  // Writes the (2, 11, 10) action mask of `player` into out[kPolicySize] (1 = legal).
  void ActionMask(int player, uint8_t* out) const;
  // The example store's packed board from `player`'s view (see layout.h):
  // cells[2 * kCells], grass[kGrassBytes], flags_left[2].
  void Pack(int player, uint8_t* cells, uint8_t* grass, uint8_t* flags_left) const;

  // Legal moves of `player` in the spec's order (row-major, flag before normal).
  // Appends to `moves` after clearing it.
  void LegalMoves(int player, std::vector<Move>& moves) const;
  int NumLegalMoves(int player) const;
  bool HasLegalMove(int player) const;
  // Checks legality; throws InvalidInput (board unchanged) if illegal.
  void MakeMoveChecked(int player, const Move& move);
  // Plays a move known to be legal (no checks).
  void MakeMove(int player, const Move& move);

  // Plays uniformly random legal moves from `player_to_move` until neither
  // player can move; returns the result (+1 player 0 wins, -1 loses, 0 tie).
  int RandomPlayout(int player_to_move, Rng& rng);

  std::array<int, 2> Score() const;
  int Result() const;  // +1 / 0 / -1 from player 0's view
  bool GameOver() const { return !HasLegalMove(0) && !HasLegalMove(1); }
  int FlagsLeft(int player) const { return flags_left_[player]; }

  // Cell accessors (index = r * kCols + c), for encoders and tests.
  uint8_t flag(int p, int i) const { return flag_[p][i]; }
  uint8_t value(int p, int i) const { return value_[p][i]; }
  uint8_t blocked(int p, int i) const { return blocked_[p][i]; }
  uint8_t next_value(int p, int i) const { return next_[p][i]; }
  uint8_t grass(int i) const { return grass_[i]; }

 private:
  std::array<std::array<uint8_t, kCells>, 2> flag_{};
  std::array<std::array<uint8_t, kCells>, 2> value_{};
  std::array<std::array<uint8_t, kCells>, 2> blocked_{};
  std::array<std::array<uint8_t, kCells>, 2> next_{};
  std::array<uint8_t, kCells> grass_{};
  std::array<int8_t, 2> flags_left_{};
  // Incremental bookkeeping for fast move generation, kept in step with the
  // arrays above: bit i (index r * kCols + c; word i / 64) of free_[p] is set
  // where p may place a flag (valid, not blocked for p), of normal_[p] where
  // next_[p] > 0.
  std::array<std::array<uint64_t, 2>, 2> free_{};
  std::array<std::array<uint64_t, 2>, 2> normal_{};
  std::array<uint64_t, 2> grass_mask_{};  // where grass_ > 0

  struct EmptyTag {};
  explicit Board(EmptyTag);  // builds the empty board that Board() copies

  // Steps 1-5 of the spec's move for p (recursive through grass captures).
  void Place(int p, int typ, int i, int v);
  // Recomputes free_, normal_ and grass_mask_ from the arrays.
  void RebuildMasks();
  // The k-th (0-based) legal move of p in an arbitrary fixed order (flags first).
  Move KthMove(int player, uint32_t k) const;
};

}  // namespace hexz
