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

// One training example (a full move), see TrainingExample in the wire format.
struct Example {
  std::array<float, kTensorSize> board;  // from the view of `turn`
  std::array<uint8_t, kPolicySize> mask;
  std::array<float, kPolicySize> move_probs;  // normalised root visits
  std::array<float, kPolicySize> priors;      // root priors, noise included
  float value = 0;                            // network value of the root
  int turn = 0;
  int move_number = 0;  // 0-based move number in the game
  Move move{};  // the move played
  int64_t unix_micros = 0;
  int64_t duration_micros = 0;
  SearchStats stats;
  int32_t selected_child_vc = 0;
  float selected_child_q = 0;
  float result = 0;  // final result from `turn`'s view
  // The model checkpoint in use when the move was decided (SetCheckpoint); -1: none set.
  int32_t checkpoint = -1;
};

struct GameRecord {
  int index = 0;
  int result = 0;  // player 0's view
  std::array<int, 2> score{};
  int num_moves = 0;
  int64_t evaluations = 0;
  int64_t cache_hits = 0;  // leaves expanded from a transposition, not evaluated
  int fast_moves = 0;
  bool resigned = false;
  std::vector<Example> examples;
};

// One self-play game as a resumable state machine around an Mcts.
class Game {
 public:
  Game(const SelfPlayParams& params, int index, uint64_t seed);

  // Advances until the game needs an evaluation (true; see search().LeafBoard())
  // or is over (false; see TakeRecord()). Examples recorded meanwhile carry `checkpoint`.
  bool Advance(int32_t checkpoint);
  void Feed(const float* probs, float value) { mcts_.Feed(probs, value); }
  Mcts& search() { return mcts_; }
  GameRecord TakeRecord() { return std::move(record_); }
  int num_examples() const { return static_cast<int>(record_.examples.size()); }
  int num_moves() const { return record_.num_moves; }

 private:
  void RecordExample(int child, int32_t checkpoint);
  void Finish(int result);

  const SelfPlayParams& params_;
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
  // The checkpoint recorded in examples from now on (see Example::checkpoint).
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
  int32_t checkpoint_ = -1;
};

// The seed of game `index` of a run seeded with `seed`.
uint64_t GameSeed(uint64_t seed, uint64_t index);
int64_t UnixMicros();

}  // namespace hexz
