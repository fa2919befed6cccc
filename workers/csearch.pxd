# Declarations of workers/engine/mcts.h and selfplay.h for Cython (keep in sync).
#
# As in cboard.pxd, every call that can throw (they all allocate: trees, statistics,
# games) is declared `except +raise_py_error`.
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libcpp cimport bool
from libcpp.vector cimport vector

from cboard cimport Board, Move, Rng, ScorePair, raise_py_error


cdef extern from "mcts.h" namespace "hexz" nogil:
    cdef cppclass SearchParams:
        float uct_c
        float initial_root_q_value
        float initial_q_penalty
        float dirichlet_concentration
        float noise_weight
        int random_playouts
        float random_playout_weight
        bool end_game_when_stuck
        bool eval_cache
        bool fpu_reference

    cdef cppclass Node:
        float prior
        float wins
        float value
        int32_t visits
        int32_t first_child
        uint8_t policy_index
        uint8_t move_value
        uint8_t num_children
        int mover()
        int next_turn()
        bool terminal()
        bool expanded()
        Move move()
        float Q()

    cdef cppclass SearchStats:
        int32_t valid_moves
        int32_t visit_count
        int32_t visited_children
        int32_t search_depth
        int32_t search_tree_size
        int32_t branch_nodes
        int32_t min_child_vc
        int32_t max_child_vc
        vector[int32_t] nodes_per_depth
        vector[int32_t] max_visit_count_per_depth

    cdef cppclass Mcts:
        Mcts(const SearchParams& params, uint64_t seed) except +raise_py_error
        void Reset(const Board& board, int player) except +raise_py_error
        void StartMove(int budget, bool noise, bool greedy) except +raise_py_error
        bool Advance() except +raise_py_error
        const Board& LeafBoard()
        int LeafPlayer()
        const float* LeafTensor()
        void Feed(const float* probs, float value) except +raise_py_error
        void MakeMove(int child) except +raise_py_error
        int SampleChildByVisits()
        int MostVisitedChild()
        const Board& board()
        const Node& root()
        const Node& child(int i)
        int NumChildren()
        int RootPlayer()
        bool RootTerminal()
        bool pending()
        int counted_runs()
        int reused_runs()
        int evaluations()
        int cache_hits()
        int TreeSize()
        float RootSearchValue()
        SearchStats Stats() except +raise_py_error


cdef extern from "selfplay.h" namespace "hexz" nogil:
    cdef cppclass SelfPlayParams:
        SearchParams search
        int runs_per_move
        int runs_per_fast_move
        float fast_move_prob
        int max_moves_per_game
        int sampled_moves
        bool resign
        float resign_threshold

    const int kStatsInts

    cdef cppclass ExampleColumns:
        vector[uint8_t] board_cells
        vector[uint8_t] board_grass
        vector[uint8_t] flags_left
        vector[uint8_t] mask
        vector[uint32_t] counts
        vector[float] priors
        vector[int8_t] result
        vector[int32_t] turn
        vector[int32_t] move
        vector[int32_t] model_ckpt
        vector[float] value
        vector[float] root_q
        vector[int64_t] unix_micros
        vector[int64_t] duration_micros
        vector[int32_t] stats
        vector[float] selected_child_q
        vector[int32_t] depth_len
        vector[int32_t] nodes_per_depth
        vector[int32_t] max_visit_count_per_depth
        int size()

    cdef cppclass GameRecord:
        int index
        int result
        ScorePair score
        int num_moves
        int64_t evaluations
        int64_t cache_hits
        int fast_moves
        int forced_moves
        bool resigned
        ExampleColumns examples

    cdef cppclass SelfPlayDriver:
        SelfPlayDriver(const SelfPlayParams& params, int n_games, int games_in_flight,
                       uint64_t seed) except +raise_py_error
        int Prepare(float* boards, uint8_t* masks) except +raise_py_error
        void Feed(const float* probs, const float* values) except +raise_py_error
        vector[GameRecord] TakeFinished() except +raise_py_error
        int batch_size()
        int games_started()
        int games_finished()
        int64_t evaluations()
        int64_t examples_recorded()
        int64_t moves_played()
        int games_in_flight()
        void set_checkpoint(int32_t checkpoint)
        int32_t checkpoint()

    uint64_t GameSeed(uint64_t seed, uint64_t index)
