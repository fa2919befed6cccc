"""Arena matches: player A against player B on the same random boards, seats swapped.

Games ``2k`` and ``2k + 1`` start from the same random board (pair ``k``); A is player 0
(moves first) in the even game and player 1 in the odd one. The pair is the unit of the
match score's confidence interval, so the luck of the board cancels out.

Players (hexz_tasks.players): a checkpoint number (from the model repository on disk,
else the TorchScript bytes published in Redis), a TorchScript file, ``mcts`` (pure MCTS:
uniform priors, one random playout per leaf, ``runs`` iterations per move; ``mcts:N``
for N iterations), ``uct:N`` / ``uct@MS`` (the game server's CPU player, plain UCT with
random rollouts, shared/spec/uct-baseline.md: N iterations or MS milliseconds per move)
and ``random`` (uniformly random legal moves).

Every game of a match advances together: each step runs every game's search up to its
next leaf, then evaluates the leaves of each neural player in one batch, and plays the
moves of the UCT players (a thread per core, the GIL released). Each move of a neural
or ``mcts`` player is a fresh search (no tree reuse) from the player to move, greedy
PUCT descent without noise, like the CPU player; the move played is the most visited
child, or with ``temperature > 0`` a child drawn with probability proportional to
``visits ** (1 / temperature)``. A UCT player plays its highest-Q child, as the spec
says. A position with one legal move is played at once, without a search. A match is
deterministic for its seed, except with ``uct@MS`` players (their iterations depend on
the machine's speed).

A game ends when neither player can move, when the player to move is stuck and behind
(the result cannot change any more), or after ``max_moves_per_game`` moves.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis

from hexz_tasks import progress
from hexz_tasks._search import Search, game_seed
from hexz_tasks._uct import UctSearch
from hexz_tasks.engine import Board
from hexz_tasks.intervals import paired_score
from hexz_tasks.keys import Keys
from hexz_tasks.layout import BOARD_SHAPE, MASK_SHAPE, POLICY_SIZE
from hexz_tasks.players import PlayerSpec, parse_player
from hexz_tasks.selfplay import search_kwargs
from hexz_tasks.settings import Settings

_UNIFORM = np.zeros(POLICY_SIZE, dtype=np.float32)  # all-zero probs = uniform priors
_UCT_TURN = -1  # play_match's advance(): a UCT player is to move
# Salts, so that boards, searches and random players draw from unrelated streams.
_SEARCH_SALT = 0x5EA2C4
_RANDOM_SALT = 0xD1CE


@dataclass
class Player:
    """A loaded player: `evaluator` for neural players, else None."""

    spec: PlayerSpec
    evaluator: Any = None  # inference.Evaluator

    @property
    def label(self) -> str:
        return self.spec.label


def load_player(
    spec: PlayerSpec,
    settings: Settings,
    r: redis.Redis | None = None,
    keys: Keys | None = None,
) -> Player:
    if spec.kind in ("mcts", "uct", "random"):
        return Player(spec)
    from hexz_tasks.inference import Evaluator

    if spec.kind == "file":
        assert spec.path is not None
        return Player(spec, Evaluator(spec.path, settings.device))
    from hexz_tasks.model_source import checkpoint_bytes

    assert spec.checkpoint is not None
    data = checkpoint_bytes(settings, spec.checkpoint, r, keys)
    return Player(spec, Evaluator(data, settings.device))


# ------------------------------------------------------------------ match scores


def points(result: int) -> float:
    """Points of player 0 for a result from player 0's view."""
    return 1.0 if result > 0 else 0.5 if result == 0 else 0.0


@dataclass
class MatchResult:
    match_id: str
    a: str
    b: str
    runs: int
    seed: int
    games: list[dict[str, Any]] = field(default_factory=list)
    # Per player (A, B): CPU seconds spent on its searched moves, and their number
    # (moves played at once, forced or random, cost nothing and are not counted).
    cpu_s: list[float] = field(default_factory=lambda: [0.0, 0.0])
    searched_moves: list[int] = field(default_factory=lambda: [0, 0])

    def cpu_ms_per_move(self) -> list[float | None]:
        """Each player's CPU milliseconds per searched move: its searches and network
        batches, and for UCT players the search thread's time."""
        return [
            1000.0 * s / n if n else None
            for s, n in zip(self.cpu_s, self.searched_moves, strict=True)
        ]

    def pair_scores(self) -> list[float]:
        by_pair: dict[int, list[float]] = {}
        for g in self.games:
            by_pair.setdefault(g["pair"], []).append(g["a_points"])
        return [sum(v) / len(v) for _, v in sorted(by_pair.items()) if len(v) == 2]

    def summary(self) -> dict[str, Any]:
        pairs = self.pair_scores()
        score, low, high = paired_score(pairs) if pairs else (float("nan"), 0.0, 1.0)
        pts = [g["a_points"] for g in self.games]
        return {
            "match": self.match_id,
            "a": self.a,
            "b": self.b,
            "runs": self.runs,
            "seed": self.seed,
            "games": len(self.games),
            "pairs": len(pairs),
            "a_wins": sum(p == 1.0 for p in pts),
            "draws": sum(p == 0.5 for p in pts),
            "a_losses": sum(p == 0.0 for p in pts),
            "score": score,
            "ci": [low, high],
            "cpu_ms_per_move": [None if x is None else round(x, 2) for x in self.cpu_ms_per_move()],
            "finished": time.time(),
        }


# ------------------------------------------------------------------ playing


class _Game:
    """One arena game: the board, whose turn it is, and the current move's search."""

    def __init__(self, index: int, seed: int, seats: tuple[int, int]) -> None:
        self.index = index
        self.pair = index // 2
        self.board_seed = game_seed(seed, self.pair)
        self.board = Board.random(self.board_seed)
        self.seats = seats  # seats[p] = 0 (player A) or 1 (player B) playing as player p
        self.to_move = 0
        self.moves = 0
        self.search: Search | None = None
        self.search_seed = game_seed(seed ^ _SEARCH_SALT, index)
        self.rng = np.random.default_rng([seed, index, _RANDOM_SALT])

    def next_mover(self, max_moves: int) -> bool:
        """Sets to_move to the player who moves next; False if the game is over."""
        if self.moves >= max_moves:
            return False
        p = self.to_move
        if not self.board.has_legal_move(p):
            score = self.board.score()
            if score[p] < score[1 - p]:  # stuck and behind: the result is decided
                return False
            p = 1 - p
            if not self.board.has_legal_move(p):
                return False
        self.to_move = p
        return True

    def play(self, move: tuple[int, int, int, int]) -> None:
        self.board.make_move(self.to_move, move)
        self.to_move = 1 - self.to_move
        self.moves += 1
        self.search = None


def _choose(children: dict[str, np.ndarray], temperature: float, g: _Game, best: int) -> int:
    if temperature <= 0:
        return best
    visits = children["visits"].astype(np.float64)
    if visits.sum() <= 0:
        return best
    w = visits ** (1.0 / temperature)
    return int(g.rng.choice(len(w), p=w / w.sum()))


def play_match(
    a: Player,
    b: Player,
    games: int,
    runs: int,
    seed: int,
    settings: Settings,
    *,
    temperature: float | None = None,
    match_id: str | None = None,
    on_game: Callable[[dict[str, Any]], None] | None = None,
    uct_threads: int | None = None,
) -> MatchResult:
    """Plays `games` games (an even number: pairs of seats) of A against B.

    `runs` is the search budget per move of neural players and the default iterations
    of an ``mcts`` player. `on_game(record)` is called as each game finishes (to store it).
    UCT players' moves run on `uct_threads` threads (default: inference_threads, else
    one per core of this process).
    """
    if games < 2 or games % 2:
        raise ValueError(
            f"games must be a positive even number (each board is played twice), got {games}"
        )
    if runs < 1:
        raise ValueError(f"runs per move must be positive, got {runs}")
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    temperature = settings.arena_temperature if temperature is None else temperature
    players = (a, b)
    budgets = tuple(p.spec.iterations or runs for p in players)
    # The search settings of self-play, without noise; pure MCTS: one random playout
    # is the value of each leaf.
    kwargs = {**search_kwargs(settings), "dirichlet_concentration": 0.0}
    pure = {**kwargs, "random_playouts": 1, "random_playout_weight": 1.0}
    search_kw = tuple(pure if p.spec.kind == "mcts" else kwargs for p in players)
    boards = [np.zeros((games, *BOARD_SHAPE), dtype=np.float32) for _ in players]
    masks = [np.zeros((games, *MASK_SHAPE), dtype=bool) for _ in players]
    result = MatchResult(match_id or uuid.uuid4().hex, a.label, b.label, runs, seed)
    max_moves = settings.max_moves_per_game

    def finish(g: _Game) -> None:
        score = g.board.score()
        res = g.board.result()
        p0 = players[g.seats[0]].label
        p1 = players[g.seats[1]].label
        a_points = points(res) if g.seats[0] == 0 else 1.0 - points(res)
        record = {
            "match": result.match_id,
            "game": g.index,
            "pair": g.pair,
            "board_seed": g.board_seed,
            "a": a.label,
            "b": b.label,
            "first": p0,
            "second": p1,
            "runs": runs,
            "score": [int(score[0]), int(score[1])],
            "result": int(res),
            "winner": p0 if res > 0 else p1 if res < 0 else None,
            "a_points": a_points,
            "moves": g.moves,
            "time": time.time(),
        }
        result.games.append(record)
        if on_game is not None:
            on_game(record)

    def advance(g: _Game) -> int | None:
        """Runs game g until a neural player's leaf needs the network (returns that
        player's index, the leaf written to row g.index), a UCT player is to move
        (returns _UCT_TURN) or the game ends (None)."""
        while True:
            if g.search is None:
                if not g.next_mover(max_moves):
                    finish(g)
                    return None
                who = g.seats[g.to_move]
                kind = players[who].spec.kind
                if kind == "random" or g.board.num_legal_moves(g.to_move) == 1:
                    moves = g.board.legal_moves(g.to_move)
                    g.play(moves[int(g.rng.integers(len(moves)))])
                    continue
                result.searched_moves[who] += 1
                if kind == "uct":
                    return _UCT_TURN
                g.search = Search(
                    g.board, g.to_move, game_seed(g.search_seed, g.moves), **search_kw[who]
                )
                g.search.start_move(budgets[who], greedy=True)
            who = g.seats[g.to_move]
            i = g.index
            if g.search.advance(boards[who][i : i + 1], masks[who][i : i + 1]):
                if players[who].evaluator is None:
                    g.search.feed(_UNIFORM, 0.0)
                    continue
                return who
            children = g.search.children()
            child = _choose(children, temperature, g, g.search.most_visited_child())
            g.play(tuple(int(x) for x in children["moves"][child]))  # type: ignore[arg-type]

    def uct_move(g: _Game) -> tuple[tuple[int, int, int, int], float]:
        """The UCT player's move in game g, and the thread's CPU seconds for it."""
        start = time.thread_time()
        spec = players[g.seats[g.to_move]].spec
        uct = UctSearch(game_seed(g.search_seed, g.moves))
        uct.search(g.board, g.to_move, spec.iterations or 0, spec.think_ms or 0)
        return uct.best_move(), time.thread_time() - start

    searchers = [w for w, p in enumerate(players) if p.spec.kind not in ("uct", "random")]

    active = [_Game(i, seed, (0, 1) if i % 2 == 0 else (1, 0)) for i in range(games)]
    threads = uct_threads or settings.inference_threads or len(os.sched_getaffinity(0))
    with ThreadPoolExecutor(threads, thread_name_prefix="hexz-uct") as pool:
        while active:
            waiting: tuple[list[_Game], list[_Game]] = ([], [])
            uct_turns: list[_Game] = []
            start = time.process_time()
            for g in active:
                who = advance(g)
                if who == _UCT_TURN:
                    uct_turns.append(g)
                elif who is not None:
                    waiting[who].append(g)
            for w in searchers:  # their searches' share of the loop
                result.cpu_s[w] += (time.process_time() - start) / len(searchers)
            for g, (move, cpu) in zip(uct_turns, pool.map(uct_move, uct_turns), strict=True):
                result.cpu_s[g.seats[g.to_move]] += cpu
                g.play(move)
            for who, batch in enumerate(waiting):
                if not batch:
                    continue
                rows = [g.index for g in batch]
                start = time.process_time()
                priors, values = players[who].evaluator(boards[who][rows], masks[who][rows])
                result.cpu_s[who] += time.process_time() - start
                for k, g in enumerate(batch):
                    assert g.search is not None
                    g.search.feed(priors[k], float(values[k]))
            active = waiting[0] + waiting[1] + uct_turns
    result.games.sort(key=lambda r: r["game"])
    return result


# ------------------------------------------------------------------ storing


def store_game(r: redis.Redis, keys: Keys, record: dict[str, Any]) -> None:
    """Stores one game; idempotent (keyed by match id and game number)."""
    r.hset(keys.arena_games, f"{record['match']}:{record['game']}", json.dumps(record))


def store_summary(r: redis.Redis, keys: Keys, summary: dict[str, Any]) -> None:
    r.hset(keys.arena_matches, summary["match"], json.dumps(summary))


def stored_games(r: redis.Redis, keys: Keys) -> list[dict[str, Any]]:
    return [json.loads(v) for v in r.hvals(keys.arena_games)]


def stored_matches(r: redis.Redis, keys: Keys) -> dict[str, dict[str, Any]]:
    return {
        (k.decode() if isinstance(k, bytes) else k): json.loads(v)
        for k, v in r.hgetall(keys.arena_matches).items()
    }


def run_match(
    a: str,
    b: str,
    games: int,
    runs: int,
    seed: int,
    settings: Settings,
    r: redis.Redis | None,
    keys: Keys,
    *,
    match_id: str | None = None,
    on_game: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Parses and loads both players, plays the match, stores every game as it finishes
    and the summary at the end (when `r` is given); returns the summary. `on_game(record)`
    is called after each game is stored."""
    players = [load_player(parse_player(p, settings.model_name), settings, r, keys) for p in (a, b)]
    if settings.inference_threads > 0:
        import torch

        torch.set_num_threads(settings.inference_threads)

    def finished(record: dict[str, Any]) -> None:
        if r is not None:
            store_game(r, keys, record)
        if on_game is not None:
            on_game(record)

    result = play_match(*players, games, runs, seed, settings, match_id=match_id, on_game=finished)
    summary = result.summary()
    if r is not None:
        store_summary(r, keys, summary)
    return summary


def format_summary(s: dict[str, Any]) -> str:
    return (
        f"{s['a']} vs {s['b']}: score {s['score']:.3f} "
        f"(95% CI {s['ci'][0]:.3f}..{s['ci'][1]:.3f}, {s['pairs']} pairs), "
        f"+{s['a_wins']} ={s['draws']} -{s['a_losses']} in {s['games']} games "
        f"at {s['runs']} runs per move"
    )


def _reachable_redis(settings: Settings) -> redis.Redis | None:
    """The project's Redis if it answers within a second, else None."""
    from hexz_tasks.redis_server import connect, redis_url

    probe = redis.Redis.from_url(redis_url(settings), socket_connect_timeout=1, socket_timeout=2)
    try:
        probe.ping()
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return None
    finally:
        probe.close()
    return connect(settings)


def run_arena_cli(a: str, b: str, games: int, runs: int, seed: int, settings: Settings) -> int:
    """`hexz arena`: plays the match, prints its score, stores the games in Redis if reachable."""
    keys = Keys(settings.key_prefix)
    specs = [parse_player(p, settings.model_name) for p in (a, b)]  # fail fast on a bad argument
    if games < 2 or games % 2:
        raise ValueError(f"--games must be a positive even number, got {games}")
    if runs < 1:
        raise ValueError(f"--runs must be positive, got {runs}")
    if seed < 0:
        raise ValueError(f"--seed must be >= 0, got {seed}")
    r = _reachable_redis(settings)
    if r is None:
        if any(s.kind == "checkpoint" for s in specs):
            print("hexz arena: Redis not reachable; loading checkpoints from disk", file=sys.stderr)
        print("hexz arena: Redis not reachable; the games will not be stored", file=sys.stderr)
    with progress.bar(games, f"{a} vs {b}", unit="game") as shown:
        summary = run_match(
            a, b, games, runs, seed, settings, r, keys, on_game=lambda _: shown.update()
        )
    print(format_summary(summary))
    if r is not None:
        print(f"stored {summary['games']} games as match {summary['match']} in {keys.arena_games}")
    return 0
