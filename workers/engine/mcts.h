// Neural Monte Carlo tree search of shared/spec/selfplay-and-training.md.
//
// The search never calls the network itself: Advance() runs simulations until one
// reaches a leaf that needs an evaluation and returns; the caller evaluates the
// leaf position (LeafBoard() from LeafPlayer()'s view), possibly batched with
// other searches, and hands priors and value back with Feed(). This lets one
// thread drive hundreds of searches with one network batch per step.
//
// Nodes live in one flat arena (a vector); a node's children are contiguous.
// After a move the kept subtree is copied into a fresh arena (visits and wins
// zeroed, priors, values and children kept), so memory stays proportional to the
// live tree.
#pragma once

#include <array>
#include <cstdint>
#include <unordered_map>
#include <vector>

#include "board.h"
#include "rng.h"

namespace hexz {

struct SearchParams {
  float uct_c = 1.5f;
  float initial_root_q_value = -0.2f;
  float initial_q_penalty = 0.3f;
  // Dirichlet noise at the root of full moves; 0 = off.
  float dirichlet_concentration = 0.0f;
  float noise_weight = 0.25f;
  // > 0: a leaf's value is mixed with the mean result z of this many random playouts
  // from it: (1 - random_playout_weight) * network value + random_playout_weight * z
  // (AlphaGo's leaf evaluation; the priors still come from the network). Weight 1, the
  // reference: the playouts replace the network's value.
  int random_playouts = 0;
  float random_playout_weight = 1.0f;
  // A position whose player to move has no legal move and a strictly lower score
  // is terminal (the result can no longer change). Off in the reference.
  bool end_game_when_stuck = false;
  // A leaf whose network input equals that of a position already expanded in the
  // current tree (a transposition) takes that node's priors and value instead of
  // a new evaluation. The network is deterministic, so the search is the same as
  // without it; only evaluations are saved.
  bool eval_cache = true;
  // First-play urgency of an unvisited child (not at the root) is the parent's Q from
  // the child's mover's view, minus initial_q_penalty. The parent's Q is from the view
  // of the parent's mover; the child's mover is the parent's next_turn: negate iff they
  // differ (they do not after a double move, when a stuck player was skipped). The
  // reference negates iff parent and child have different next_turn (true here).
  bool fpu_reference = false;
};

struct Node {
  float prior = 0;
  float wins = 0;   // sum of backed-up results, view of the player who made the move
  float value = 0;  // value of the position (the network's, mixed with random playouts
                    // if random_playouts > 0), view of next_turn
  int32_t visits = 0;
  int32_t first_child = -1;
  uint8_t policy_index = 0;  // the move leading here: typ * 110 + r * 10 + c
  uint8_t move_value = 0;
  uint8_t num_children = 0;
  uint8_t bits = 0;  // kMover | kNextTurn | kTerminal | kExpanded

  static constexpr uint8_t kMover = 1;     // player who made the move (1 = player 1)
  static constexpr uint8_t kNextTurn = 2;  // player to move after it
  static constexpr uint8_t kTerminal = 4;
  static constexpr uint8_t kExpanded = 8;  // evaluated: value (and children) are set

  int mover() const { return bits & kMover; }
  int next_turn() const { return (bits & kNextTurn) ? 1 : 0; }
  bool terminal() const { return bits & kTerminal; }
  bool expanded() const { return bits & kExpanded; }
  bool has_children() const { return num_children > 0; }
  Move move() const {
    const int cell = policy_index % kCells;
    return Move{static_cast<int8_t>(policy_index / kCells), static_cast<int8_t>(cell / kCols),
                static_cast<int8_t>(cell % kCols), static_cast<int8_t>(move_value)};
  }
  float Q() const { return visits > 0 ? wins / visits : 0.0f; }
};
static_assert(sizeof(Node) == 24, "keep nodes small: hundreds of trees live at once");

// Search statistics of the spec (TrainingExample.Stats), for the current root.
struct SearchStats {
  int32_t valid_moves = 0;
  int32_t visit_count = 0;
  int32_t visited_children = 0;
  int32_t search_depth = 0;
  int32_t search_tree_size = 0;
  int32_t branch_nodes = 0;
  int32_t min_child_vc = 0;
  int32_t max_child_vc = 0;
  std::vector<int32_t> nodes_per_depth;
  std::vector<int32_t> max_visit_count_per_depth;
};

class Mcts {
 public:
  Mcts(const SearchParams& params, uint64_t seed);

  // A new tree for `board` with `player` to move (the root's next_turn; the root's
  // expansion skips to the other player if `player` has no legal move).
  void Reset(const Board& board, int player);

  // Starts a move: `budget` counted (non-reused) runs; `noise` mixes Dirichlet
  // noise into the root priors once (now if the root is already expanded, else at
  // its expansion); `greedy` descends by highest PUCT only (suggest-move mode).
  void StartMove(int budget, bool noise, bool greedy);

  // Runs simulations until one needs a network evaluation (true: see LeafBoard,
  // LeafPlayer, then call Feed) or the move is done (false): the budget is spent
  // or the root is terminal.
  bool Advance();
  // The position awaiting evaluation and the player it is evaluated for.
  const Board& LeafBoard() const { return leaf_board_; }
  int LeafPlayer() const { return nodes_[path_.back()].next_turn(); }
  // The network input of the pending leaf: (11, 11, 10) from LeafPlayer()'s view.
  const float* LeafTensor() const { return leaf_tensor_.data(); }
  // Expands the pending leaf: probs[kPolicySize] (softmax over legal moves; only
  // the legal entries are read and renormalised) and value (LeafPlayer's view).
  void Feed(const float* probs, float value);

  // Plays root child `child` (0 <= child < NumChildren()) and makes it the root of
  // a compacted tree with all visits and wins zeroed.
  void MakeMove(int child);
  // If the root's player to move (a stuck player is skipped, as the search would) has
  // exactly one legal move, plays it without a search and returns true: its subtree is
  // kept if the root was expanded, else a new tree starts. False at a terminal root.
  bool PlayIfForced();
  // Child chosen with probability proportional to visits (by prior if none visited).
  int SampleChildByVisits();
  // Most visited child (first of equals).
  int MostVisitedChild() const;

  const Board& board() const { return board_; }
  const Node& root() const { return nodes_[0]; }
  const Node& child(int i) const { return nodes_[nodes_[0].first_child + i]; }
  int NumChildren() const { return nodes_[0].num_children; }
  int RootPlayer() const { return nodes_[0].next_turn(); }
  bool RootTerminal() const { return nodes_[0].terminal(); }
  bool pending() const { return pending_; }  // a leaf awaits Feed
  int counted_runs() const { return counted_runs_; }
  int reused_runs() const { return reused_runs_; }
  int evaluations() const { return evaluations_; }
  int cache_hits() const { return cache_hits_; }  // leaves expanded from a transposition
  int TreeSize() const { return static_cast<int>(nodes_.size()); }
  // Mean backed-up result over the root's children, from the root player's view
  // (the network value if no child was visited).
  float RootSearchValue() const;
  SearchStats Stats() const;
  Rng& rng() { return rng_; }
  const SearchParams& params() const { return params_; }

 private:
  int SelectChild(int node_index, bool by_prior);
  float Puct(const Node& parent, const Node& child, bool parent_is_root, float sqrt_visits) const;
  // Backs up x (player 0's view) along path_.
  void Backup(float x);
  // Computes the leaf's legal moves (flipping next_turn if needed); marks it
  // terminal when nobody can move (or end_game_when_stuck applies).
  void PrepareLeaf(Node& leaf);
  void MixNoise();
  // Creates the pending leaf's children (random order) with priors from probs;
  // value is the network's (LeafPlayer's view).
  void Expand(const float* probs, float value);
  // Expands the pending leaf from a transposition if there is one.
  bool ExpandFromCache();

  SearchParams params_;
  Rng rng_;
  Board board_;  // the root position
  std::vector<Node> nodes_;
  std::vector<Node> scratch_;  // compaction target, swapped with nodes_
  std::vector<int32_t> path_;  // root .. current leaf
  Board leaf_board_;
  std::array<float, kTensorSize> leaf_tensor_;
  uint64_t leaf_key_ = 0;
  std::vector<Move> leaf_moves_;
  // A network evaluation in the tree: the node it expanded and the network's value.
  struct CachedEval {
    int32_t node;
    float value;
  };
  std::unordered_map<uint64_t, CachedEval> table_;  // network input hash -> evaluation
  std::vector<int32_t> remap_;                   // old -> new node index while compacting
  std::array<float, kPolicySize> cached_probs_;
  std::vector<double> gammas_;
  int budget_ = 0;
  bool noise_ = false;
  bool noise_mixed_ = false;
  bool greedy_ = false;
  bool pending_ = false;
  int counted_runs_ = 0;
  int reused_runs_ = 0;
  int evaluations_ = 0;
  int cache_hits_ = 0;
};

// A 64-bit hash of a network input tensor.
uint64_t HashTensor(const float* tensor);

// A Dirichlet(alpha, ..., alpha) sample of size n into out (deterministic for rng).
void SampleDirichlet(Rng& rng, double alpha, int n, std::vector<double>& out);

}  // namespace hexz
