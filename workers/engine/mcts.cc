#include "mcts.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstring>
#include <utility>

namespace hexz {

namespace {

double StandardNormal(Rng& rng) {
  // Box-Muller; 1 - Uniform() is in (0, 1], so the log is finite.
  const double u1 = 1.0 - rng.Uniform();
  const double u2 = rng.Uniform();
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
}

// Gamma(alpha, 1) by Marsaglia and Tsang; alpha < 1 via the boost U^(1/alpha).
double SampleGamma(Rng& rng, double alpha) {
  if (alpha < 1.0) {
    const double u = rng.Uniform();
    return SampleGamma(rng, alpha + 1.0) * std::pow(u, 1.0 / alpha);
  }
  const double d = alpha - 1.0 / 3.0;
  const double c = 1.0 / std::sqrt(9.0 * d);
  while (true) {
    const double x = StandardNormal(rng);
    double v = 1.0 + c * x;
    if (v <= 0.0) continue;
    v = v * v * v;
    const double u = rng.Uniform();
    if (u < 1.0 - 0.0331 * x * x * x * x) return d * v;
    if (std::log(u) < 0.5 * x * x + d * (1.0 - v + std::log(v))) return d * v;
  }
}

}  // namespace

uint64_t HashTensor(const float* tensor) {
  constexpr size_t kWords = kTensorSize * sizeof(float) / sizeof(uint64_t);
  static_assert(kWords * sizeof(uint64_t) == kTensorSize * sizeof(float));
  uint64_t h = 0x243f6a8885a308d3ULL;
  for (size_t i = 0; i < kWords; i++) {
    uint64_t w;
    std::memcpy(&w, reinterpret_cast<const char*>(tensor) + i * sizeof(w), sizeof(w));
    h ^= w * 0x9e3779b97f4a7c15ULL;
    h = ((h << 31) | (h >> 33)) * 0xbf58476d1ce4e5b9ULL;
  }
  h ^= h >> 29;
  h *= 0x94d049bb133111ebULL;
  return h ^ (h >> 32);
}

void SampleDirichlet(Rng& rng, double alpha, int n, std::vector<double>& out) {
  out.resize(n);
  double sum = 0;
  for (int i = 0; i < n; i++) {
    out[i] = SampleGamma(rng, alpha);
    sum += out[i];
  }
  for (int i = 0; i < n; i++) out[i] = sum > 0 ? out[i] / sum : 1.0 / n;
}

Mcts::Mcts(const SearchParams& params, uint64_t seed) : params_(params), rng_(seed) {
  Reset(Board(), 0);
}

void Mcts::Reset(const Board& board, int player) {
  board_ = board;
  nodes_.clear();
  Node root;
  root.bits = player ? Node::kNextTurn : Node::kMover;  // mover: the other player
  nodes_.push_back(root);
  table_.clear();
  pending_ = false;
  counted_runs_ = reused_runs_ = evaluations_ = cache_hits_ = 0;
}

void Mcts::StartMove(int budget, bool noise, bool greedy) {
  assert(!pending_);
  budget_ = budget;
  noise_ = noise && params_.dirichlet_concentration > 0;
  noise_mixed_ = false;
  greedy_ = greedy;
  counted_runs_ = reused_runs_ = evaluations_ = cache_hits_ = 0;
  if (noise_ && nodes_[0].has_children()) MixNoise();
}

void Mcts::MixNoise() {
  Node& root = nodes_[0];
  SampleDirichlet(rng_, params_.dirichlet_concentration, root.num_children, gammas_);
  const float w = params_.noise_weight;
  for (int i = 0; i < root.num_children; i++) {
    Node& c = nodes_[root.first_child + i];
    c.prior = (1 - w) * c.prior + w * static_cast<float>(gammas_[i]);
  }
  noise_mixed_ = true;
}

float Mcts::Puct(const Node& parent, const Node& child, bool parent_is_root,
                 float sqrt_visits) const {
  float q;
  if (child.visits > 0) {
    q = child.wins / child.visits;
  } else if (parent_is_root) {
    q = params_.initial_root_q_value;
  } else {
    // First play urgency: the parent's Q from the child's mover's view, penalised.
    q = parent.Q();
    const bool negate = params_.fpu_reference ? parent.next_turn() != child.next_turn()
                                              : parent.mover() != parent.next_turn();
    if (negate) q = -q;
    q = std::max(-1.0f, q - params_.initial_q_penalty);
  }
  return q + params_.uct_c * child.prior * sqrt_visits / (1 + child.visits);
}

int Mcts::SelectChild(int node_index, bool by_prior) {
  const Node& node = nodes_[node_index];
  const int first = node.first_child;
  const int n = node.num_children;
  if (by_prior) {
    float sum = 0;
    for (int i = 0; i < n; i++) sum += nodes_[first + i].prior;
    float u = static_cast<float>(rng_.Uniform()) * sum;
    for (int i = 0; i < n; i++) {
      u -= nodes_[first + i].prior;
      if (u < 0) return first + i;
    }
    return first + n - 1;
  }
  const bool is_root = node_index == 0;
  const float sqrt_visits = std::sqrt(static_cast<float>(node.visits));
  int best = first;
  float best_puct = -INFINITY;
  for (int i = 0; i < n; i++) {
    const float p = Puct(node, nodes_[first + i], is_root, sqrt_visits);
    if (p > best_puct) {
      best_puct = p;
      best = first + i;
    }
  }
  return best;
}

void Mcts::Backup(float x) {
  for (size_t k = path_.size() - 1; k >= 1; k--) {
    Node& n = nodes_[path_[k]];
    n.visits++;
    n.wins += n.mover() == 0 ? x : -x;
  }
  nodes_[0].visits++;
}

void Mcts::PrepareLeaf(Node& leaf) {
  int p = leaf.next_turn();
  leaf_board_.LegalMoves(p, leaf_moves_);
  if (leaf_moves_.empty()) {
    bool terminal = false;
    if (params_.end_game_when_stuck) {
      // Stuck is permanent, and the other player's score can only grow.
      const auto score = leaf_board_.Score();
      terminal = score[p] < score[1 - p];
    }
    if (!terminal) {
      p = 1 - p;
      leaf_board_.LegalMoves(p, leaf_moves_);
      terminal = leaf_moves_.empty();
    }
    leaf.bits = static_cast<uint8_t>((leaf.bits & ~Node::kNextTurn) | (p ? Node::kNextTurn : 0));
    if (terminal) leaf.bits |= Node::kTerminal | Node::kExpanded;
  }
}

bool Mcts::Advance() {
  assert(!pending_);
  while (!nodes_[0].terminal() && counted_runs_ < budget_) {
    leaf_board_ = board_;
    path_.clear();
    path_.push_back(0);
    int index = 0;
    while (nodes_[index].visits > 0 && nodes_[index].has_children()) {
      const bool by_prior = !greedy_ && nodes_[index].visits == 1;
      const int c = SelectChild(index, by_prior);
      leaf_board_.MakeMove(nodes_[index].next_turn(), nodes_[c].move());
      index = c;
      path_.push_back(index);
    }
    Node& leaf = nodes_[index];
    if (leaf.has_children()) {
      // Kept from the previous move's tree: its stored value stands in for an
      // evaluation, and the run does not count.
      Backup(leaf.next_turn() == 0 ? leaf.value : -leaf.value);
      reused_runs_++;
      continue;
    }
    if (!leaf.expanded()) PrepareLeaf(leaf);
    if (leaf.terminal()) {
      Backup(static_cast<float>(leaf_board_.Result()));
      counted_runs_++;
      continue;
    }
    leaf_board_.Encode(leaf.next_turn(), leaf_tensor_.data());
    if (params_.eval_cache && ExpandFromCache()) continue;
    pending_ = true;
    return true;
  }
  return false;
}

bool Mcts::ExpandFromCache() {
  leaf_key_ = HashTensor(leaf_tensor_.data());
  const auto it = table_.find(leaf_key_);
  if (it == table_.end()) return false;
  const Node& same = nodes_[it->second.node];
  // Only legal moves are read; the rest of cached_probs_ may hold stale values.
  for (int i = 0; i < same.num_children; i++) {
    const Node& c = nodes_[same.first_child + i];
    cached_probs_[c.policy_index] = c.prior;
  }
  cache_hits_++;
  Expand(cached_probs_.data(), it->second.value);
  return true;
}

void Mcts::Feed(const float* probs, float value) {
  assert(pending_);
  pending_ = false;
  evaluations_++;
  if (params_.eval_cache) table_[leaf_key_] = CachedEval{path_.back(), value};
  Expand(probs, value);
}

void Mcts::Expand(const float* probs, float value) {
  const int leaf_index = path_.back();
  const int n = static_cast<int>(leaf_moves_.size());
  // Children in random order, so that ties in PUCT are broken at random.
  for (int i = n - 1; i > 0; i--) {
    std::swap(leaf_moves_[i], leaf_moves_[rng_.Below(i + 1)]);
  }
  float sum = 0;
  for (const Move& m : leaf_moves_) sum += probs[m.PolicyIndex()];
  const bool uniform = !(sum > 0) || !std::isfinite(sum);
  const int first = static_cast<int>(nodes_.size());
  nodes_.resize(first + n);
  Node& leaf = nodes_[leaf_index];
  const int mover = leaf.next_turn();
  const uint8_t bits = mover ? Node::kMover : Node::kNextTurn;
  for (int i = 0; i < n; i++) {
    const Move& m = leaf_moves_[i];
    Node& c = nodes_[first + i];
    c.policy_index = static_cast<uint8_t>(m.PolicyIndex());
    c.move_value = static_cast<uint8_t>(m.value);
    c.bits = bits;
    c.prior = uniform ? 1.0f / n : probs[m.PolicyIndex()] / sum;
  }
  leaf.first_child = first;
  leaf.num_children = static_cast<uint8_t>(n);
  leaf.bits |= Node::kExpanded;
  if (params_.random_playouts > 0) {
    int total = 0;
    for (int i = 0; i < params_.random_playouts; i++) {
      Board b = leaf_board_;
      total += b.RandomPlayout(mover, rng_);
    }
    const float x = static_cast<float>(total) / params_.random_playouts;  // player 0's view
    const float w = params_.random_playout_weight;
    value = (1 - w) * value + w * (mover == 0 ? x : -x);
  }
  leaf.value = value;
  if (leaf_index == 0 && noise_ && !noise_mixed_) MixNoise();
  counted_runs_++;
  Backup(mover == 0 ? value : -value);
}

void Mcts::MakeMove(int child) {
  assert(!pending_ && child >= 0 && child < nodes_[0].num_children);
  const Node& root = nodes_[0];
  const int c = root.first_child + child;
  board_.MakeMove(root.next_turn(), nodes_[c].move());
  // Breadth-first copy of the kept subtree: children stay contiguous.
  const bool remap = params_.eval_cache && !table_.empty();
  if (remap) remap_.assign(nodes_.size(), -1);
  scratch_.clear();
  scratch_.push_back(nodes_[c]);
  if (remap) remap_[c] = 0;
  for (size_t k = 0; k < scratch_.size(); k++) {
    scratch_[k].visits = 0;
    scratch_[k].wins = 0;
    if (scratch_[k].num_children > 0) {
      const int old_first = scratch_[k].first_child;
      const int n = scratch_[k].num_children;
      const int new_first = static_cast<int32_t>(scratch_.size());
      scratch_[k].first_child = new_first;
      scratch_.insert(scratch_.end(), nodes_.begin() + old_first,
                      nodes_.begin() + old_first + n);
      if (remap) {
        for (int i = 0; i < n; i++) remap_[old_first + i] = new_first + i;
      }
    }
  }
  std::swap(nodes_, scratch_);
  if (remap) {
    for (auto it = table_.begin(); it != table_.end();) {
      const int32_t moved = remap_[it->second.node];
      if (moved < 0) {
        it = table_.erase(it);
      } else {
        it->second.node = moved;
        ++it;
      }
    }
  }
  // A kept subtree may still need its memory; release what a huge old tree held.
  if (scratch_.capacity() > 4 * nodes_.capacity() + (1 << 16)) {
    std::vector<Node>().swap(scratch_);
  }
}

bool Mcts::PlayIfForced() {
  assert(!pending_);
  Node& root = nodes_[0];
  if (root.has_children()) {
    if (root.num_children != 1) return false;
    MakeMove(0);
    return true;
  }
  if (!root.expanded()) {
    leaf_board_ = board_;
    PrepareLeaf(root);  // as the first run would: skips a stuck player, finds terminals
  }
  if (root.terminal()) return false;
  const int player = root.next_turn();
  leaf_board_ = board_;
  leaf_board_.LegalMoves(player, leaf_moves_);
  if (leaf_moves_.size() != 1) return false;
  board_.MakeMove(player, leaf_moves_[0]);
  Reset(board_, 1 - player);
  return true;
}

int Mcts::SampleChildByVisits() {
  const Node& root = nodes_[0];
  int64_t total = 0;
  for (int i = 0; i < root.num_children; i++) total += child(i).visits;
  if (total == 0) {
    float u = static_cast<float>(rng_.Uniform());
    for (int i = 0; i < root.num_children; i++) {
      u -= child(i).prior;
      if (u < 0) return i;
    }
    return root.num_children - 1;
  }
  int64_t r = static_cast<int64_t>(rng_.Uniform() * static_cast<double>(total));
  for (int i = 0; i < root.num_children; i++) {
    r -= child(i).visits;
    if (r < 0) return i;
  }
  return root.num_children - 1;
}

int Mcts::MostVisitedChild() const {
  int best = 0;
  for (int i = 1; i < NumChildren(); i++) {
    if (child(i).visits > child(best).visits) best = i;
  }
  return best;
}

float Mcts::RootSearchValue() const {
  double wins = 0;
  int64_t visits = 0;
  for (int i = 0; i < NumChildren(); i++) {
    wins += child(i).wins;
    visits += child(i).visits;
  }
  return visits > 0 ? static_cast<float>(wins / visits) : root().value;
}

SearchStats Mcts::Stats() const {
  SearchStats s;
  const Node& root = nodes_[0];
  s.valid_moves = root.num_children;
  s.visit_count = root.visits;
  s.search_tree_size = static_cast<int32_t>(nodes_.size());
  if (root.num_children > 0) {
    s.min_child_vc = INT32_MAX;
    for (int i = 0; i < root.num_children; i++) {
      const int v = child(i).visits;
      if (v > 0) s.visited_children++;
      s.min_child_vc = std::min(s.min_child_vc, v);
      s.max_child_vc = std::max(s.max_child_vc, v);
    }
  }
  std::vector<std::pair<int32_t, int32_t>> stack = {{0, 0}};
  while (!stack.empty()) {
    const auto [index, depth] = stack.back();
    stack.pop_back();
    const Node& n = nodes_[index];
    if (static_cast<int>(s.nodes_per_depth.size()) <= depth) {
      s.nodes_per_depth.push_back(0);
      s.max_visit_count_per_depth.push_back(0);
    }
    s.nodes_per_depth[depth]++;
    s.max_visit_count_per_depth[depth] = std::max(s.max_visit_count_per_depth[depth], n.visits);
    if (n.num_children > 0) {
      s.branch_nodes++;
      for (int i = 0; i < n.num_children; i++) stack.push_back({n.first_child + i, depth + 1});
    }
  }
  // Depth of the deepest visited node (the root is depth 0).
  for (int d = static_cast<int>(s.max_visit_count_per_depth.size()) - 1; d >= 0; d--) {
    if (s.max_visit_count_per_depth[d] > 0) {
      s.search_depth = d;
      break;
    }
  }
  return s;
}

}  // namespace hexz
