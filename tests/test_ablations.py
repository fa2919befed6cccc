"""bench/ablations.py: the commands of the study and the README tables from its JSON files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import ablations


def match(score: float, low: float, high: float) -> dict:
    return {"score": score, "ci": [low, high], "cpu_ms_per_move": [60.0, 1.5]}


def curve_entry(n: int) -> dict:
    elo = 20.0 * n
    return {"checkpoint": n, "minute": n * 0.6, "rating": elo, "low": elo - 150, "high": elo + 150}


def result(argv: list[str], score: float, low: float) -> dict:
    return {
        "argv": argv,
        "pipeline_s": 1803,
        "checkpoints": 23,  # on disk, after retention
        "newest_checkpoint": 51,
        "examples": 493604,
        "vs_uct:800": match(score, low, low + 0.14),
        "vs_uct:3200": match(0.31, 0.25, 0.38),
        "vs_uct@T": match(0.2, 0.15, 0.26),
        "uct_think_ms": 61,
        "vs_checkpoint0": match(1.0, 0.963, 1.0),
        "vs_mcts": match(0.77, 0.706, 0.83),
        "network_alone_vs_uct:800": match(0.55, 0.48, 0.62),
        "net_runs_vs_uct": 800,
        "runs_per_move": 64,
        "games_per_match": 200,
        "elo_baselines": {"mcts": 661, "uct:800": 900},
        "rating_curve": [curve_entry(n) for n in range(50)],
    }


def test_every_run_is_one_learning_command_writing_its_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert ablations.main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(ablations.RUNS)
    for line, (name, (_, flags)) in zip(lines, ablations.RUNS.items(), strict=True):
        assert line.startswith("python bench/learning.py ")
        assert line.endswith(f"--out results/{name}.json")
        assert all(flag in line for flag in flags)
        # Ablations play the matches that depend on training, on fewer games.
        assert ("--matches ablation --games 100" in line) == (name not in ablations.FULL_RUNS)


def test_the_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "recommended.json").write_text(json.dumps(result([], 0.62, 0.55)))
    (tmp_path / "no-symmetry.json").write_text(
        json.dumps(result(["--symmetry", "off"], 0.48, 0.41))
    )
    extra = ["--out", "x.json", "--set", "UCT_C=3", "--data-dir", "/tmp/d"]
    (tmp_path / "extra.json").write_text(json.dumps(result(extra, 0.5, 0.43)))
    assert ablations.main(["table", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0].startswith("| run | minutes | newest checkpoint, examples | vs uct:800 |")
    # RUNS' order first, the bold score is the one whose lower end is above 0.5.
    assert rows[1] == (
        "| the quick start (recommended) | 30 | 51, 493,604 | **0.620** (0.550-0.690) "
        "| 0.310 (0.250-0.380) | 0.200 (0.150-0.260) | **1.000** (0.963-1.000) "
        "| **0.770** (0.706-0.830) | 0.550 (0.480-0.620) | - |"
    )
    assert rows[2].startswith("| without symmetry | 30 | 51, 493,604 | 0.480 (0.410-0.550) |")
    assert rows[3].startswith("| `--set UCT_C=3` |")
    assert "T (ms, the network's CPU time per move): 61" in out
    # One rating curve per run: a dozen checkpoints, the newest included, and the baselines.
    curve = out.split("recommended:\n")[1].splitlines()
    assert curve[0].startswith("| checkpoint (minute) | 0 (0) | 5 (3) |")
    assert curve[0].endswith("| 49 (29) | mcts | uct:800 |")
    assert curve[2].startswith("| Elo | 0 | 100 |") and curve[2].endswith("| 980 | 661 | 900 |")
    assert curve[3].startswith("| 95% CI | -150..150 |")


def test_a_run_whose_json_exists_is_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "no-symmetry.json").write_text("{}")
    assert ablations.main(["run", str(tmp_path), "no-symmetry"]) == 0
    assert "skipped" in capsys.readouterr().out
    assert not (tmp_path / "no-symmetry.log").exists()
    with pytest.raises(SystemExit):
        ablations.main(["run", str(tmp_path), "no-such-run"])
