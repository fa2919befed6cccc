"""Type stubs for the Cython module hexz_tasks._search (workers/_search.pyx)."""

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

BOARD_SHAPE: tuple[int, int, int]
MASK_SHAPE: tuple[int, int, int]
STATS_INTS: int

Evaluate = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

def game_seed(seed: int, index: int) -> int: ...

class Search:
    def __init__(
        self,
        board: Any,
        player: int = 0,
        seed: int | None = 0,
        *,
        uct_c: float = 1.5,
        initial_root_q_value: float = -0.2,
        initial_q_penalty: float = 0.3,
        dirichlet_concentration: float = 0.0,
        random_playouts: int = 0,
        random_playout_weight: float = 1.0,
        end_game_when_stuck: bool = False,
        eval_cache: bool = True,
        fpu_reference: bool = False,
    ) -> None: ...
    def start_move(self, budget: int, *, noise: bool = False, greedy: bool = False) -> None: ...
    def advance(self, boards: npt.NDArray[np.float32], masks: npt.NDArray[np.bool_]) -> bool: ...
    def feed(self, probs: npt.ArrayLike, value: float) -> None: ...
    def run(
        self,
        evaluate: Evaluate,
        budget: int,
        *,
        noise: bool = False,
        greedy: bool = False,
        deadline: float | None = None,
    ) -> int: ...
    def children(self) -> dict[str, np.ndarray]: ...
    def make_move(self, child: int) -> None: ...
    def sample_child(self) -> int: ...
    def most_visited_child(self) -> int: ...
    def board_tensor(self, player: int = 0) -> npt.NDArray[np.float32]: ...
    def stats(self) -> dict[str, Any]: ...
    @property
    def root_player(self) -> int: ...
    @property
    def root_terminal(self) -> bool: ...
    @property
    def root_visits(self) -> int: ...
    @property
    def root_value(self) -> float: ...
    @property
    def root_search_value(self) -> float: ...
    @property
    def num_children(self) -> int: ...
    @property
    def counted_runs(self) -> int: ...
    @property
    def reused_runs(self) -> int: ...
    @property
    def evaluations(self) -> int: ...
    @property
    def cache_hits(self) -> int: ...
    @property
    def tree_size(self) -> int: ...

class SelfPlay:
    n_games: int | None
    capacity: int
    model_name: str | None
    checkpoint: int
    def __init__(
        self,
        n_games: int | None,
        games_in_flight: int,
        seed: int | None = None,
        *,
        runs_per_move: int = 800,
        runs_per_fast_move: int = 100,
        fast_move_prob: float = 0.0,
        max_moves_per_game: int = 200,
        sampled_moves: int | None = None,
        resign_threshold: float | None = None,
        uct_c: float = 1.5,
        initial_root_q_value: float = -0.2,
        initial_q_penalty: float = 0.3,
        dirichlet_concentration: float = 0.0,
        random_playouts: int = 0,
        random_playout_weight: float = 1.0,
        end_game_when_stuck: bool = False,
        eval_cache: bool = True,
        fpu_reference: bool = False,
        model_name: str | None = None,
        checkpoint: int = 0,
    ) -> None: ...
    def prepare(self, boards: npt.NDArray[np.float32], masks: npt.NDArray[np.bool_]) -> int: ...
    def feed(self, priors: npt.ArrayLike, values: npt.ArrayLike) -> None: ...
    def take_finished(self) -> list[dict[str, Any]]:
        """Finished games: index, result, score, num_moves, evaluations, cache_hits,
        fast_moves, resigned and columns (hexz_tasks.codec.Columns)."""
    @property
    def games_started(self) -> int: ...
    @property
    def games_finished(self) -> int: ...
    @property
    def evaluations(self) -> int: ...
    @property
    def examples_recorded(self) -> int: ...
    @property
    def moves_played(self) -> int: ...
    @property
    def pending(self) -> int: ...
    @property
    def checkpoint(self) -> int: ...
    def set_checkpoint(self, checkpoint: int) -> None: ...
