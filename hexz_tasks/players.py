"""Arena player names: what ``hexz arena A B``, the automatic evaluation's baselines
(``HEXZ_ARENA_BASELINES``) and the ratings' labels mean by a player.

- a checkpoint number N of the configured model (label ``<model>:N``);
- a TorchScript file (label ``file:<absolute path>``);
- ``mcts`` / ``mcts:N``: pure MCTS (uniform priors, one random playout per leaf), the
  match's runs per move or N iterations per move;
- ``uct:N`` / ``uct@MS``: the game server's CPU player (plain UCT with random rollouts,
  shared/spec/uct-baseline.md), N iterations or MS milliseconds per move;
- ``random``: uniformly random legal moves.

The last three need no model: they are the baselines. This module imports nothing heavy,
so that settings can check the baseline names at start-up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_MCTS = re.compile(r"^mcts(?::(\d+))?$")
_UCT = re.compile(r"^uct(?::(\d+)|@(\d+))$")
# Bounds of a UCT player's budget per move (its tree also stops growing at Uct::kMaxNodes).
MAX_UCT_ITERATIONS = 1_000_000
MAX_UCT_THINK_MS = 60_000


@dataclass(frozen=True)
class PlayerSpec:
    """What a player argument names; `label` identifies the player in stored games."""

    kind: str  # "checkpoint" | "file" | "mcts" | "uct" | "random"
    label: str
    checkpoint: int | None = None
    path: Path | None = None
    iterations: int | None = None  # mcts and uct:N; None = the match's runs per move (mcts)
    think_ms: int | None = None  # uct@MS only


def parse_baseline(text: str) -> PlayerSpec | None:
    """A player that needs no model (``random``, ``mcts[:N]``, ``uct:N``, ``uct@MS``),
    or None if `text` names none of these; ValueError naming it for a bad budget."""
    text = text.strip()
    if text == "random":
        return PlayerSpec("random", "random")
    if m := _MCTS.match(text):
        iterations = int(m[1]) if m[1] else None
        if iterations is not None and iterations < 1:
            raise ValueError(f"player {text!r}: mcts iterations must be positive")
        return PlayerSpec("mcts", text, iterations=iterations)
    if m := _UCT.match(text):
        if m[1]:
            iterations = int(m[1])
            if not 1 <= iterations <= MAX_UCT_ITERATIONS:
                raise ValueError(
                    f"player {text!r}: uct iterations must be in 1..{MAX_UCT_ITERATIONS}"
                )
            return PlayerSpec("uct", f"uct:{iterations}", iterations=iterations)
        think_ms = int(m[2])
        if not 1 <= think_ms <= MAX_UCT_THINK_MS:
            raise ValueError(f"player {text!r}: uct think time must be in 1..{MAX_UCT_THINK_MS} ms")
        return PlayerSpec("uct", f"uct@{think_ms}", think_ms=think_ms)
    return None


def parse_player(text: str, model_name: str) -> PlayerSpec:
    """Parses a player argument; ValueError naming the argument if it is none of the kinds."""
    text = text.strip()
    if (spec := parse_baseline(text)) is not None:
        return spec
    if text.isdigit():
        n = int(text)
        return PlayerSpec("checkpoint", checkpoint_label(model_name, n), checkpoint=n)
    path = Path(text).expanduser()
    if path.is_file():
        return PlayerSpec("file", f"file:{path.resolve()}", path=path)
    raise ValueError(
        f"player {text!r} is not a checkpoint number, an existing TorchScript file, "
        "'mcts', 'mcts:N', 'uct:N', 'uct@MS' or 'random'"
    )


def checkpoint_label(model_name: str, checkpoint: int) -> str:
    return f"{model_name}:{checkpoint}"
