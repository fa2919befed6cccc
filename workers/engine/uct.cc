#include "uct.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <string>

namespace hexz {

Uct::Uct(uint64_t seed, double uct_c) : uct_c_(uct_c), rng_(seed) {}

int64_t Uct::Search(const Board& board, int player, int64_t max_iterations,
                    int64_t max_micros) {
  if (player != 0 && player != 1) {
    throw InvalidInput("player must be 0 or 1, got " + std::to_string(player));
  }
  if (!board.HasLegalMove(player)) {
    throw InvalidInput("player " + std::to_string(player) + " has no legal move");
  }
  if (max_iterations <= 0 && max_micros <= 0) {
    throw InvalidInput("a search needs an iteration limit or a time limit");
  }
  if (max_iterations <= 0) max_iterations = INT64_MAX;
  root_board_ = board;
  root_player_ = player;
  nodes_.clear();
  UctNode root;
  root.mover = static_cast<uint8_t>(1 - player);  // the dummy root's "mover"
  nodes_.push_back(root);
  iterations_ = 0;
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + std::chrono::microseconds(max_micros);
  // One expansion adds at most kPolicySize nodes.
  while (iterations_ < max_iterations &&
         static_cast<int64_t>(nodes_.size()) + kPolicySize <= kMaxNodes) {
    Iterate();
    iterations_++;
    if (max_micros > 0 && Clock::now() >= deadline) break;
  }
  return iterations_;
}

void Uct::Expand(int index, int player) {
  board_.LegalMoves(player, moves_);
  std::stable_partition(moves_.begin(), moves_.end(), [](const Move& m) { return m.typ == 0; });
  const int first = static_cast<int>(nodes_.size());
  nodes_.resize(first + moves_.size());
  for (size_t i = 0; i < moves_.size(); i++) {
    UctNode& c = nodes_[first + i];
    c.move = moves_[i];
    c.mover = static_cast<uint8_t>(player);
  }
  nodes_[index].first_child = first;
  nodes_[index].num_children = static_cast<uint16_t>(moves_.size());
}

int Uct::SelectChild(int index) const {
  const UctNode& node = nodes_[index];
  const int first = node.first_child;
  if (node.count == 0) return first;  // every child's UCB value is 0.5: the first wins
  const double log_n = std::log(static_cast<double>(node.count));
  const double unvisited = 0.5 + uct_c_ * std::sqrt(log_n);
  int best = first;
  double best_ucb = -INFINITY;
  for (int i = first; i < first + node.num_children; i++) {
    const UctNode& c = nodes_[i];
    const double ucb = c.count == 0 ? unvisited : c.Q() + uct_c_ * std::sqrt(log_n / c.count);
    if (ucb > best_ucb) {
      best_ucb = ucb;
      best = i;
    }
  }
  return best;
}

void Uct::Iterate() {
  board_ = root_board_;
  path_.clear();
  path_.push_back(0);
  int index = 0;
  int player = root_player_;  // to move at `index`; always has a legal move
  int result;                 // player 0's view
  while (true) {
    if (nodes_[index].first_child < 0) {
      Expand(index, player);
      const UctNode& node = nodes_[index];
      const int c = node.first_child + static_cast<int>(rng_.Below(node.num_children));
      board_.MakeMove(player, nodes_[c].move);
      path_.push_back(c);
      result = board_.RandomPlayout(1 - player, rng_);
      break;
    }
    const int c = SelectChild(index);
    board_.MakeMove(player, nodes_[c].move);
    path_.push_back(c);
    // The rules' turn order: a player with no legal move is skipped.
    int next = 1 - player;
    if (!board_.HasLegalMove(next)) {
      next = player;
      if (!board_.HasLegalMove(next)) {
        result = board_.Result();
        break;
      }
    }
    index = c;
    player = next;
  }
  for (const int32_t i : path_) {
    UctNode& n = nodes_[i];
    n.count++;
    n.wins += n.mover == 0 ? result : -result;
  }
}

int Uct::BestChild() const {
  int best = 0;
  for (int i = 1; i < NumChildren(); i++) {
    if (child(i).Q() > child(best).Q()) best = i;
  }
  return best;
}

}  // namespace hexz
