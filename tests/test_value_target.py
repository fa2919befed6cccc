"""The value head's target: a mix of the game result and the root's search value
(HEXZ_VALUE_TARGET_Q_WEIGHT), the result alone where an example has no root_q."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import game_columns

from hexz_tasks import codec
from hexz_tasks.dataset import Dataset
from hexz_tasks.repository import ModelRepository, params_from_settings
from hexz_tasks.settings import Settings, SettingsError
from hexz_tasks.training import prefetch, train_checkpoint, value_targets


def test_the_mix_and_its_fallback_to_the_result() -> None:
    results = np.array([1, -1, 0, 1], np.float32)
    root_q = np.array([0.5, 0.2, np.nan, -1], np.float32)
    assert value_targets(results, root_q, 0.0) is results  # the reference: untouched
    np.testing.assert_allclose(value_targets(results, root_q, 0.25), [0.875, -0.7, 0, 0.5])
    np.testing.assert_allclose(value_targets(results, root_q, 1.0), [0.5, 0.2, 0, -1])
    assert value_targets(results, root_q, 0.5).dtype == np.float32


@pytest.mark.parametrize("value", ["-0.1", "1.5", "nan", "half"])
def test_the_setting_must_be_a_weight(value: str) -> None:
    with pytest.raises(SettingsError, match="HEXZ_VALUE_TARGET_Q_WEIGHT"):
        Settings.from_env({"HEXZ_VALUE_TARGET_Q_WEIGHT": value})


def test_the_setting_is_read() -> None:
    assert Settings.from_env({}).value_target_q_weight == 0.0
    assert Settings.from_env({"HEXZ_VALUE_TARGET_Q_WEIGHT": "0.5"}).value_target_q_weight == 0.5


def self_play_columns(games: int = 4) -> codec.Columns:
    """Engine games (each example has its root_q), the first ten rows' root_q unknown
    as in examples from the edge."""
    cols = codec.concat(game_columns(games, seed=3, runs=20))
    cols["root_q"] = cols["root_q"].copy()
    cols["root_q"][:10] = np.nan
    return cols


def test_the_input_pipeline_yields_the_mixed_targets(tmp_path: Path) -> None:
    ds = Dataset(tmp_path / "examples")
    ds.append(self_play_columns(), None)
    window = ds.window(10**6)
    idx = np.arange(len(window))
    plain = window.batch(idx)
    assert np.isnan(plain.root_q[:10]).all() and not np.isnan(plain.root_q[10:]).any()
    assert not np.array_equal(plain.root_q[10:], plain.results[10:])
    (reference,) = prefetch(window, [idx], pin=False)
    np.testing.assert_array_equal(reference[3].numpy(), plain.results)
    (mixed,) = prefetch(window, [idx], pin=False, q_weight=0.3)
    expected = np.concatenate(
        [plain.results[:10], 0.7 * plain.results[10:] + 0.3 * plain.root_q[10:]]
    )
    np.testing.assert_allclose(mixed[3].numpy(), expected, rtol=1e-6)


def test_training_moves_the_value_towards_the_search_value(tmp_path: Path) -> None:
    """Every game won, every search pessimistic: trained on the results the values rise,
    trained on the search values they fall."""
    torch.set_num_threads(1)
    cols = self_play_columns(games=6)
    n = codec.num_rows(cols)
    cols["result"] = np.ones(n, np.int8)
    cols["root_q"] = np.full(n, -0.8, np.float16)
    ds = Dataset(tmp_path / "examples")
    ds.append(cols, None)
    batch = ds.window(10**6).batch(np.arange(n))
    mean_values = {}
    for w in (0.0, 1.0):
        s = Settings.from_env(
            {},
            data_dir=tmp_path / str(w),
            model_blocks=1,
            model_filters=8,
            batch_size=32,
            num_epochs=4,
            learning_rate=3e-3,
            value_target_q_weight=w,
        )
        repo = ModelRepository(s.repo_base_dir, s.model_name)
        torch.manual_seed(0)  # the same checkpoint 0 each time
        repo.ensure_initial(params_from_settings(s), s)
        train_checkpoint(s, repo, ds, 0, ds.count())
        model = repo.load_model(1).eval()
        with torch.no_grad():
            _, value = model(torch.from_numpy(batch.boards), torch.from_numpy(batch.masks))
        mean_values[w] = float(value.mean())
    # The first ten rows have no root_q: their target stays the result (+1).
    assert mean_values[0.0] > 0.3
    assert mean_values[1.0] < -0.2
