"""The configuration classes and the command line built from them agree, default for default."""
import contextlib
import dataclasses
import io
import json

import pytest

from tfrs_pipeline import train
from tfrs_pipeline.config import SessionConfig, TwoStageConfig, config_for_task


def test_each_task_runs_its_config_class_and_flags_override_its_defaults():
    assert train.parse_config([]) == TwoStageConfig()
    assert train.parse_config(["--task=session"]) == SessionConfig()
    given = train.parse_config(["--task=session", "--epochs=3", "--num_negatives=0"])
    assert given == SessionConfig(epochs=3, num_negatives=None)  # 0: the whole-catalog softmax
    assert (SessionConfig.max_length, SessionConfig.num_negatives, SessionConfig.num_blocks) == (50, 2048, 2)
    assert (TwoStageConfig.max_length, TwoStageConfig.num_negatives, TwoStageConfig.num_blocks) == (200, None, 4)


def test_a_flag_of_the_other_task_is_refused(capsys):
    with pytest.raises(SystemExit):
        train.parse_config(["--task=session", "--ranking_epochs=2"])
    assert "unrecognized arguments: --ranking_epochs=2" in capsys.readouterr().err
    assert "session_neighbours" not in {field.name for field in dataclasses.fields(TwoStageConfig)}


@pytest.mark.parametrize("flags", [["--examples_dir=examples"], ["--distribution", "mirrored"]])
def test_the_session_task_refuses_the_scale_out_flags_with_the_reason(capsys, flags):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--task=session", "--data_dir=sessions", *flags])
    assert exit_info.value.code == 2  # a usage error, before any data is read
    error = capsys.readouterr().err
    assert f"{flags[0].split('=')[0]} is not a flag of --task=session:" in error
    assert "reads its sessions from --data_dir" in error or "trains on one device" in error


@pytest.mark.parametrize("task", ["two_stage", "session"])
def test_help_lists_every_field_once_with_its_default(task):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(SystemExit):
        train.parse_config([f"--task={task}", "--help"])
    text = " ".join(printed.getvalue().split())
    for field in dataclasses.fields(config_for_task(task)):
        assert text.count(f"--{field.name} ") + text.count(f"--{field.name}, ") == 2  # usage line, description
        if field.default is not None:
            assert f"(default: {field.default})" in text


def test_a_bad_value_names_its_field():
    with pytest.raises(ValueError, match="holdout must be one of"):
        TwoStageConfig(holdout="later")
    with pytest.raises(ValueError, match="session_neighbours must be at least 0"):
        SessionConfig(session_neighbours=-1)
    with pytest.raises(ValueError, match=r"neighbour_validation_share must be in \[0, 1\)"):
        SessionConfig(neighbour_validation_share=1.0)
    with pytest.raises(ValueError, match=r"new_users_share must be in \[0, 1\)"):
        TwoStageConfig(new_users_share=1.0)
    with pytest.raises(ValueError, match="softmax_popularity_adjustment adjusts the whole-catalog softmax"):
        TwoStageConfig(softmax_popularity_adjustment=0.25, num_negatives=1024)
    with pytest.raises(ValueError, match="ranking_popularity_penalty_exponent must be above 0"):
        TwoStageConfig(ranking_popularity_penalty_exponent=0)
    with pytest.raises(ValueError, match="task must be one of"):
        config_for_task("ranking")


def test_a_value_the_config_refuses_is_a_usage_error_on_the_command_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.parse_config(["--new_users_share=1.5"])
    assert exit_info.value.code == 2
    assert "new_users_share must be in [0, 1), got 1.5" in capsys.readouterr().err


def test_the_written_config_names_its_task_and_every_field(tmp_path):
    SessionConfig(epochs=3).write(tmp_path / "config.json")
    written = json.loads((tmp_path / "config.json").read_text())
    assert written == {"task": "session", **dataclasses.asdict(SessionConfig(epochs=3))}


def test_the_refit_leaves_retrieval_its_first_epoch_before_the_rankers_targets():
    assert TwoStageConfig().retrieval_refit_epochs == 0  # off unless asked for
    assert TwoStageConfig(refit_epochs=4).retrieval_refit_epochs == 4
    assert TwoStageConfig(epochs=2, refit_epochs=4).retrieval_refit_epochs == 1
    assert TwoStageConfig(epochs=1, refit_epochs=4).retrieval_refit_epochs == 0  # one epoch: nothing to refit


def test_retrieval_adjusts_for_popularity_by_default_only_on_the_whole_catalog():
    """The chosen logit adjustment is the whole-catalog softmax's default; sampled negatives, which it does not
    apply to, train without it unless asked (and asking is refused above)."""
    assert TwoStageConfig().softmax_popularity_adjustment == 0.25
    assert TwoStageConfig(num_negatives=0).softmax_popularity_adjustment == 0.25
    assert TwoStageConfig(num_negatives=1024).softmax_popularity_adjustment == 0.0
    assert train.parse_config(["--softmax_popularity_adjustment=0"]).softmax_popularity_adjustment == 0.0
