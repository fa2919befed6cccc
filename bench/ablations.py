"""The ablation study of issue 14: learning-benchmark runs back to back, and their tables.

Each run is bench/learning.py with flags (RUNS): the recommended configuration (`hexz run`'s
quick start, QUICKSTART in hexz_tasks/launcher.py), the same with the ablations' matches,
the same without one of its parts, 30 minutes each, and one 2-hour run of the recommended
configuration. Each run writes
RESULTS/<name>.json (the benchmark's JSON object) and RESULTS/<name>.log; a run whose
JSON exists is skipped, so an interrupted study resumes where it stopped. Run it on a
quiet machine: the pipeline's throughput (and so the strength reached in the time)
depends on the load, the arena's scores do not.

    python bench/ablations.py list                   # the command of each run
    python bench/ablations.py run RESULTS [NAME...]  # all runs (~9 hours) or the named
    python bench/ablations.py table RESULTS          # README tables from RESULTS/*.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LEARNING = ROOT / "bench" / "learning.py"

# name -> (what the run changes, its bench/learning.py flags); the first is the reference.
RUNS: dict[str, tuple[str, list[str]]] = {
    "recommended": ("the quick start (recommended)", []),
    # The quick start again with the ablations' matches: their reference when the study
    # runs on a machine of another speed than the recommended run's.
    "reference": ("the quick start, the ablations' matches", []),
    "no-symmetry": ("without symmetry", ["--symmetry", "off"]),
    "fpu-reference": ("the reference's first-play urgency", ["--fpu", "reference"]),
    "no-value-mix": ("value target: the result only", ["--set", "VALUE_TARGET_Q_WEIGHT=0"]),
    "no-fast-moves": ("without fast moves", ["--fast-moves", "off"]),
    "no-playout-mix": ("leaf value: the network's only", ["--set", "RANDOM_PLAYOUTS=0"]),
    "two-hours": ("the quick start, 2 hours", ["--minutes", "120"]),
}
# The final matches, in table order: JSON key, column title.
MATCHES = [
    ("vs_uct:800", "vs uct:800"),
    ("vs_uct:3200", "vs uct:3200"),
    ("vs_uct@T", "vs uct@T"),
    ("vs_checkpoint0", "vs checkpoint 0"),
    ("vs_mcts", "vs pure MCTS"),
    # The network without the random playouts, and checkpoint 0 with them (runs with
    # RANDOM_PLAYOUTS only): what the score against uct:800 owes to each.
    ("network_alone_vs_uct:800", "network alone vs uct:800"),
    ("checkpoint0_vs_uct:800", "checkpoint 0 + search vs uct:800"),
]


# The ablations are compared on fewer games and matches than the full runs (about 12
# instead of 45 minutes of matches each): the matches that depend on what training did.
ABLATION_MATCHES = ["--matches", "ablation", "--games", "100"]
FULL_RUNS = ("recommended", "two-hours")


def command(name: str, results: Path, python: str = sys.executable) -> list[str]:
    _, flags = RUNS[name]
    learning = str(LEARNING.relative_to(ROOT))  # run from ROOT
    matches = [] if name in FULL_RUNS else ABLATION_MATCHES
    return [python, learning, *flags, *matches, "--out", str(results / f"{name}.json")]


def run(results: Path, names: list[str]) -> int:
    results.mkdir(parents=True, exist_ok=True)
    for name in names:
        out = results / f"{name}.json"
        if out.exists():
            print(f"{name}: {out} exists, skipped", flush=True)
            continue
        cmd = command(name, results)
        print(f"{name}: {shlex.join(cmd)}", flush=True)
        with open(results / f"{name}.log", "ab") as log:
            code = subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        if code != 0:
            print(f"{name}: exit status {code}, see {results / f'{name}.log'}", flush=True)
            return code
    return 0


def cell(match: dict[str, Any] | None) -> str:
    """A score with its 95 % interval; bold where the lower end is above 0.5."""
    if match is None:
        return "-"
    low, high = match["ci"]
    score = f"{match['score']:.3f}"
    return f"{f'**{score}**' if low > 0.5 else score} ({low:.3f}-{high:.3f})"


def load(results: Path) -> list[tuple[str, dict[str, Any]]]:
    """(name, JSON) of each result file, RUNS' order first, then any other by name."""
    files = {p.stem: p for p in results.glob("*.json")}
    order = [n for n in RUNS if n in files] + sorted(n for n in files if n not in RUNS)
    return [(n, json.loads(files[n].read_text())) for n in order]


def flags(argv: list[str]) -> list[str]:
    """A run's bench/learning.py arguments that change what it measures (not where the
    files go)."""
    out, skip = [], False
    for arg in argv:
        if arg in ("--out", "--data-dir"):
            skip = True
        elif not skip:
            out.append(arg)
        else:
            skip = False
    return out


def ablation_table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    head = ["run", "minutes", "newest checkpoint, examples", *(title for _, title in MATCHES)]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, r in rows:
        label = RUNS[name][0] if name in RUNS else f"`{shlex.join(flags(r.get('argv', [])))}`"
        cells = [
            label,
            f"{r['pipeline_s'] / 60:.0f}",
            f"{r['newest_checkpoint']}, {r['examples']:,}",
            *(cell(r.get(key)) for key, _ in MATCHES),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    think = sorted({r["uct_think_ms"] for _, r in rows if "uct_think_ms" in r})
    games = " or ".join(str(g) for g in sorted({r.get("games_per_match", 200) for _, r in rows}))
    lines.append("")
    lines.append(
        f"The network at {rows[0][1].get('net_runs_vs_uct', 800)} runs per move against UCT, "
        f"at {rows[0][1].get('runs_per_move', 64)} against checkpoint 0 and pure MCTS; "
        f"{games} games per match, paired seats, 95% "
        f"intervals; T (ms, the network's CPU time per move): {', '.join(map(str, think))}. "
        "Bold: the lower end above 0.5."
    )
    return "\n".join(lines)


def curve_table(name: str, r: dict[str, Any], columns: int = 12) -> str:
    """The rating curve (about `columns` checkpoints spread over the run) as a table."""
    curve = [e for e in r.get("rating_curve", []) if e.get("rating") is not None]
    if not curve:
        return f"{name}: no rated checkpoints"
    step = max(1, -(-len(curve) // columns))
    picked = curve[::step] if curve[::step][-1] is curve[-1] else [*curve[::step], curve[-1]]

    def at(e: dict[str, Any]) -> str:
        return (
            f"{e['checkpoint']} ({e['minute']:.0f})"
            if e.get("minute") is not None
            else str(e["checkpoint"])
        )

    others = r.get("elo_baselines", {})
    head = ["checkpoint (minute)", *map(at, picked), *others]
    elo = ["Elo", *(f"{e['rating']:.0f}" for e in picked), *(str(v) for v in others.values())]
    ci = ["95% CI", *(f"{e['low']:.0f}..{e['high']:.0f}" for e in picked)]
    ci += ["-"] * len(others)
    rows = [head, ["---"] * len(head), elo, ci]
    return f"{name}:\n" + "\n".join("| " + " | ".join(row) + " |" for row in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    sub.add_parser("list", help="print the command of each run")
    run_p = sub.add_parser("run", help="run the named runs (default: all) one after another")
    run_p.add_argument("results", type=Path)
    run_p.add_argument("names", nargs="*", metavar="NAME", help=", ".join(RUNS))
    table_p = sub.add_parser("table", help="the ablation table and the rating curves")
    table_p.add_argument("results", type=Path)
    args = ap.parse_args(argv)
    if args.what == "list":
        for name in RUNS:
            print(shlex.join(command(name, Path("results"), "python")))
        return 0
    if args.what == "run":
        if unknown := [n for n in args.names if n not in RUNS]:
            ap.error(f"unknown run(s) {', '.join(unknown)}; known: {', '.join(RUNS)}")
        return run(args.results.resolve(), args.names or list(RUNS))
    rows = load(args.results)
    if not rows:
        raise SystemExit(f"no result files (*.json) in {args.results}")
    print(ablation_table(rows))
    for name, r in rows:
        print()
        print(curve_table(name, r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
