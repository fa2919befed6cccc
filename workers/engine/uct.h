// The game server's CPU player: plain UCT with uniformly random rollouts
// (shared/spec/uct-baseline.md). It knows nothing of networks; it is the arena's
// yardstick `uct:N` (N iterations per move) and `uct@MS` (a think time per move).
//
// A node stands for a move: `count` visits and `wins`, a signed tally from the view of
// the player who made the move (+1 won, -1 lost, 0 draw). A new tree is built for every
// move; nodes live in one flat vector, a node's children contiguous.
#pragma once

#include <cstdint>
#include <vector>

#include "board.h"
#include "rng.h"

namespace hexz {

struct UctNode {
  Move move{};
  int32_t count = 0;
  int32_t wins = 0;
  int32_t first_child = -1;  // -1: children never created
  uint16_t num_children = 0;
  uint8_t mover = 0;

  // The spec's Q in [0, 1]; an unvisited node has Q 0.
  double Q() const { return count > 0 ? 0.5 + wins / (2.0 * count) : 0.0; }
};

class Uct {
 public:
  // The spec's uct factor is 1.0.
  explicit Uct(uint64_t seed, double uct_c = 1.0);

  // Builds a new tree for `board` with `player` to move and runs iterations until
  // `max_iterations` are done (<= 0: no limit), or `max_micros` of wall time have
  // passed (<= 0: no limit), or the tree holds kMaxNodes; at least one iteration.
  // Returns the iterations run. Throws InvalidInput if `player` has no legal move or
  // both limits are off.
  int64_t Search(const Board& board, int player, int64_t max_iterations, int64_t max_micros);

  // The root child with the highest Q (the first of equals): the move the player plays.
  int BestChild() const;
  int NumChildren() const { return nodes_.empty() ? 0 : nodes_[0].num_children; }
  const UctNode& child(int i) const { return nodes_[nodes_[0].first_child + i]; }
  const UctNode& root() const { return nodes_[0]; }
  int64_t iterations() const { return iterations_; }
  int TreeSize() const { return static_cast<int>(nodes_.size()); }

  // Bounds the tree's memory (about 20 bytes a node); a search stops when full.
  static constexpr int64_t kMaxNodes = int64_t{1} << 23;

 private:
  void Iterate();
  // Creates the children of node `index` for `player`'s legal moves on board_
  // (flag moves first, then normal moves, each row-major).
  void Expand(int index, int player);
  int SelectChild(int index) const;

  double uct_c_;
  Rng rng_;
  Board root_board_;
  int root_player_ = 0;
  Board board_;  // the position of the current iteration
  std::vector<UctNode> nodes_;
  std::vector<int32_t> path_;
  std::vector<Move> moves_;
  int64_t iterations_ = 0;
};

}  // namespace hexz
