"""Settings: defaults from the spec, strict parsing, errors that name the variable."""

from pathlib import Path

import pytest

from hexz_tasks.settings import Settings, SettingsError, parse_lr_schedule


def test_defaults_follow_the_spec():
    s = Settings.from_env({})
    assert (s.runs_per_move, s.runs_per_fast_move, s.fast_move_prob) == (800, 100, 0.0)
    assert (s.uct_c, s.initial_root_q_value, s.initial_q_penalty) == (1.5, -0.2, 0.3)
    assert (s.dirichlet_concentration, s.random_playouts, s.max_moves_per_game) == (0.0, 0, 200)
    assert s.resign_threshold is None and s.suspend_while_training is False
    assert (s.model_type, s.model_blocks, s.model_filters, s.batch_size) == ("conv2d", 5, 128, 4096)
    assert (s.training_trigger_threshold, s.training_examples_window_size) == (100, 2**20)
    assert (s.num_epochs, s.learning_rate, s.adam_weight_decay) == (7, 1e-3, 1e-4)
    assert (s.device, s.shuffle, s.pin_memory, s.training_mode) == ("cpu", True, False, "window")
    assert (s.replay_buffer_size, s.replay_buffer_reuse) == (2**16, 3)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("yes", True), ("On", True), ("true", True), ("0", False), ("off", False)],
)
def test_booleans_accept_the_usual_spellings(raw, expected):
    assert Settings.from_env({"HEXZ_SHUFFLE": raw}).shuffle is expected


def test_values_are_parsed_by_type():
    s = Settings.from_env(
        {
            "HEXZ_RUNS_PER_MOVE": "64",
            "HEXZ_FAST_MOVE_PROB": "0.5",
            "HEXZ_MODEL_TYPE": "resnet",
            "HEXZ_DATA_DIR": "/tmp/x",
            "HEXZ_RESIGN_THRESHOLD": "-0.9",
            "HEXZ_REDIS_URL": "redis://:secret@host:6380/2",
        }
    )
    assert s.runs_per_move == 64 and s.fast_move_prob == 0.5 and s.model_type == "resnet"
    assert s.data_dir == Path("/tmp/x") and s.repo_base_dir == Path("/tmp/x")
    assert s.resign_threshold == -0.9 and s.redis_url == "redis://:secret@host:6380/2"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"HEXZ_RUNS_PER_MOVE": "many"}, "HEXZ_RUNS_PER_MOVE"),
        ({"HEXZ_RUNS_PER_MOVE": "0"}, "HEXZ_RUNS_PER_MOVE"),
        ({"HEXZ_SHUFFLE": "maybe"}, "HEXZ_SHUFFLE"),
        ({"HEXZ_MODEL_TYPE": "transformer"}, "HEXZ_MODEL_TYPE"),
        ({"HEXZ_FAST_MOVE_PROB": "1.5"}, "HEXZ_FAST_MOVE_PROB"),
        ({"HEXZ_DEVICE": "tpu"}, "HEXZ_DEVICE"),
        ({"HEXZ_LR_SCHEDULE": "0:0.2,x"}, "HEXZ_LR_SCHEDULE"),
        ({"HEXZ_RUNS_PER_MOOVE": "5"}, "HEXZ_RUNS_PER_MOOVE"),
        ({"HEXZ_MODEL_NAME": "../escape"}, "HEXZ_MODEL_NAME"),
        ({"HEXZ_ARENA_BASELINES": "mcts,alphazero"}, "HEXZ_ARENA_BASELINES: 'alphazero'"),
        ({"HEXZ_ARENA_BASELINES": "uct:0"}, "HEXZ_ARENA_BASELINES: player 'uct:0'"),
        ({"HEXZ_ARENA_BASELINES": "mcts,"}, "HEXZ_ARENA_BASELINES: ''"),
        ({"HEXZ_FPU_REFERENCE": "sometimes"}, "HEXZ_FPU_REFERENCE"),
    ],
)
def test_bad_values_fail_naming_the_variable(env, named):
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env)


def test_arena_baselines_are_labelled_as_in_stored_games():
    assert Settings.from_env({}).arena_baseline_labels() == ["mcts"]
    s = Settings.from_env({"HEXZ_ARENA_BASELINES": " mcts:64, uct:0800,uct@50,uct:800"})
    assert s.arena_baseline_labels() == ["mcts:64", "uct:800", "uct@50"]
    assert Settings.from_env({"HEXZ_ARENA_BASELINES": " "}).arena_baseline_labels() == []


def test_foreign_hexz_variables_are_left_alone():
    assert Settings.from_env({"HEXZ_TRAINING_SERVER_ADDR": "localhost:50051"}).runs_per_move == 800


def test_overrides_win_and_are_validated():
    s = Settings.from_env({"HEXZ_RUNS_PER_MOVE": "64"}, runs_per_move=8)
    assert s.runs_per_move == 8
    with pytest.raises(SettingsError, match="unknown setting"):
        Settings.from_env({}, no_such_setting=1)
    with pytest.raises(SettingsError, match="HEXZ_BATCH_SIZE"):
        s.replace(batch_size=-1)


def test_lr_schedule_is_sorted_and_starts_at_zero():
    assert parse_lr_schedule("100:0.02,0:0.2") == [(0, 0.2), (100, 0.02)]
    assert parse_lr_schedule("") == []
    with pytest.raises(SettingsError):
        parse_lr_schedule("5:0.1")


def test_settings_serialise_to_json():
    assert '"runs_per_move": 800' in Settings.from_env({}).to_json()


def test_the_defaults_pass_the_start_up_check_and_make_a_celery_config():
    from hexz_tasks.celery import celery_config

    s = Settings.from_env({})
    s.validate()
    conf = celery_config(s)
    # A slice plus its overrun ends well inside the soft time limit.
    assert s.selfplay_slice_s < conf["task_soft_time_limit"] < conf["task_time_limit"]
    assert conf["task_time_limit"] < conf["visibility_timeout"]


@pytest.mark.parametrize(
    ("env", "named"),
    [
        # The time limit would cut the slice off.
        (
            {"HEXZ_SELFPLAY_SLICE_S": "600", "HEXZ_TASK_TIME_LIMIT_S": "600"},
            "HEXZ_TASK_TIME_LIMIT_S",
        ),
        # One batch of 4096 games of a 20x256 network takes minutes on a slow CPU.
        (
            {"HEXZ_SELFPLAY_SLICE_S": "5", "HEXZ_GAMES_IN_FLIGHT": "4096",
             "HEXZ_MODEL_BLOCKS": "20", "HEXZ_MODEL_FILTERS": "256"},
            "HEXZ_GAMES_IN_FLIGHT",
        ),
        ({"HEXZ_SELFPLAY_SLICE_S": "0"}, "HEXZ_SELFPLAY_SLICE_S"),
        ({"HEXZ_MAX_PENDING_EXAMPLES": "0"}, "HEXZ_MAX_PENDING_EXAMPLES"),
    ],
)  # fmt: skip
def test_slices_that_cannot_work_are_refused_naming_the_settings(env, named):
    with pytest.raises(SettingsError, match=named) as e:
        Settings.from_env(env)
    if "HEXZ_SELFPLAY_SLICE_S" in env and env["HEXZ_SELFPLAY_SLICE_S"] != "0":
        assert "HEXZ_SELFPLAY_SLICE_S" in str(e.value)


def test_a_batch_estimate_scales_with_the_network():
    small, large = Settings(model_blocks=1, model_filters=8), Settings()
    assert 0 < small.evaluation_macs() < large.evaluation_macs()
    # conv2d 5x128: 66 M multiply-accumulates per evaluation; a residual block has two convs.
    assert large.evaluation_macs() == pytest.approx(66.3e6, rel=0.01)
    resnet = Settings(model_type="resnet", model_blocks=5, model_filters=128)
    assert resnet.evaluation_macs() > 1.9 * large.evaluation_macs()
