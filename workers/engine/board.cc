// The Flagz board: see board.h and shared/spec/flagz-rules.md.
#include "board.h"

#include <cmath>
#include <string>

namespace hexz {
namespace {

constexpr int kNumRocks = 15;
constexpr int kNumGrass = 5;
constexpr int kNumValid = kValidCells;
constexpr int kPadCell = 1 * kCols + kCols - 1;  // (1, 9): invalid

struct Neighbours {
  // Neighbours in the spec's order, padded to 6 with an invalid cell: invalid cells
  // are blocked for both players and never hold grass, so the padding changes nothing
  // and the loops over neighbours have a fixed length.
  std::array<std::array<int8_t, kMaxNeighbours>, kCells> cell{};
  std::array<int8_t, kCells> count{};
  std::array<std::array<uint64_t, 2>, kCells> mask{};  // neighbours of each cell as bits
  std::array<int8_t, kNumValid> valid_cells{};  // row-major
  // select[b][k] = position of the k-th set bit of byte b.
  std::array<std::array<uint8_t, 8>, 256> select{};

  Neighbours() {
    int n_valid = 0;
    for (int r = 0; r < kRows; ++r) {
      for (int c = 0; c < kCols; ++c) {
        const int i = r * kCols + c;
        if (!IsValidCell(r, c)) continue;
        valid_cells[n_valid++] = static_cast<int8_t>(i);
        const int s = r & 1;
        const int nr[kMaxNeighbours] = {r, r - 1, r - 1, r, r + 1, r + 1};
        const int nc[kMaxNeighbours] = {c + 1, c + s, c - 1 + s, c - 1, c - 1 + s, c + s};
        for (int k = 0; k < kMaxNeighbours; ++k) {
          if (!IsValidCell(nr[k], nc[k])) continue;
          const int q = nr[k] * kCols + nc[k];
          cell[i][count[i]++] = static_cast<int8_t>(q);
          mask[i][q >> 6] |= uint64_t{1} << (q & 63);
        }
        for (int k = count[i]; k < kMaxNeighbours; ++k) cell[i][k] = kPadCell;
      }
    }
    for (int b = 0; b < 256; ++b) {
      int k = 0;
      for (int j = 0; j < 8; ++j) {
        if (b & (1 << j)) select[b][k++] = j;
      }
    }
  }
};

const Neighbours kNb;

// Byte-wise bit counts of x: byte j of the result = popcount of byte j of x.
inline uint64_t BytePopcounts(uint64_t x) {
  x = x - ((x >> 1) & 0x5555555555555555ULL);
  x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
  return (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
}

// Portable popcount (the build does not assume the POPCNT instruction).
inline int Popcount(uint64_t x) {
  return static_cast<int>((BytePopcounts(x) * 0x0101010101010101ULL) >> 56);
}

inline int Popcount128(const std::array<uint64_t, 2>& m) {
  return Popcount(m[0]) + Popcount(m[1]);
}

constexpr uint64_t kOnes = 0x0101010101010101ULL;

// Position of the k-th (0-based) set bit of x; k < Popcount(x). Branch-free: random
// playouts pick a random legal move with it, and branches there mispredict.
inline int Select64(uint64_t x, int k) {
  // Byte j of `cum` = number of set bits in bytes 0..j (at most 64).
  const uint64_t cum = BytePopcounts(x) * kOnes;
  // High bit of byte j set iff cum_j <= k (k + 128 - cum_j never borrows).
  const uint64_t le = ((static_cast<uint64_t>(k) * kOnes) | 0x8080808080808080ULL) - cum;
  const int j = static_cast<int>((((le & 0x8080808080808080ULL) >> 7) * kOnes) >> 56);
  const int before = static_cast<int>(((cum << 8) >> (8 * j)) & 0xff);
  return 8 * j + kNb.select[(x >> (8 * j)) & 0xff][k - before];
}

inline int Select128(const std::array<uint64_t, 2>& m, int k) {
  const int lo = Popcount(m[0]);
  const int w = k >= lo;
  return 64 * w + Select64(m[w], k - w * lo);
}

inline void SetBit(std::array<uint64_t, 2>& m, int i) { m[i >> 6] |= uint64_t{1} << (i & 63); }
inline void ClearBit(std::array<uint64_t, 2>& m, int i) { m[i >> 6] &= ~(uint64_t{1} << (i & 63)); }
inline bool TestBit(const std::array<uint64_t, 2>& m, int i) { return (m[i >> 6] >> (i & 63)) & 1; }

// Random playouts count and select bits all the time: on x86-64 with glibc they get a
// clone for CPUs with POPCNT (GCC compiles the SWAR popcount above to the instruction
// there), picked at load time, so the build needs no -march flag.
#if defined(__GNUC__) && defined(__x86_64__) && defined(__GLIBC__) && !defined(__POPCNT__)
#define HEXZ_POPCNT_CLONES __attribute__((target_clones("popcnt", "default")))
#else
#define HEXZ_POPCNT_CLONES
#endif

std::string CellName(int i) {
  return "(" + std::to_string(i / kCols) + ", " + std::to_string(i % kCols) + ")";
}

}  // namespace

Board::Board() {
  static const Board* const kEmpty = new Board(EmptyTag{});
  *this = *kEmpty;
}

Board::Board(EmptyTag) {
  flags_left_ = {kInitialFlags, kInitialFlags};
  for (int i = 0; i < kCells; ++i) {
    if (!IsValidCell(i / kCols, i % kCols)) blocked_[0][i] = blocked_[1][i] = 1;
  }
  RebuildMasks();
}

void Board::RebuildMasks() {
  grass_mask_ = {0, 0};
  for (int i = 0; i < kCells; ++i) {
    if (grass_[i]) SetBit(grass_mask_, i);
  }
  for (int p = 0; p < 2; ++p) {
    free_[p] = {0, 0};
    normal_[p] = {0, 0};
    for (int i = 0; i < kCells; ++i) {
      if (!blocked_[p][i]) SetBit(free_[p], i);
      if (next_[p][i] > 0) SetBit(normal_[p], i);
    }
  }
}

Board Board::Random(Rng& rng) {
  Board b;
  // Rocks, then grass valued 1..5, each on a distinct random free valid cell: the
  // first 20 steps of a Fisher-Yates shuffle of the valid cells.
  std::array<int8_t, kNumValid> cells = kNb.valid_cells;
  for (int k = 0; k < kNumRocks + kNumGrass; ++k) {
    const int j = k + static_cast<int>(rng.Below(kNumValid - k));
    const int i = cells[j];
    cells[j] = cells[k];
    b.blocked_[0][i] = b.blocked_[1][i] = 1;
    ClearBit(b.free_[0], i);
    ClearBit(b.free_[1], i);
    if (k >= kNumRocks) {
      b.grass_[i] = static_cast<uint8_t>(k - kNumRocks + 1);
      SetBit(b.grass_mask_, i);
    }
  }
  return b;
}

Board Board::FromTensor(const float* data) {
  auto at = [data](int ch, int i) { return data[ch * kCells + i]; };
  // Every element must be a small non-negative integer.
  for (int ch = 0; ch < kChannels; ++ch) {
    // Largest value per channel of a player block: flag, value, blocked, next, flags left.
    constexpr int kMax[5] = {1, 5, 1, 5, kInitialFlags};
    const int max = ch == kChGrass ? 5 : kMax[ch % kPlayerChannels];
    for (int i = 0; i < kCells; ++i) {
      const float v = at(ch, i);
      if (!(v >= 0 && v <= max) || v != std::floor(v)) {
        throw InvalidInput("channel " + std::to_string(ch) + " at " + CellName(i) +
                           " holds " + std::to_string(v) + ", expected an integer in 0.." +
                           std::to_string(max));
      }
    }
  }
  Board b;
  for (int p = 0; p < 2; ++p) {
    const int base = kPlayerChannels * p;
    const float left = at(base + kChFlagsLeft, 0);
    for (int i = 1; i < kCells; ++i) {
      if (at(base + kChFlagsLeft, i) != left) {
        throw InvalidInput("flags-left channel " + std::to_string(base + kChFlagsLeft) +
                           " is not constant");
      }
    }
    b.flags_left_[p] = static_cast<int8_t>(left);
  }
  for (int i = 0; i < kCells; ++i) {
    const bool valid = IsValidCell(i / kCols, i % kCols);
    int occupants = at(kChGrass, i) > 0;
    for (int p = 0; p < 2; ++p) {
      const int base = kPlayerChannels * p;
      occupants += (at(base + kChFlag, i) > 0) + (at(base + kChValue, i) > 0);
    }
    if (!valid) {
      // Invalid cells carry nothing; they are always blocked (older encoders left 0).
      bool empty = occupants == 0;
      for (int p = 0; p < 2; ++p) empty = empty && at(kPlayerChannels * p + kChNext, i) == 0;
      if (!empty) throw InvalidInput("invalid cell " + CellName(i) + " is not empty");
      continue;
    }
    if (occupants > 1) throw InvalidInput("cell " + CellName(i) + " has more than one piece");
    for (int p = 0; p < 2; ++p) {
      const int base = kPlayerChannels * p;
      const bool blocked = at(base + kChBlocked, i) > 0;
      const int next = static_cast<int>(at(base + kChNext, i));
      if (occupants && (!blocked || next != 0)) {
        throw InvalidInput("occupied cell " + CellName(i) + " is not blocked for player " +
                           std::to_string(p) + " or has a next value");
      }
      if (blocked && next != 0) {
        throw InvalidInput("blocked cell " + CellName(i) + " has a next value for player " +
                           std::to_string(p));
      }
      b.flag_[p][i] = static_cast<uint8_t>(at(base + kChFlag, i));
      b.value_[p][i] = static_cast<uint8_t>(at(base + kChValue, i));
      b.blocked_[p][i] = blocked;
      b.next_[p][i] = static_cast<uint8_t>(next);
    }
    b.grass_[i] = static_cast<uint8_t>(at(kChGrass, i));
  }
  b.RebuildMasks();
  return b;
}

void Board::Encode(int player, float* out) const {
  for (int p = 0; p < 2; ++p) {
    float* o = out + kPlayerChannels * (p ^ player) * kCells;
    const float left = flags_left_[p];
    for (int i = 0; i < kCells; ++i) {
      o[kChFlag * kCells + i] = flag_[p][i];
      o[kChValue * kCells + i] = value_[p][i];
      o[kChBlocked * kCells + i] = blocked_[p][i];
      o[kChNext * kCells + i] = next_[p][i];
      o[kChFlagsLeft * kCells + i] = left;
    }
  }
  for (int i = 0; i < kCells; ++i) out[kChGrass * kCells + i] = grass_[i];
}

void Board::Pack(int player, uint8_t* cells, uint8_t* grass, uint8_t* flags_left) const {
  for (int k = 0; k < 2; ++k) {
    const int p = k ^ player;
    uint8_t* o = cells + k * kCells;
    for (int i = 0; i < kCells; ++i) {
      o[i] = static_cast<uint8_t>(flag_[p][i] << kPackFlagShift |
                                  blocked_[p][i] << kPackBlockedShift |
                                  value_[p][i] << kPackValueShift | next_[p][i] << kPackNextShift);
    }
    flags_left[k] = static_cast<uint8_t>(flags_left_[p]);
  }
  for (int j = 0; j < kGrassBytes; ++j) {
    grass[j] = static_cast<uint8_t>(grass_[2 * j] | grass_[2 * j + 1] << 4);
  }
}

void Board::ActionMask(int player, uint8_t* out) const {
  const bool flags = flags_left_[player] > 0;
  for (int i = 0; i < kCells; ++i) {
    out[i] = flags && TestBit(free_[player], i);
    out[kCells + i] = TestBit(normal_[player], i);
  }
}

void Board::LegalMoves(int player, std::vector<Move>& moves) const {
  moves.clear();
  const bool flags = flags_left_[player] > 0;
  for (int w = 0; w < 2; ++w) {
    uint64_t m = (flags ? free_[player][w] : 0) | normal_[player][w];
    while (m) {
      const int i = 64 * w + __builtin_ctzll(m);
      m &= m - 1;
      const auto r = static_cast<int8_t>(i / kCols);
      const auto c = static_cast<int8_t>(i % kCols);
      if (flags && TestBit(free_[player], i)) moves.push_back(Move{0, r, c, 1});
      if (next_[player][i] > 0) {
        moves.push_back(Move{1, r, c, static_cast<int8_t>(next_[player][i])});
      }
    }
  }
}

int Board::NumLegalMoves(int player) const {
  return (flags_left_[player] > 0 ? Popcount128(free_[player]) : 0) +
         Popcount128(normal_[player]);
}

bool Board::HasLegalMove(int player) const {
  const auto& f = free_[player];
  const auto& n = normal_[player];
  return (flags_left_[player] > 0 && (f[0] | f[1])) || (n[0] | n[1]);
}

void Board::MakeMoveChecked(int player, const Move& move) {
  if (player != 0 && player != 1) {
    throw InvalidInput("player must be 0 or 1, got " + std::to_string(player));
  }
  const std::string desc = "(" + std::to_string(move.typ) + ", " + std::to_string(move.r) +
                           ", " + std::to_string(move.c) + ", " + std::to_string(move.value) + ")";
  if (!IsValidCell(move.r, move.c)) throw InvalidInput("move " + desc + " is off the board");
  const int i = move.r * kCols + move.c;
  if (move.typ == 0) {
    if (move.value != 1) throw InvalidInput("flag move " + desc + " must have value 1");
    if (flags_left_[player] <= 0) {
      throw InvalidInput("player " + std::to_string(player) + " has no flags left");
    }
    if (!TestBit(free_[player], i)) {
      throw InvalidInput("flag move " + desc + ": cell is blocked for player " +
                         std::to_string(player));
    }
  } else if (move.typ == 1) {
    if (next_[player][i] == 0) {
      throw InvalidInput("normal move " + desc + ": no normal move there for player " +
                         std::to_string(player));
    }
    if (move.value != next_[player][i]) {
      throw InvalidInput("normal move " + desc + ": the value there is " +
                         std::to_string(next_[player][i]));
    }
  } else {
    throw InvalidInput("move " + desc + ": type must be 0 (flag) or 1 (normal)");
  }
  MakeMove(player, move);
}

void Board::MakeMove(int player, const Move& move) {
  Place(player, move.typ, move.r * kCols + move.c, move.value);
}

void Board::Place(int p, int typ, int i, int v) {
  // 1-2: put the piece; the cell is taken for both players.
  if (typ == 0) {
    flag_[p][i] = 1;
  } else {
    value_[p][i] = static_cast<uint8_t>(v);
  }
  blocked_[0][i] = blocked_[1][i] = 1;
  next_[0][i] = next_[1][i] = 0;
  const uint64_t keep = ~(uint64_t{1} << (i & 63));
  const int w = i >> 6;
  free_[0][w] &= keep;
  free_[1][w] &= keep;
  normal_[0][w] &= keep;
  normal_[1][w] &= keep;
  // 3-4: neighbours get a next value (or, around a 5, get blocked for p).
  int n = 1;
  if (typ == 0) {
    --flags_left_[p];
  } else {
    n = v + 1;
  }
  const auto& nb = kNb.cell[i];
  constexpr int count = kMaxNeighbours;
  auto& blocked = blocked_[p];
  auto& next = next_[p];
  if (n <= 5) {
    for (int k = 0; k < count; ++k) {
      const int q = nb[k];
      const uint8_t cur = next[q];
      // Lower next[q] to n where p may play (cur == 0 wraps to 255 here).
      const bool lower = !blocked[q] & (static_cast<uint8_t>(cur - 1) >= n);
      next[q] = lower ? static_cast<uint8_t>(n) : cur;
      normal_[p][q >> 6] |= static_cast<uint64_t>(lower) << (q & 63);
    }
  } else {
    for (int k = 0; k < count; ++k) {
      const int q = nb[k];
      blocked[q] = 1;
      next[q] = 0;
      ClearBit(free_[p], q);
      ClearBit(normal_[p], q);
    }
  }
  if (typ == 0 || !((kNb.mask[i][0] & grass_mask_[0]) | (kNb.mask[i][1] & grass_mask_[1]))) {
    return;
  }
  // 5: capture neighbouring grass worth at most v, in neighbour order, chaining.
  for (int k = 0; k < count; ++k) {
    const int q = nb[k];
    const int g = grass_[q];
    if (g > 0 && g <= v) {
      grass_[q] = 0;
      ClearBit(grass_mask_, q);
      Place(p, 1, q, g);
    }
  }
}

Move Board::KthMove(int player, uint32_t k) const {
  if (flags_left_[player] > 0) {
    const auto nf = static_cast<uint32_t>(Popcount128(free_[player]));
    if (k < nf) {
      const int i = Select128(free_[player], static_cast<int>(k));
      return Move{0, static_cast<int8_t>(i / kCols), static_cast<int8_t>(i % kCols), 1};
    }
    k -= nf;
  }
  const int i = Select128(normal_[player], static_cast<int>(k));
  return Move{1, static_cast<int8_t>(i / kCols), static_cast<int8_t>(i % kCols),
              static_cast<int8_t>(next_[player][i])};
}

HEXZ_POPCNT_CLONES int Board::RandomPlayout(int player_to_move, Rng& rng) {
  int p = player_to_move & 1;
  while (true) {
    int n = NumLegalMoves(p);
    if (n == 0) {
      p ^= 1;  // skipped: the other player moves again
      n = NumLegalMoves(p);
      if (n == 0) break;
    }
    const Move m = KthMove(p, rng.Below(static_cast<uint32_t>(n)));
    Place(p, m.typ, m.r * kCols + m.c, m.value);
    p ^= 1;
  }
  return Result();
}

std::array<int, 2> Board::Score() const {
  std::array<int, 2> s{0, 0};
  for (int p = 0; p < 2; ++p) {
    for (int i = 0; i < kCells; ++i) s[p] += value_[p][i];
  }
  return s;
}

int Board::Result() const {
  const auto s = Score();
  return (s[0] > s[1]) - (s[0] < s[1]);
}

}  // namespace hexz
