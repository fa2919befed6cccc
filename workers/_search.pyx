# distutils: language = c++
"""Neural MCTS and the many-games self-play driver (C++ in workers/engine) for Python.

Arrays cross the boundary as NumPy buffers; the GIL is released while C++ works.
hexz_tasks.selfplay builds the public API on top of this module.
"""

import os
import time

import numpy as np

from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy
from libcpp.vector cimport vector

from cboard cimport (
    Board, Move, kChannels, kCells, kCols, kGrassBytes, kMaskBytes, kMoveTypes, kPolicySize,
    kRows, kTensorSize,
)
from csearch cimport (
    ExampleColumns, GameRecord, GameSeed, Mcts, Node, SearchParams, SearchStats,
    SelfPlayDriver, SelfPlayParams, kStatsInts,
)

from hexz_tasks import codec

BOARD_SHAPE = (kChannels, kRows, kCols)
MASK_SHAPE = (kMoveTypes, kRows, kCols)
# Entries per example of ExampleColumns::stats (codec.STATS_FIELDS).
STATS_INTS = kStatsInts

cdef uint64_t _MASK64 = 0xFFFFFFFFFFFFFFFF


cdef uint64_t _seed(seed) except? 0:
    if seed is None:
        return int.from_bytes(os.urandom(8), "little")
    return int(seed) & _MASK64


cdef SearchParams _search_params(
    float uct_c, float initial_root_q_value, float initial_q_penalty,
    float dirichlet_concentration, int random_playouts, float random_playout_weight,
    bint end_game_when_stuck, bint eval_cache, bint fpu_reference,
) except *:
    if dirichlet_concentration < 0:
        raise ValueError(f"dirichlet_concentration must be >= 0, got {dirichlet_concentration}")
    if random_playouts < 0:
        raise ValueError(f"random_playouts must be >= 0, got {random_playouts}")
    if not 0.0 <= random_playout_weight <= 1.0:
        raise ValueError(f"random_playout_weight must be in [0, 1], got {random_playout_weight}")
    cdef SearchParams p
    p.uct_c = uct_c
    p.initial_root_q_value = initial_root_q_value
    p.initial_q_penalty = initial_q_penalty
    p.dirichlet_concentration = dirichlet_concentration
    p.noise_weight = 0.25
    p.random_playouts = random_playouts
    p.random_playout_weight = random_playout_weight
    p.end_game_when_stuck = end_game_when_stuck
    p.eval_cache = eval_cache
    p.fpu_reference = fpu_reference
    return p


cdef Board _board_from(board) except *:
    """A C++ board from an (11, 11, 10) stored tensor or anything with .tensor(0)."""
    if hasattr(board, "tensor"):
        board = board.tensor(0)
    a = np.ascontiguousarray(board, dtype=np.float32)
    if a.shape != BOARD_SHAPE:
        raise ValueError(f"board must have shape {BOARD_SHAPE}, got {a.shape}")
    cdef const float[:, :, ::1] v = a
    return Board.FromTensor(&v[0, 0, 0])


cdef object _stats_dict(const SearchStats& s):
    return {
        "valid_moves": s.valid_moves,
        "visit_count": s.visit_count,
        "visited_children": s.visited_children,
        "search_depth": s.search_depth,
        "search_tree_size": s.search_tree_size,
        "branch_nodes": s.branch_nodes,
        "min_child_vc": s.min_child_vc,
        "max_child_vc": s.max_child_vc,
        "nodes_per_depth": list(s.nodes_per_depth),
        "max_visit_count_per_depth": list(s.max_visit_count_per_depth),
    }


def game_seed(seed: int, index: int) -> int:
    """The seed of game `index` of a self-play run seeded with `seed`."""
    return GameSeed(int(seed) & _MASK64, int(index) & _MASK64)


cdef class Search:
    """One search tree: the building block of self-play, exposed for suggest-move and tests.

    Use: start_move(budget, ...), then advance(boards, masks) / feed(probs, value) until
    advance returns False (or run(evaluate, ...) for the whole loop); then read the
    root's children and make_move(i).
    """

    cdef Mcts* c
    cdef float[::1] _probs

    def __cinit__(
        self, board, int player=0, seed=0, *, float uct_c=1.5,
        float initial_root_q_value=-0.2, float initial_q_penalty=0.3,
        float dirichlet_concentration=0.0, int random_playouts=0,
        float random_playout_weight=1.0, bint end_game_when_stuck=False,
        bint eval_cache=True, bint fpu_reference=False,
    ):
        if player != 0 and player != 1:
            raise ValueError(f"player must be 0 or 1, got {player}")
        cdef SearchParams p = _search_params(
            uct_c, initial_root_q_value, initial_q_penalty, dirichlet_concentration,
            random_playouts, random_playout_weight, end_game_when_stuck, eval_cache,
            fpu_reference,
        )
        cdef Board b = _board_from(board)
        self.c = new Mcts(p, _seed(seed))
        self.c.Reset(b, player)

    def __dealloc__(self):
        del self.c

    def start_move(self, int budget, *, bint noise=False, bint greedy=False) -> None:
        """Starts a move of `budget` counted runs (reused runs do not count)."""
        if budget < 1:
            raise ValueError(f"budget must be positive, got {budget}")
        if self.c.pending():
            raise ValueError("a leaf still awaits feed()")
        self.c.StartMove(budget, noise, greedy)

    def advance(self, boards, masks) -> bool:
        """Runs until a leaf needs an evaluation (True: written to boards[0], masks[0])."""
        cdef float[:, :, :, ::1] bv = boards
        cdef uint8_t[:, :, :, ::1] mv = np.asarray(masks).view(np.uint8)
        if bv.shape[0] < 1 or mv.shape[0] < 1:
            raise ValueError("boards and masks need at least one row")
        cdef bint needs
        with nogil:
            needs = self.c.Advance()
            if needs:
                memcpy(&bv[0, 0, 0, 0], self.c.LeafTensor(), kTensorSize * sizeof(float))
                self.c.LeafBoard().ActionMask(self.c.LeafPlayer(), &mv[0, 0, 0, 0])
        return needs

    def feed(self, probs, float value) -> None:
        """Expands the pending leaf with probs (220,) and value (leaf player's view)."""
        cdef const float[::1] pv = np.ascontiguousarray(probs, dtype=np.float32).reshape(-1)
        if pv.shape[0] != kPolicySize:
            raise ValueError(f"probs must have {kPolicySize} entries, got {pv.shape[0]}")
        if not self.c.pending():
            raise ValueError("no leaf awaits an evaluation (call advance first)")
        with nogil:
            self.c.Feed(&pv[0], value)

    def run(self, evaluate, int budget, *, bint noise=False, bint greedy=False,
            deadline=None) -> int:
        """A whole move: `evaluate(boards, masks) -> (priors, values)` on batches of one.

        Stops when the budget is spent, the root is terminal or time.monotonic()
        passes `deadline`; returns the number of network evaluations.
        """
        self.start_move(budget, noise=noise, greedy=greedy)
        boards = np.zeros((1, *BOARD_SHAPE), dtype=np.float32)
        masks = np.zeros((1, *MASK_SHAPE), dtype=bool)
        n = 0
        while self.advance(boards, masks):
            priors, values = evaluate(boards, masks)
            self.feed(np.asarray(priors, dtype=np.float32)[0], float(np.asarray(values)[0]))
            n += 1
            if deadline is not None and time.monotonic() >= deadline:
                break
        return n

    def children(self) -> dict:
        """Root children in creation order: moves (n, 4) [typ, r, c, value], policy_index,
        prior, visits, wins, q, next_turn (all NumPy arrays)."""
        cdef int n = self.c.NumChildren()
        moves = np.zeros((n, 4), dtype=np.int32)
        index = np.zeros(n, dtype=np.int32)
        prior = np.zeros(n, dtype=np.float32)
        visits = np.zeros(n, dtype=np.int32)
        wins = np.zeros(n, dtype=np.float32)
        q = np.zeros(n, dtype=np.float32)
        next_turn = np.zeros(n, dtype=np.int32)
        cdef int i
        cdef Move m
        for i in range(n):
            node = &self.c.child(i)
            m = node.move()
            moves[i] = (m.typ, m.r, m.c, m.value)
            index[i] = node.policy_index
            prior[i] = node.prior
            visits[i] = node.visits
            wins[i] = node.wins
            q[i] = node.Q()
            next_turn[i] = node.next_turn()
        return {
            "moves": moves, "policy_index": index, "prior": prior, "visits": visits,
            "wins": wins, "q": q, "next_turn": next_turn,
        }

    def make_move(self, int child) -> None:
        """Plays root child `child` and keeps its subtree (visits and wins zeroed)."""
        if not 0 <= child < self.c.NumChildren():
            raise ValueError(f"child must be in [0, {self.c.NumChildren()}), got {child}")
        if self.c.pending():
            raise ValueError("a leaf still awaits feed()")
        self.c.MakeMove(child)

    def sample_child(self) -> int:
        """A root child drawn with probability proportional to visits."""
        if self.c.NumChildren() == 0:
            raise ValueError("the root has no children")
        return self.c.SampleChildByVisits()

    def most_visited_child(self) -> int:
        if self.c.NumChildren() == 0:
            raise ValueError("the root has no children")
        return self.c.MostVisitedChild()

    def board_tensor(self, int player=0):
        """The root position as an (11, 11, 10) float32 tensor from `player`'s view."""
        out = np.zeros(BOARD_SHAPE, dtype=np.float32)
        cdef float[:, :, ::1] ov = out
        self.c.board().Encode(player, &ov[0, 0, 0])
        return out

    def stats(self) -> dict:
        return _stats_dict(self.c.Stats())

    @property
    def root_player(self) -> int:
        return self.c.RootPlayer()

    @property
    def root_terminal(self) -> bool:
        return self.c.RootTerminal()

    @property
    def root_visits(self) -> int:
        return self.c.root().visits

    @property
    def root_value(self) -> float:
        """The network value of the root position, from the root player's view."""
        return self.c.root().value

    @property
    def root_search_value(self) -> float:
        """Mean backed-up result over the root's children, root player's view."""
        return self.c.RootSearchValue()

    @property
    def num_children(self) -> int:
        return self.c.NumChildren()

    @property
    def counted_runs(self) -> int:
        return self.c.counted_runs()

    @property
    def reused_runs(self) -> int:
        return self.c.reused_runs()

    @property
    def evaluations(self) -> int:
        """Network evaluations of the current move."""
        return self.c.evaluations()

    @property
    def cache_hits(self) -> int:
        """Leaves of the current move expanded from a transposition (no evaluation)."""
        return self.c.cache_hits()

    @property
    def tree_size(self) -> int:
        return self.c.TreeSize()


cdef object _column(const void* data, size_t nbytes, dtype, shape):
    """A NumPy array of `shape` holding a copy of a C++ vector's bytes."""
    out = np.empty(shape, dtype=dtype)
    if out.nbytes != nbytes:
        raise RuntimeError(f"engine column of {nbytes} bytes does not fit {shape} {dtype}")
    cdef uint8_t[::1] view = out.reshape(-1).view(np.uint8)
    if nbytes:
        memcpy(&view[0], data, nbytes)
    return out


cdef object _engine_columns(ExampleColumns& e):
    """The engine's columns of one game (see selfplay.h), one copy each."""
    cdef size_t n = e.size()
    cdef size_t legal = e.counts.size()
    cdef size_t depths0 = e.nodes_per_depth.size()
    cdef size_t depths1 = e.max_visit_count_per_depth.size()
    return {
        "board_cells": _column(e.board_cells.data(), n * 2 * kCells, np.uint8, (n, 2, kCells)),
        "board_grass": _column(e.board_grass.data(), n * kGrassBytes, np.uint8, (n, kGrassBytes)),
        "flags_left": _column(e.flags_left.data(), n * 2, np.uint8, (n, 2)),
        "mask": _column(e.mask.data(), n * kMaskBytes, np.uint8, (n, kMaskBytes)),
        "counts": _column(e.counts.data(), legal * 4, np.uint32, (legal,)),
        "priors": _column(e.priors.data(), legal * 4, np.float32, (legal,)),
        "result": _column(e.result.data(), n, np.int8, (n,)),
        "turn": _column(e.turn.data(), n * 4, np.int32, (n,)),
        "move": _column(e.move.data(), n * 5 * 4, np.int32, (n, 5)),
        "model_ckpt": _column(e.model_ckpt.data(), n * 4, np.int32, (n,)),
        "value": _column(e.value.data(), n * 4, np.float32, (n,)),
        "root_q": _column(e.root_q.data(), n * 4, np.float32, (n,)),
        "unix_micros": _column(e.unix_micros.data(), n * 8, np.int64, (n,)),
        "duration_micros": _column(e.duration_micros.data(), n * 8, np.int64, (n,)),
        "stats": _column(e.stats.data(), n * kStatsInts * 4, np.int32, (n, kStatsInts)),
        "selected_child_q": _column(e.selected_child_q.data(), n * 4, np.float32, (n,)),
        "depth_len": _column(e.depth_len.data(), n * 2 * 4, np.int32, (n, 2)),
        "nodes_per_depth": _column(e.nodes_per_depth.data(), depths0 * 4, np.int32, (depths0,)),
        "max_visit_count_per_depth": _column(
            e.max_visit_count_per_depth.data(), depths1 * 4, np.int32, (depths1,)
        ),
    }


cdef class SelfPlay:
    """Plays `n_games` self-play games (None: open-ended, a finished game's slot starts the
    next at once, for ever), `games_in_flight` at a time, one batch per step.

    Loop: n = prepare(boards, masks); collect take_finished(); stop at n == 0; run the
    network on boards[:n], masks[:n]; feed(priors, values). Set `checkpoint` (and
    `model_name`) when the network changes: examples record them.
    `pending` is the size of a prepared batch not fed yet: feed it before the next
    prepare.
    """

    cdef SelfPlayDriver* c
    cdef readonly object n_games
    cdef readonly int capacity
    cdef public object model_name

    def __cinit__(
        self, n_games, int games_in_flight, seed=None, *, int runs_per_move=800,
        int runs_per_fast_move=100, float fast_move_prob=0.0, int max_moves_per_game=200,
        sampled_moves=None, resign_threshold=None, float uct_c=1.5,
        float initial_root_q_value=-0.2, float initial_q_penalty=0.3,
        float dirichlet_concentration=0.0, int random_playouts=0,
        float random_playout_weight=1.0, bint end_game_when_stuck=False,
        bint eval_cache=True, bint fpu_reference=False,
        model_name=None, int checkpoint=0,
    ):
        if n_games is not None and not 0 <= n_games < 2**31:
            raise ValueError(f"n_games must be in [0, 2**31) or None, got {n_games}")
        if games_in_flight < 1:
            raise ValueError(f"games_in_flight must be positive, got {games_in_flight}")
        if runs_per_move < 1 or runs_per_fast_move < 1:
            raise ValueError("runs_per_move and runs_per_fast_move must be positive")
        if max_moves_per_game < 1:
            raise ValueError(f"max_moves_per_game must be positive, got {max_moves_per_game}")
        if not 0.0 <= fast_move_prob <= 1.0:
            raise ValueError(f"fast_move_prob must be in [0, 1], got {fast_move_prob}")
        if sampled_moves is not None and sampled_moves < 0:
            raise ValueError(f"sampled_moves must be >= 0 or None, got {sampled_moves}")
        cdef SelfPlayParams p
        p.search = _search_params(
            uct_c, initial_root_q_value, initial_q_penalty, dirichlet_concentration,
            random_playouts, random_playout_weight, end_game_when_stuck, eval_cache,
            fpu_reference,
        )
        p.runs_per_move = runs_per_move
        p.runs_per_fast_move = runs_per_fast_move
        p.fast_move_prob = fast_move_prob
        p.max_moves_per_game = max_moves_per_game
        p.sampled_moves = -1 if sampled_moves is None else sampled_moves
        p.resign = resign_threshold is not None
        p.resign_threshold = resign_threshold if resign_threshold is not None else -1.0
        self.c = new SelfPlayDriver(
            p, -1 if n_games is None else n_games, games_in_flight, _seed(seed)
        )
        self.c.set_checkpoint(checkpoint)
        self.n_games = n_games
        self.capacity = self.c.games_in_flight()
        self.model_name = model_name

    def __dealloc__(self):
        del self.c

    def prepare(self, boards, masks) -> int:
        """Advances all games; writes the batch to boards/masks (capacity rows each)."""
        cdef float[:, :, :, ::1] bv = boards
        cdef uint8_t[:, :, :, ::1] mv = np.asarray(masks).view(np.uint8)
        if self.c.batch_size() > 0:
            raise ValueError(f"the last batch ({self.c.batch_size()} rows) was not fed yet")
        if bv.shape[0] < self.capacity or mv.shape[0] < self.capacity:
            raise ValueError(f"boards and masks need {self.capacity} rows")
        if tuple(boards.shape[1:]) != BOARD_SHAPE or tuple(masks.shape[1:]) != MASK_SHAPE:
            raise ValueError(f"boards must be (N, {BOARD_SHAPE}), masks (N, {MASK_SHAPE})")
        cdef int n
        with nogil:
            n = self.c.Prepare(&bv[0, 0, 0, 0], &mv[0, 0, 0, 0])
        return n

    def feed(self, priors, values) -> None:
        """Network results for the last batch: priors (n, 220), values (n,)."""
        cdef const float[:, ::1] pv = np.ascontiguousarray(priors, dtype=np.float32).reshape(
            -1, kPolicySize
        )
        cdef const float[::1] vv = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
        cdef int n = self.c.batch_size()
        if pv.shape[0] != n or vv.shape[0] != n:
            raise ValueError(
                f"expected {n} rows (the last batch), got {pv.shape[0]} priors, "
                f"{vv.shape[0]} values"
            )
        if n == 0:
            return
        with nogil:
            self.c.Feed(&pv[0, 0], &vv[0])

    def take_finished(self) -> list:
        """Games finished since the last call, in the order they finished: dicts of
        index, result (player 0's view), score, num_moves, evaluations, cache_hits,
        fast_moves, forced_moves, resigned and `columns`, the game's examples as the
        example store keeps them (hexz_tasks.codec; what ExampleStore.add_game takes), with
        `model_name` as their model's name."""
        cdef vector[GameRecord] games
        cdef GameRecord* g
        with nogil:
            games = self.c.TakeFinished()
        out = []
        for i in range(games.size()):
            g = &games[i]
            out.append({
                "index": g.index,
                "result": g.result,
                "score": (g.score[0], g.score[1]),
                "num_moves": g.num_moves,
                "evaluations": g.evaluations,
                "cache_hits": g.cache_hits,
                "fast_moves": g.fast_moves,
                "forced_moves": g.forced_moves,
                "resigned": g.resigned,
                "columns": codec.from_engine(_engine_columns(g.examples), self.model_name),
            })
        return out

    @property
    def checkpoint(self) -> int:
        """The checkpoint that examples recorded from now on name."""
        return self.c.checkpoint()

    @checkpoint.setter
    def checkpoint(self, int value) -> None:
        """Examples of moves decided from now on record `value` (the model that searched
        them); games in flight continue."""
        self.c.set_checkpoint(value)

    @property
    def games_started(self) -> int:
        return self.c.games_started()

    @property
    def games_finished(self) -> int:
        return self.c.games_finished()

    @property
    def evaluations(self) -> int:
        return self.c.evaluations()

    @property
    def examples_recorded(self) -> int:
        """Examples recorded so far, in finished games and games in progress."""
        return self.c.examples_recorded()

    @property
    def moves_played(self) -> int:
        """Moves played so far (fast moves included), in finished games and games in progress."""
        return self.c.moves_played()

    @property
    def pending(self) -> int:
        """Rows of the last prepared batch not fed yet (0: prepare may run)."""
        return self.c.batch_size()
