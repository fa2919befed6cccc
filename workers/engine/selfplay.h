// Self-play games of shared/spec/selfplay-and-training.md, many at once.
//
// SelfPlayDriver keeps `games_in_flight` games running (a fixed number of games, or
// open-ended: the self-play worker keeps one driver for its whole life). Each step, Prepare()
// advances every game to its next leaf that needs a network evaluation and writes
// those positions into caller-provided contiguous buffers (one batch); the caller
// runs the network once and hands the results to Feed(). A finished game's slot
// starts the next game at once, so finished games stream out steadily.
// Game i is seeded from (seed, i) only: the same seed gives the same games for the
// same network outputs.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#include "board.h"
#include "layout.h"
#include "mcts.h"

namespace hexz {

struct SelfPlayParams {
  SearchParams search;
  int runs_per_move = 800;
  int runs_per_fast_move = 100;
  float fast_move_prob = 0.0f;
  int max_moves_per_game = 200;
  // Moves 0 .. sampled_moves - 1 are drawn in proportion to root visits, later moves
  // take the most visited child; negative: every move is drawn (the reference).
  int sampled_moves = -1;
  // Resign (the player to move loses) once its search value falls below the
  // threshold.
  bool resign = false;
  float resign_threshold = -1.0f;
};

// Search statistics per example in ExampleColumns::stats.
constexpr int kStatsInts = 9;

// The examples of one game as the example store keeps them: one entry per example in
// each column (or the stated number), except the ragged columns, which hold one entry
// per legal move (per set mask bit, in policy index order) or per search depth. The
// schema is hexz_tasks/codec.py's (format version 2); keep the two in sync.
struct ExampleColumns {
  std::vector<uint8_t> board_cells;  // 2 * kCells: packed board, player to move first
  std::vector<uint8_t> board_grass;  // kGrassBytes
  std::vector<uint8_t> flags_left;   // 2, player to move first
  std::vector<uint8_t> mask;         // kMaskBytes: legal moves as bits
  std::vector<uint32_t> counts;      // ragged by mask: root visits of each legal move
  std::vector<float> priors;         // ragged by mask: root priors, noise included
  std::vector<int8_t> result;        // final result from the player to move's view
  std::vector<int32_t> turn;         // the player to move (0 or 1)
  // 5: the move played as GameEngineMove: player_num, move number, row, col, cell_type.
  std::vector<int32_t> move;
  std::vector<int32_t> model_ckpt;     // the checkpoint whose network the search used
  std::vector<float> value;            // the network's value of the root
  std::vector<float> root_q;           // the root's search value (Mcts::RootSearchValue)
  std::vector<int64_t> unix_micros;    // when the move was made
  std::vector<int64_t> duration_micros;  // how long its search took
  // kStatsInts: valid_moves, visit_count, visited_children, search_depth,
  // search_tree_size, branch_nodes, min_child_vc, max_child_vc, selected_child_vc.
  std::vector<int32_t> stats;
  std::vector<float> selected_child_q;
  std::vector<int32_t> depth_len;  // 2: entries of the next two columns of this example
  std::vector<int32_t> nodes_per_depth;            // ragged by depth_len[0]
  std::vector<int32_t> max_visit_count_per_depth;  // ragged by depth_len[1]

  int size() const { return static_cast<int>(result.size()); }
};
struct GameRecord {
  int index = 0;
  int result = 0;  // player 0's view
  std::array<int, 2> score{};
  int num_moves = 0;
  int64_t evaluations = 0;
  int64_t cache_hits = 0;  // leaves expanded from a transposition, not evaluated
  int fast_moves = 0;
  int forced_moves = 0;  // one legal move: played without a search, no example
  bool resigned = false;
  ExampleColumns examples;
};

// One self-play game as a resumable state machine around an Mcts.
class Game {
 public:
  Game(const SelfPlayParams& params, int index, uint64_t seed);
  Game(const Game&) = delete;
  Game& operator=(const Game&) = delete;

  // Advances until the game needs an evaluation (true; see search().LeafBoard())
  // or is over (false; see TakeRecord()). Examples recorded meanwhile name `checkpoint`.
  bool Advance(int32_t checkpoint);
  void Feed(const float* probs, float value) { mcts_.Feed(probs, value); }
  Mcts& search() { return mcts_; }
  GameRecord TakeRecord() { return std::move(record_); }
  int num_examples() const { return record_.examples.size(); }
  int num_moves() const { return record_.num_moves; }

 private:
  void RecordExample(int child, int32_t checkpoint);
  void Finish(int result);

  const SelfPlayParams params_;
  Mcts mcts_;
  GameRecord record_;
  int move_number_ = 0;
  bool in_move_ = false;
  bool fast_ = false;
  bool done_ = false;
  int64_t move_start_micros_ = 0;
};

class SelfPlayDriver {
 public:
  // n_games < 0: open-ended, every finished game's slot starts a new one for ever.
  SelfPlayDriver(const SelfPlayParams& params, int n_games, int games_in_flight, uint64_t seed);
  // One driver per owner: its games live in its slots.
  SelfPlayDriver(const SelfPlayDriver&) = delete;
  SelfPlayDriver& operator=(const SelfPlayDriver&) = delete;

  // Advances all running games (starting new ones in freed slots) and writes the
  // positions to evaluate: boards[k * kTensorSize], masks[k * kPolicySize] for
  // k < the returned batch size (at most games_in_flight; 0 once all games are done).
  // Call it only when no batch awaits Feed (batch_size() == 0).
  int Prepare(float* boards, uint8_t* masks);
  // Results for the last Prepare's batch: probs[k * kPolicySize], values[k].
  void Feed(const float* probs, const float* values);
  // Games finished since the last call, in the order they finished.
  std::vector<GameRecord> TakeFinished();

  int batch_size() const { return static_cast<int>(batch_.size()); }  // awaiting Feed
  int games_started() const { return started_; }
  int games_finished() const { return finished_count_; }
  int64_t evaluations() const { return evaluations_; }
  // Examples recorded so far, finished games and games in progress.
  int64_t examples_recorded() const;
  // Moves played so far (fast moves included), finished games and games in progress.
  int64_t moves_played() const;
  int games_in_flight() const { return static_cast<int>(slots_.size()); }
  // The checkpoint that examples recorded from now on name (the caller sets it when it
  // swaps networks).
  void set_checkpoint(int32_t checkpoint) { checkpoint_ = checkpoint; }
  int32_t checkpoint() const { return checkpoint_; }

 private:
  SelfPlayParams params_;
  int n_games_;
  uint64_t seed_;
  std::vector<std::unique_ptr<Game>> slots_;
  std::vector<int> batch_;  // slot of each batch row
  std::vector<GameRecord> finished_;
  int started_ = 0;
  int finished_count_ = 0;
  int64_t finished_examples_ = 0;
  int64_t finished_moves_ = 0;
  int64_t evaluations_ = 0;
  int32_t checkpoint_ = 0;
};

// The seed of game `index` of a run seeded with `seed`.
uint64_t GameSeed(uint64_t seed, uint64_t index);
int64_t UnixMicros();

}  // namespace hexz
