#include "selfplay.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <type_traits>
#include <utility>

namespace hexz {

// A game keeps its own copy of the parameters and lives in its driver's slots; neither
// can be copied or moved, so nothing refers to a driver that is gone.
static_assert(!std::is_copy_constructible_v<SelfPlayDriver> &&
              !std::is_move_constructible_v<SelfPlayDriver> &&
              !std::is_move_constructible_v<Game>);

namespace {

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace

uint64_t GameSeed(uint64_t seed, uint64_t index) {
  return SplitMix64(SplitMix64(seed) ^ (index * 0xd1b54a32d192ed03ULL + 0x8cb92ba72f3d8dd7ULL));
}

int64_t UnixMicros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

Game::Game(const SelfPlayParams& params, int index, uint64_t seed)
    : params_(params), mcts_(params.search, seed) {
  record_.index = index;
  mcts_.Reset(Board::Random(mcts_.rng()), 0);
}

bool Game::Advance(int32_t checkpoint) {
  while (!done_) {
    if (!in_move_) {
      if (move_number_ >= params_.max_moves_per_game) {
        Finish(mcts_.board().Result());
        break;
      }
      // A position with one legal move is played at once: no search, no example.
      if (mcts_.PlayIfForced()) {
        record_.forced_moves++;
        record_.num_moves = ++move_number_;
        continue;
      }
      fast_ = move_number_ >= 6 && params_.fast_move_prob > 0 &&
              mcts_.rng().Uniform() < params_.fast_move_prob;
      const int budget = fast_ ? params_.runs_per_fast_move : params_.runs_per_move;
      mcts_.StartMove(budget, /*noise=*/!fast_, /*greedy=*/false);
      move_start_micros_ = UnixMicros();
      in_move_ = true;
    }
    if (mcts_.Advance()) {
      record_.evaluations++;
      return true;
    }
    in_move_ = false;
    record_.cache_hits += mcts_.cache_hits();
    if (mcts_.RootTerminal()) {
      Finish(mcts_.board().Result());
      break;
    }
    const bool sampled = params_.sampled_moves < 0 || move_number_ < params_.sampled_moves;
    const int child = sampled ? mcts_.SampleChildByVisits() : mcts_.MostVisitedChild();
    const int player = mcts_.RootPlayer();
    const bool resign =
        params_.resign && mcts_.RootSearchValue() < params_.resign_threshold;
    if (fast_) {
      record_.fast_moves++;
    } else {
      RecordExample(child, checkpoint);
    }
    mcts_.MakeMove(child);
    move_number_++;
    record_.num_moves = move_number_;
    if (resign) {
      record_.resigned = true;
      Finish(player == 0 ? -1 : 1);
    }
  }
  return false;
}

void Game::RecordExample(int child, int32_t checkpoint) {
  ExampleColumns& e = record_.examples;
  const Mcts& m = mcts_;
  const Board& board = m.board();
  const int turn = m.RootPlayer();
  const size_t row = e.result.size();

  e.board_cells.resize((row + 1) * 2 * kCells);
  e.board_grass.resize((row + 1) * kGrassBytes);
  e.flags_left.resize((row + 1) * 2);
  board.Pack(turn, &e.board_cells[row * 2 * kCells], &e.board_grass[row * kGrassBytes],
             &e.flags_left[row * 2]);

  std::array<uint8_t, kPolicySize> legal;
  board.ActionMask(turn, legal.data());
  std::array<uint32_t, kPolicySize> visits{};
  std::array<float, kPolicySize> priors{};
  for (int i = 0; i < m.NumChildren(); i++) {
    const Node& c = m.child(i);
    visits[c.policy_index] = static_cast<uint32_t>(c.visits);
    priors[c.policy_index] = c.prior;
  }
  e.mask.resize((row + 1) * kMaskBytes, 0);
  uint8_t* bits = &e.mask[row * kMaskBytes];
  for (int i = 0; i < kPolicySize; i++) {
    if (!legal[i]) continue;
    bits[i >> 3] |= static_cast<uint8_t>(1 << (i & 7));
    e.counts.push_back(visits[i]);
    e.priors.push_back(priors[i]);
  }

  const Node& chosen = m.child(child);
  const Move move = chosen.move();
  e.result.push_back(0);  // set by Finish
  e.turn.push_back(turn);
  e.move.insert(e.move.end(), {turn + 1, move_number_, move.r, move.c,
                               move.typ == 0 ? kWireCellTypeFlag : kWireCellTypeNormal});
  e.model_ckpt.push_back(checkpoint);
  e.value.push_back(m.root().value);
  e.root_q.push_back(m.RootSearchValue());
  const int64_t now = UnixMicros();
  e.unix_micros.push_back(now);
  e.duration_micros.push_back(now - move_start_micros_);
  const SearchStats s = m.Stats();
  e.stats.insert(e.stats.end(), {s.valid_moves, s.visit_count, s.visited_children,
                                 s.search_depth, s.search_tree_size, s.branch_nodes,
                                 s.min_child_vc, s.max_child_vc, chosen.visits});
  e.selected_child_q.push_back(chosen.Q());
  e.depth_len.push_back(static_cast<int32_t>(s.nodes_per_depth.size()));
  e.depth_len.push_back(static_cast<int32_t>(s.max_visit_count_per_depth.size()));
  e.nodes_per_depth.insert(e.nodes_per_depth.end(), s.nodes_per_depth.begin(),
                           s.nodes_per_depth.end());
  e.max_visit_count_per_depth.insert(e.max_visit_count_per_depth.end(),
                                     s.max_visit_count_per_depth.begin(),
                                     s.max_visit_count_per_depth.end());
}

void Game::Finish(int result) {
  done_ = true;
  record_.result = result;
  record_.score = mcts_.board().Score();
  ExampleColumns& e = record_.examples;
  for (int i = 0; i < e.size(); i++) {
    e.result[i] = static_cast<int8_t>(e.turn[i] == 0 ? result : -result);
  }
}

SelfPlayDriver::SelfPlayDriver(const SelfPlayParams& params, int n_games, int games_in_flight,
                               uint64_t seed)
    : params_(params), n_games_(n_games), seed_(seed) {
  const int slots = n_games < 0 ? games_in_flight : std::min(games_in_flight, std::max(n_games, 1));
  slots_.resize(std::max(1, slots));
}

int SelfPlayDriver::Prepare(float* boards, uint8_t* masks) {
  batch_.clear();
  for (size_t s = 0; s < slots_.size(); s++) {
    while (true) {
      if (!slots_[s]) {
        if (n_games_ >= 0 && started_ >= n_games_) break;
        slots_[s] = std::make_unique<Game>(params_, started_, GameSeed(seed_, started_));
        started_++;
      }
      Game& g = *slots_[s];
      if (g.Advance(checkpoint_)) {
        const int k = static_cast<int>(batch_.size());
        const Mcts& m = g.search();
        std::memcpy(boards + static_cast<size_t>(k) * kTensorSize, m.LeafTensor(),
                    kTensorSize * sizeof(float));
        m.LeafBoard().ActionMask(m.LeafPlayer(), masks + static_cast<size_t>(k) * kPolicySize);
        batch_.push_back(static_cast<int>(s));
        break;
      }
      finished_examples_ += g.num_examples();
      finished_moves_ += g.num_moves();
      finished_.push_back(g.TakeRecord());
      finished_count_++;
      slots_[s].reset();
    }
  }
  return static_cast<int>(batch_.size());
}

void SelfPlayDriver::Feed(const float* probs, const float* values) {
  for (size_t k = 0; k < batch_.size(); k++) {
    slots_[batch_[k]]->Feed(probs + k * kPolicySize, values[k]);
  }
  evaluations_ += static_cast<int64_t>(batch_.size());
  batch_.clear();
}

int64_t SelfPlayDriver::examples_recorded() const {
  int64_t n = finished_examples_;
  for (const auto& g : slots_) {
    if (g) n += g->num_examples();
  }
  return n;
}

int64_t SelfPlayDriver::moves_played() const {
  int64_t n = finished_moves_;
  for (const auto& g : slots_) {
    if (g) n += g->num_moves();
  }
  return n;
}

std::vector<GameRecord> SelfPlayDriver::TakeFinished() {
  std::vector<GameRecord> out;
  out.swap(finished_);
  return out;
}

}  // namespace hexz
