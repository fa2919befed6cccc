"""Self-play speed: network evaluations and examples per second, against bare inference.

Plays self-play games with play_games at the original settings (800 runs per move,
fast moves with probability 0.5 at 100 runs, Dirichlet 0.35) with the conv2d 5x128
network (the original project's fixture model, the same architecture), and measures
in the same run, interleaved in rounds so that a busy machine affects all alike:

- selfplay_evals_per_s: network evaluations per second of self-play (C++ search,
  batching and Python glue included);
- bare_evals_per_s: the same Evaluator on batches of the same size (games in flight),
  same threads; ratio = selfplay / bare;
- reference_evals_per_s: the fixture model as loaded, .eval(), torch.inference_mode(),
  batch 64, same threads: the baseline of issue 4.

Examples per second = selfplay_evals_per_s / evals_per_example. Games at 800 runs take
about 30,000 evaluations each, so a run of minutes cannot finish the hundreds of games
in flight (and the first moves are all full moves); evals_per_example is therefore
measured on complete games with the same search settings and a tiny network of the
same contract, played in this run (--epe-games N; --epe-real plays them with the bench
network instead, which takes many minutes: 4 such games gave 782 evaluations per
example where the tiny network gives 740-760). examples_per_1000_reference_evals
= examples_per_s / reference_evals_per_s * 1000 (target >= 1.25; ratio target >= 0.9).

    python -m bench.selfplay [--quick] [--games-in-flight N] [--threads T] [--modes]

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hexz_tasks.inference import MODES, Evaluator, sample_positions
from hexz_tasks.model import ARCHITECTURES, HexzNet, ModelParams
from hexz_tasks.progress import bar
from hexz_tasks.selfplay import play_games
from hexz_tasks.settings import Settings

FIXTURE = Path(__file__).resolve().parents[1] / "tests/data/original-conv2d5-scriptmodule.pt"
ORIGINAL = {"examples_per_s": 1.7, "reference_evals_per_s": 2746}  # issue 4: 0.62 per 1000


def rate(call, batch: int, seconds: float) -> float:
    """Evaluations per second of `call()` on batches of `batch` for about `seconds`."""
    call()
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        call()
        n += batch
    return n / elapsed


def reference_rate(model: torch.jit.ScriptModule, boards, masks, seconds: float) -> float:
    b, m = torch.from_numpy(boards[:64]), torch.from_numpy(masks[:64])

    def call() -> None:
        with torch.inference_mode():
            model(b, m)

    return rate(call, 64, seconds)


def evals_per_example(
    settings: Settings, games: int, seed: int, evaluator: Evaluator | None = None
) -> dict[str, Any]:
    """Evaluations per example over complete games, by default with a tiny network (1x8)."""
    torch.manual_seed(seed)
    network = "bench network" if evaluator else "tiny conv2d 1x8"
    evaluator = evaluator or Evaluator(HexzNet("conv2d", 1, 8))
    evals = examples = moves = hits = 0
    played = play_games(evaluator, games, settings.replace(games_in_flight=games), seed=seed)
    for g in bar(games, "evals per example", unit="game", iterable=played):
        evals += g.evaluations
        hits += g.cache_hits
        examples += g.num_examples
        moves += g.num_moves
    return {
        "evals_per_example": evals / examples,
        "epe_network": network,
        "epe_games": games,
        "epe_moves_per_game": moves / games,
        "epe_examples_per_game": examples / games,
        "epe_cache_hit_fraction": hits / (hits + evals),
    }


def compare_modes(
    model: Any, params: ModelParams, boards, masks, batch: int, seconds: float
) -> dict[str, Any]:
    """Bare evals/s and deviation from the plain eval model of every inference mode."""
    out: dict[str, Any] = {}
    for mode in MODES:
        if mode == "auto":
            continue
        try:
            start = time.perf_counter()
            ev = Evaluator(model, mode=mode, params=params)
            build_s = time.perf_counter() - start
            ev(boards[:batch], masks[:batch])  # compile / warm up
            dev = ev.deviation()
            out[mode] = {
                "evals_per_s": round(
                    rate(lambda ev=ev: ev(boards[:batch], masks[:batch]), batch, seconds)
                ),
                "policy_dev": dev[0],
                "value_dev": dev[1],
                "build_s": round(build_s, 1),
                "used": ev.mode,
            }
        except Exception as e:  # a mode unsupported here is reported, not fatal
            out[mode] = {"error": f"{type(e).__name__}: {e}"[:200]}
        print(f"mode {mode}: {out[mode]}", file=sys.stderr, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="under a minute")
    ap.add_argument("--games-in-flight", type=int, default=128)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--mode", choices=MODES, default="auto", help="Evaluator mode")
    ap.add_argument("--device", default="cpu", help="device of the self-play network")
    ap.add_argument("--model-type", choices=list(ARCHITECTURES), default="conv2d")
    ap.add_argument("--blocks", type=int, default=5)
    ap.add_argument("--filters", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--selfplay-s", type=float, default=None, help="self-play seconds per round")
    ap.add_argument("--epe-games", type=int, default=None)
    ap.add_argument(
        "--epe-real", action="store_true", help="evals per example with the bench network (slow)"
    )
    ap.add_argument("--end-game-when-stuck", action="store_true")
    ap.add_argument("--no-eval-cache", action="store_true")
    ap.add_argument("--modes", action="store_true", help="also compare all inference modes")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rounds = args.rounds or (3 if args.quick else 8)
    selfplay_s = args.selfplay_s or (3.0 if args.quick else 15.0)
    measure_s = 1.5 if args.quick else 5.0
    epe_games = args.epe_games or (2 if args.quick else 16)
    torch.set_num_threads(args.threads)

    settings = Settings(
        runs_per_move=800,
        runs_per_fast_move=100,
        fast_move_prob=0.5,
        dirichlet_concentration=0.35,
        games_in_flight=args.games_in_flight,
        end_game_when_stuck=args.end_game_when_stuck,
        eval_cache=not args.no_eval_cache,
    )
    reference = torch.jit.load(FIXTURE).eval()
    shape = (args.model_type, args.blocks, args.filters)
    if shape == ("conv2d", 5, 128):
        network, model = "conv2d 5x128 (original fixture weights)", FIXTURE
    else:
        torch.manual_seed(args.seed)
        network, model = (
            f"{args.model_type} {args.blocks}x{args.filters} (random weights)",
            HexzNet(*shape),
        )
    # The fixture file names no ModelParams (the original project wrote it): say them.
    params = ModelParams(*shape)
    evaluator = Evaluator(model, args.device, mode=args.mode, params=params)
    batch = args.games_in_flight
    boards, masks = sample_positions(max(64, batch), seed=args.seed)
    result: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": args.threads,
        "games_in_flight": batch,
        "inference_mode": evaluator.mode,
        "network": network,
        "device": args.device,
    }
    if args.modes:
        result["modes"] = compare_modes(model, params, boards, masks, batch, measure_s)

    refs: list[float] = []
    bares: list[float] = []
    sp = {"evals": 0, "seconds": 0.0, "inference_s": 0.0, "steps": 0}
    state: dict[str, Any] = {"round": 0, "start": None, "evals0": 0, "inf0": 0.0}

    shown = bar(rounds, "self-play rounds", unit="round")

    def measure_baselines() -> None:
        refs.append(reference_rate(reference, boards, masks, measure_s))
        bares.append(rate(lambda: evaluator(boards[:batch], masks[:batch]), batch, measure_s))
        shown.write(
            f"round {state['round']}: reference {refs[-1]:.0f} evals/s, "
            f"bare {bares[-1]:.0f} evals/s",
            file=sys.stderr,
        )

    def on_step(stats: dict[str, Any]) -> bool:
        now = time.perf_counter()
        if state["start"] is None:  # the first batch warms up; time from here
            state.update(start=now, evals0=stats["evaluations"], inf0=stats["inference_s"])
            return False
        if now - state["start"] < selfplay_s:
            return False
        sp["evals"] += stats["evaluations"] - state["evals0"]
        sp["seconds"] += now - state["start"]
        sp["inference_s"] += stats["inference_s"] - state["inf0"]
        shown.write(
            f"round {state['round']}: self-play {sp['evals'] / sp['seconds']:.0f} evals/s "
            f"so far, {stats['examples_recorded']} examples recorded",
            file=sys.stderr,
        )
        state["round"] += 1
        shown.update()
        if state["round"] >= rounds:
            result["examples_recorded"] = stats["examples_recorded"]
            return True
        measure_baselines()
        state.update(
            start=time.perf_counter(), evals0=stats["evaluations"], inf0=stats["inference_s"]
        )
        return False

    with shown:
        measure_baselines()
        for _ in play_games(evaluator, 10**9, settings, seed=args.seed, on_step=on_step):
            pass
        measure_baselines()
    epe = evals_per_example(settings, epe_games, args.seed, evaluator if args.epe_real else None)

    selfplay = sp["evals"] / sp["seconds"]
    bare = float(np.mean(bares))
    ref = float(np.mean(refs))
    examples_per_s = selfplay / epe["evals_per_example"]
    result.update(
        selfplay_evals_per_s=round(selfplay, 1),
        bare_evals_per_s=round(bare, 1),
        ratio=round(selfplay / bare, 3),
        inference_share_of_selfplay=round(sp["inference_s"] / sp["seconds"], 3),
        reference_evals_per_s=round(ref, 1),
        reference_rounds=[round(r) for r in refs],
        bare_rounds=[round(b) for b in bares],
        examples_per_s=round(examples_per_s, 3),
        games_per_s=round(examples_per_s / epe["epe_examples_per_game"], 4),
        examples_per_1000_reference_evals=round(examples_per_s / ref * 1000, 3),
        original_examples_per_1000_reference_evals=round(
            ORIGINAL["examples_per_s"] / ORIGINAL["reference_evals_per_s"] * 1000, 3
        ),
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        selfplay_seconds=round(sp["seconds"], 1),
        **{k: round(v, 3) if isinstance(v, float) else v for k, v in epe.items()},
    )
    print(
        f"self-play {selfplay:.0f} evals/s, bare {bare:.0f} evals/s (ratio {selfplay / bare:.2f})"
    )
    print(f"reference {ref:.0f} evals/s; {epe['evals_per_example']:.0f} evals per example")
    print(
        f"{examples_per_s:.2f} examples/s, "
        f"{result['examples_per_1000_reference_evals']:.2f} per 1000 reference evals"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
