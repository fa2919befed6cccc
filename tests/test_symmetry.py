"""The board's symmetries: mirrored games are the same games, and training batches can
be mirrored example by example (hexz_tasks.symmetry)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import game_columns

import bench.numpy_flagz as numpy_flagz
from bench.numpy_flagz import NumpyBoard
from hexz_tasks import codec
from hexz_tasks.dataset import Batch, Dataset
from hexz_tasks.engine import Board
from hexz_tasks.repository import ModelRepository, params_from_settings
from hexz_tasks.settings import Settings
from hexz_tasks.symmetry import (
    NAMES,
    PERMUTATIONS,
    random_symmetries,
    transform,
    transform_move,
)
from hexz_tasks.training import prefetch, train_checkpoint

GRASS = 10  # tensor channel


def grassy_board(seed: int, extra: int = 15) -> Board:
    """A random board with `extra` more grass cells (values 1..5): captures, and chains
    of captures (where the neighbour order could matter), happen in most games."""
    rng = np.random.default_rng(seed)
    t = Board.random(seed).tensor(0)
    free = np.argwhere(t[2] == 0)
    for r, c in free[rng.choice(len(free), extra, replace=False)]:
        t[2, r, c] = t[7, r, c] = 1
        t[GRASS, r, c] = rng.integers(1, 6)
    return Board.from_tensor(t)


def random_game(board: Board, seed: int):
    """Yields (player, move) of a uniformly random game from `board`; the caller plays
    each move on `board` before taking the next."""
    rng = np.random.default_rng(seed)
    p = 0
    while True:
        moves = board.legal_moves(p)
        if not moves:
            p = 1 - p
            moves = board.legal_moves(p)
            if not moves:
                return
        yield p, moves[rng.integers(len(moves))]
        p = 1 - p


def test_the_symmetries_are_involutions_that_keep_the_valid_cells() -> None:
    valid = np.array([c < 10 - r % 2 for r in range(11) for c in range(10)])
    for k, perm in enumerate(PERMUTATIONS):
        assert sorted(perm) == list(range(110))
        np.testing.assert_array_equal(perm[perm], np.arange(110))
        np.testing.assert_array_equal(valid[perm], valid)
        assert (k == 0) == (perm == np.arange(110)).all()
    assert transform_move((1, 0, 0, 3), 1) == (1, 0, 9, 3)  # even row: 9 - c
    assert transform_move((0, 1, 0, 1), 1) == (0, 1, 8, 1)  # odd row: 8 - c
    assert transform_move((1, 1, 2, 4), 2) == (1, 9, 2, 4)  # 10 - r
    assert transform_move((1, 3, 1, 2), 3) == (1, 7, 7, 2)  # both
    np.testing.assert_array_equal(PERMUTATIONS[3], PERMUTATIONS[1][PERMUTATIONS[2]])


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("seed", range(12))
def test_a_mirrored_game_is_legal_move_for_move_with_mirrored_encodings(k: int, seed: int) -> None:
    board = grassy_board(seed) if seed % 2 else Board.random(seed)
    mirrored = Board.from_tensor(transform(board.tensor(0), k))
    for p, move in random_game(board, seed):
        for q in (0, 1):
            np.testing.assert_array_equal(mirrored.tensor(q), transform(board.tensor(q), k))
            np.testing.assert_array_equal(
                mirrored.action_mask(q), transform(board.action_mask(q), k)
            )
            assert sorted(mirrored.legal_moves(q)) == sorted(
                transform_move(m, k) for m in board.legal_moves(q)
            )
        assert mirrored.score() == board.score()
        board.make_move(p, move)
        mirrored.make_move(p, transform_move(move, k))
    assert board.game_over() and mirrored.game_over()
    assert mirrored.score() == board.score() and mirrored.result() == board.result()
    np.testing.assert_array_equal(mirrored.tensor(0), transform(board.tensor(0), k))


@pytest.mark.parametrize("order_seed", [0, 1, 2])
def test_the_board_after_a_move_does_not_depend_on_the_neighbour_order(
    order_seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The NumPy rules with the neighbours in a shuffled order agree with the engine
    (spec order) after every move, captures and chains of captures included."""
    rng = np.random.default_rng(order_seed)
    shuffled = {
        cell: [nbs[i] for i in rng.permutation(len(nbs))]
        for cell, nbs in numpy_flagz.NEIGHBOURS.items()
    }
    monkeypatch.setattr(numpy_flagz, "NEIGHBOURS", shuffled)
    chains = 0
    for seed in range(10):
        board = grassy_board(100 * order_seed + seed)
        other = NumpyBoard(board.tensor(0))
        for p, move in random_game(board, seed):
            grass = np.count_nonzero(other.b[GRASS])
            board.make_move(p, move)
            other.make_move(p, move)
            chains += grass - np.count_nonzero(other.b[GRASS]) >= 2
            np.testing.assert_array_equal(other.b, board.tensor(0))
    assert chains >= 5  # the order could only matter in chains


def batch_of(boards: list[Board], players: list[int], rng: np.random.Generator) -> Batch:
    masks = np.stack([b.action_mask(p) for b, p in zip(boards, players, strict=True)])
    probs = rng.random(masks.shape).astype(np.float32) * masks
    probs /= probs.reshape(len(boards), -1).sum(1)[:, None, None, None]
    return Batch(
        boards=np.stack([b.tensor(p) for b, p in zip(boards, players, strict=True)]),
        masks=masks,
        move_probs=probs.reshape(len(boards), -1),
        results=rng.choice([-1.0, 0.0, 1.0], len(boards)).astype(np.float32),
        root_q=rng.uniform(-1, 1, len(boards)).astype(np.float32),
    )


def test_random_symmetries_mirror_each_example_consistently() -> None:
    rng = np.random.default_rng(3)
    boards, players = [], []
    for seed in range(64):
        b = Board.random(seed)
        p = 0
        for p, move in random_game(b, seed):  # stop part-way through the game
            if rng.random() < 0.05:
                break
            b.make_move(p, move)
        boards.append(b)
        players.append(p)
    batch = batch_of(boards, players, rng)
    out = random_symmetries(batch, np.random.default_rng(7))
    seen = []
    for i in range(len(boards)):
        matches = [
            k
            for k in range(len(NAMES))
            if np.array_equal(out.boards[i], transform(batch.boards[i], k))
            and np.array_equal(out.masks[i], transform(batch.masks[i], k))
            and np.array_equal(out.move_probs[i], transform(batch.move_probs[i], k))
        ]
        assert matches, i  # one symmetry moved board, mask and targets together
        seen.append(matches[0])
        # A real position: the decoded board is legal and its mask is the mask.
        mirrored = Board.from_tensor(out.boards[i])  # player to move's view is channels 0-4
        np.testing.assert_array_equal(mirrored.action_mask(0), out.masks[i])
    assert set(seen) == {0, 1, 2, 3}
    np.testing.assert_array_equal(out.results, batch.results)
    np.testing.assert_array_equal(out.root_q, batch.root_q)
    # The input batch is left alone; the same seed draws the same symmetries.
    again = random_symmetries(batch, np.random.default_rng(7))
    np.testing.assert_array_equal(again.boards, out.boards)
    assert not np.array_equal(out.boards, batch.boards)


# ------------------------------------------------------------------ the trainer


def small_dataset(path: Path, games: int = 6) -> Dataset:
    ds = Dataset(path)
    ds.append(codec.concat(game_columns(games, seed=1, runs=20)), None)
    return ds


def test_the_input_pipeline_mirrors_batches_when_asked(tmp_path: Path) -> None:
    window = small_dataset(tmp_path / "examples").window(10**6)
    idx = np.arange(min(len(window), 128))
    plain = window.batch(idx)
    (same,) = prefetch(window, [idx], pin=False)
    np.testing.assert_array_equal(same[0].numpy(), plain.boards)
    (mirrored,) = prefetch(window, [idx], pin=False, symmetry_seed=5)
    boards, masks, probs, results = (t.numpy() for t in mirrored)
    np.testing.assert_array_equal(results, plain.results)
    changed = 0
    for i in range(len(idx)):
        k = next(
            k for k in range(len(NAMES)) if np.array_equal(boards[i], transform(plain.boards[i], k))
        )
        np.testing.assert_array_equal(masks[i], transform(plain.masks[i], k))
        np.testing.assert_array_equal(probs[i], transform(plain.move_probs[i], k))
        changed += k != 0
    assert 0.6 * len(idx) < changed < 0.9 * len(idx)  # 3 of 4 symmetries move the board


def test_training_with_symmetries_is_reproducible_and_differs(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    ds = small_dataset(tmp_path / "examples")
    weights = {}
    for name, on in (("a", True), ("b", True), ("off", False)):
        s = Settings.from_env(
            {},
            data_dir=tmp_path / name,
            model_blocks=1,
            model_filters=8,
            batch_size=32,
            num_epochs=1,
            train_symmetries=on,
        )
        repo = ModelRepository(s.repo_base_dir, s.model_name)
        torch.manual_seed(0)  # the same checkpoint 0 each time
        repo.ensure_initial(params_from_settings(s), s)
        train_checkpoint(s, repo, ds, 0, ds.count())
        weights[name] = repo.load_model(1).state_dict()
    for key, w in weights["a"].items():
        assert torch.equal(w, weights["b"][key]), key
    assert any(not torch.equal(w, weights["off"][k]) for k, w in weights["a"].items())
