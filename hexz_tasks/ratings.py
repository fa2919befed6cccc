"""Bradley-Terry (Elo-scaled) ratings over every stored arena game.

Model: ``P(i beats j) = 1 / (1 + 10 ** ((R_j - R_i) / 400))``; a draw counts as half a
win for each side. The ratings maximise the log-likelihood of all games plus a weak
Gaussian prior (sd ``PRIOR_SD_ELO`` around the anchor), which only keeps ratings finite
when a player won or lost every game. The anchor (checkpoint 0 of the configured model
when it has played, else the first player by name) is fixed at 0. The 95 % intervals
are ``1.96`` standard errors from the inverse of the (negated) Hessian at the optimum,
with the anchor held fixed: they describe each rating relative to the anchor.

Players with the same label are one player whatever the runs per move of their games;
keep the arena's runs per move fixed (``arena_runs_per_move``) for a meaningful curve.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from hexz_tasks.intervals import Z95
from hexz_tasks.keys import Keys
from hexz_tasks.settings import Settings

ELO = 400.0 / math.log(10.0)  # Elo points per natural-log-odds unit
PRIOR_SD_ELO = 2000.0


@dataclass(frozen=True)
class Rating:
    player: str
    elo: float
    se: float  # standard error in Elo (0 for the anchor)
    games: int
    points: float

    @property
    def low(self) -> float:
        return self.elo - Z95 * self.se

    @property
    def high(self) -> float:
        return self.elo + Z95 * self.se


def fit_bradley_terry(
    results: Iterable[tuple[str, str, float]],
    anchor: str | None = None,
    *,
    prior_sd_elo: float = PRIOR_SD_ELO,
    max_iter: int = 100,
) -> dict[str, Rating]:
    """Ratings from (player a, player b, a's points in {0, 0.5, 1}) triples, by Newton's
    method on the penalised log-likelihood (concave, so it converges from 0)."""
    games = list(results)
    players = sorted({p for a, b, _ in games for p in (a, b)})
    if not players:
        return {}
    if anchor not in players:
        anchor = players[0]
    index = {p: i for i, p in enumerate(players)}
    n = len(players)
    count = np.zeros((n, n))  # games between i and j (symmetric)
    won = np.zeros((n, n))  # points i scored against j
    for a, b, pts in games:
        if not 0.0 <= pts <= 1.0:
            raise ValueError(f"points must be in [0, 1], got {pts} for {a} vs {b}")
        i, j = index[a], index[b]
        if i == j:
            continue  # a player against itself says nothing about ratings
        count[i, j] += 1
        count[j, i] += 1
        won[i, j] += pts
        won[j, i] += 1.0 - pts
    free = [i for i in range(n) if players[i] != anchor]
    inv_var = (ELO / prior_sd_elo) ** 2  # the prior in natural units
    theta = np.zeros(n)
    hess = np.zeros((len(free), len(free)))
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(theta[:, None] - theta[None, :])))  # P(i beats j)
        grad = (won - count * p).sum(axis=1) - inv_var * theta
        w = count * p * (1.0 - p)
        h = w - np.diag(w.sum(axis=1)) - inv_var * np.eye(n)
        hess = h[np.ix_(free, free)]
        step = np.linalg.solve(hess, grad[free])
        theta[free] -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    cov = np.linalg.inv(-hess) if free else np.zeros((0, 0))
    se = np.zeros(n)
    se[free] = np.sqrt(np.maximum(np.diag(cov), 0.0))
    return {
        p: Rating(
            p,
            float(theta[i] * ELO),
            float(se[i] * ELO),
            int(count[i].sum()),
            float(won[i].sum()),
        )
        for p, i in index.items()
    }


def game_results(games: Iterable[dict[str, Any]]) -> list[tuple[str, str, float]]:
    return [(g["a"], g["b"], float(g["a_points"])) for g in games]


def fit_stored(
    settings: Settings, r: redis.Redis, keys: Keys
) -> tuple[dict[str, Rating], list[dict[str, Any]]]:
    """Ratings over every stored game, anchored at checkpoint 0; and the games."""
    from hexz_tasks.arena import stored_games
    from hexz_tasks.players import checkpoint_label

    games = stored_games(r, keys)
    anchor = checkpoint_label(settings.model_name, 0)
    return fit_bradley_terry(game_results(games), anchor), games


def checkpoint_of(label: str, model_name: str) -> int | None:
    m = re.fullmatch(r"(.+):(\d+)", label)
    return int(m[2]) if m and m[1] == model_name else None


def stored_metrics(r: redis.Redis, keys: Keys) -> dict[int, dict[str, Any]]:
    return {int(k): json.loads(v) for k, v in r.hgetall(keys.checkpoint_metrics).items()}


def rating_curve(settings: Settings, r: redis.Redis, keys: Keys) -> list[dict[str, Any]]:
    """One entry per checkpoint that has a rating or offline metrics, ascending:
    {"checkpoint", "rating", "low", "high", "se", "games"} for rated ones, plus the
    held-out metrics ({"policy_ce", "value_mse", "value_sign_acc", ...}) where recorded.
    An entry without "rating" has metrics only."""
    ratings, _ = fit_stored(settings, r, keys)
    out: dict[int, dict[str, Any]] = {}
    for label, rt in ratings.items():
        n = checkpoint_of(label, settings.model_name)
        if n is not None:
            out[n] = {
                "checkpoint": n,
                "rating": round(rt.elo, 1),
                "low": round(rt.low, 1),
                "high": round(rt.high, 1),
                "se": round(rt.se, 1),
                "games": rt.games,
            }
    for n, metrics in stored_metrics(r, keys).items():
        out.setdefault(n, {"checkpoint": n}).update(metrics)
    return [out[n] for n in sorted(out)]


def baselines(settings: Settings, r: redis.Redis, keys: Keys) -> list[Rating]:
    """Ratings of the players that are not checkpoints of this model (mcts, random, files)."""
    ratings, _ = fit_stored(settings, r, keys)
    return sorted(
        (rt for rt in ratings.values() if checkpoint_of(rt.player, settings.model_name) is None),
        key=lambda rt: rt.player,
    )


def status_ratings(settings: Settings, r: redis.Redis, keys: Keys) -> list[dict[str, Any]] | None:
    """The status page's hook: the rating curve, or None while nothing is rated."""
    curve = rating_curve(settings, r, keys)
    return curve or None


def format_curve(curve: list[dict[str, Any]], others: list[Rating]) -> str:
    lines = [
        f"{'checkpoint':>10} {'rating':>8} {'95% CI':>17} {'games':>6}"
        f" {'policy CE':>10} {'value MSE':>10} {'sign acc':>9}"
    ]

    def num(entry: dict[str, Any], key: str, fmt: str) -> str:
        v = entry.get(key)
        return format(v, fmt) if v is not None else "-"

    for e in curve:
        ci = f"{e['low']:.0f}..{e['high']:.0f}" if "rating" in e else "-"
        lines.append(
            f"{e['checkpoint']:>10} {num(e, 'rating', '.0f'):>8} {ci:>17} "
            f"{e.get('games', 0):>6} {num(e, 'policy_ce', '.4f'):>10} "
            f"{num(e, 'value_mse', '.4f'):>10} {num(e, 'value_sign_acc', '.3f'):>9}"
        )
    for rt in others:
        ci = f"{rt.low:.0f}..{rt.high:.0f}"
        lines.append(f"{rt.player:>10} {rt.elo:>8.0f} {ci:>17} {rt.games:>6}")
    return "\n".join(lines)


def print_ratings(settings: Settings) -> int:
    """`hexz ratings`: the rating curve over checkpoints (anchored: checkpoint 0 = 0), the
    baselines' ratings, and the offline metrics on the held-out examples."""
    from hexz_tasks.redis_server import connect

    keys = Keys(settings.key_prefix)
    r = connect(settings)
    try:
        r.ping()
    except redis.RedisError as e:
        raise ConnectionError(f"Redis not reachable: {e}") from e
    curve = rating_curve(settings, r, keys)
    others = baselines(settings, r, keys)
    if not curve and not others:
        print("no arena games or checkpoint metrics stored yet")
        return 0
    print(f"Elo ratings of model {settings.model_name!r} (checkpoint 0 = 0), 95% intervals")
    print(format_curve(curve, others))
    return 0
