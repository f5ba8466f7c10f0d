"""The model server config is a real ModelServerConfig: written, parsed and checked by the proto."""
import os
import pathlib

import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from tfrs_pipeline.export.serving_config import (
    ModelEntry,
    ServingConfigError,
    build_config,
    read_config,
    upsert_model,
    write_config,
)
from tfrs_pipeline.serving.batching import BatchingOptions
from tfrs_pipeline.serving.server import batching_options, build_flag_parser, grpc_threads, tensorflow_session_config
from tfrs_pipeline.serving.server_protos import BatchingParameters, MonitoringConfig

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def parse_with_proto(path: pathlib.Path) -> model_server_config_pb2.ModelServerConfig:
    return text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())


def test_written_config_parses_with_the_real_proto(tmp_path):
    config = build_config([
        ModelEntry("retrieval", str(tmp_path / "retrieval"), num_versions=2, version_labels={"stable": 1, "canary": 2}),
        ModelEntry("ranking", str(tmp_path / "ranking"), version_policy="all"),
        ModelEntry("session", str(tmp_path / "session"), version_policy="specific", versions=(3, 5)),
    ])
    path = write_config(config, tmp_path / "models.config")
    parsed = parse_with_proto(path)
    retrieval, ranking, session = parsed.model_config_list.config
    assert (retrieval.name, retrieval.base_path, retrieval.model_platform) == (
        "retrieval", str(tmp_path / "retrieval"), "tensorflow")
    assert retrieval.model_version_policy.latest.num_versions == 2
    assert dict(retrieval.version_labels) == {"stable": 1, "canary": 2}
    assert ranking.model_version_policy.WhichOneof("policy_choice") == "all"
    assert list(session.model_version_policy.specific.versions) == [3, 5]
    assert read_config(path) == parsed
    assert [entry.name for entry in tmp_path.iterdir()] == ["models.config"]  # no temporary file left


def test_upsert_adds_and_replaces_models_by_name(tmp_path):
    path = tmp_path / "models.config"
    upsert_model(path, ModelEntry("retrieval", "/models/retrieval"))
    upsert_model(path, ModelEntry("ranking", "/models/ranking"))
    upsert_model(path, ModelEntry("retrieval", "/models/retrieval", num_versions=2, version_labels={"stable": 7}))
    models = parse_with_proto(path).model_config_list.config
    assert [model.name for model in models] == ["retrieval", "ranking"]
    assert list(models[0].model_version_policy.specific.versions) == [7]  # labels and policy agree
    assert dict(models[0].version_labels) == {"stable": 7}
    upsert_model(path, ModelEntry("retrieval", "/models/retrieval"))  # a new export keeps the labels
    retrieval = parse_with_proto(path).model_config_list.config[0]
    assert dict(retrieval.version_labels) == {"stable": 7}
    assert list(retrieval.model_version_policy.specific.versions) == [7]


@pytest.mark.parametrize("text, problem", [
    ("model_config_list { config { name: 'a' base_path: '/a' } config { name: 'a' base_path: '/b' } }",
     "the name is used twice"),
    ("model_config_list { config { name: 'a' } }", "base_path is missing"),
    ("model_config_list { config { name: 'a' base_path: '/a' model_platform: 'pytorch' } }",
     "model_platform must be 'tensorflow'"),
    ("model_config_list { config { name: 'a' base_path: '/a' model_version_policy { specific {} } } }",
     "lists no versions"),
    ("model_config_list { config { name: 'a' base_path: '/a' version_labels { key: 'stable' value: 0 } } }",
     "must point to a positive version"),
    ("model_config_list { config { nme: 'a' } }", "not a ModelServerConfig text proto"),
])
def test_a_bad_config_names_the_file_and_the_problem(tmp_path, text, problem):
    path = tmp_path / "bad.config"
    path.write_text(text)
    with pytest.raises(ServingConfigError, match=problem) as raised:
        read_config(path)
    assert str(path) in str(raised.value)


def test_a_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ServingConfigError, match="cannot read the model config file"):
        read_config(tmp_path / "absent.config")


def test_an_invalid_entry_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="version_policy must be one of"):
        build_config([ModelEntry("a", "/a", version_policy="newest")])
    with pytest.raises(ValueError, match="the name is used twice"):
        build_config([ModelEntry("a", "/a"), ModelEntry("a", "/b")])


@pytest.mark.parametrize("name", ["models.config", "tf_serving_docker.config"])
def test_the_shipped_model_configs_parse_and_label_both_arms(name):
    config = read_config(REPO_ROOT / "serving_config" / name)
    assert parse_with_proto(REPO_ROOT / "serving_config" / name) == config
    models = {model.name: model for model in config.model_config_list.config}
    assert {"retrieval", "ranking"} <= set(models)
    for served_name in ("retrieval", "ranking"):
        assert set(models[served_name].version_labels) == {"stable", "canary"}
        # A label on a version the policy unloads answers NOT_FOUND and stops a restart: the policy serves the labels.
        assert (sorted(models[served_name].model_version_policy.specific.versions)
                == sorted(set(models[served_name].version_labels.values())))


def test_the_shipped_batching_and_monitoring_configs_parse():
    batching = text_format.Parse((REPO_ROOT / "serving_config" / "batching.config").read_text(), BatchingParameters())
    assert BatchingOptions.from_proto(batching) == BatchingOptions(
        max_batch_size=8, batch_timeout_micros=500, max_enqueued_batches=100, num_batch_threads=1)
    monitoring = text_format.Parse((REPO_ROOT / "serving_config" / "monitoring.config").read_text(),
                                   MonitoringConfig())
    assert monitoring.prometheus_config.enable
    assert monitoring.prometheus_config.path == "/monitoring/prometheus/metrics"


def test_tensorflow_s_pool_threads_sleep_when_idle_unless_the_server_is_told_to_let_them_spin():
    def server_session(*argv: str):
        return tensorflow_session_config(build_flag_parser().parse_args(list(argv)))

    assert server_session().experimental.disable_thread_spinning
    assert not server_session("--tensorflow_thread_spinning").experimental.disable_thread_spinning
    assert server_session("--tensorflow_intra_op_parallelism=1").intra_op_parallelism_threads == 1


def test_grpc_threads_default_to_four_per_cpu_and_leave_room_to_fill_a_batch(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    flags = build_flag_parser().parse_args(
        ["--enable_batching", f"--batching_parameters_file={REPO_ROOT / 'serving_config' / 'batching.config'}"])
    assert flags.grpc_max_threads == 0
    assert grpc_threads(flags.grpc_max_threads, None) == 8  # TF Serving's default: 4 per CPU
    # Requests waiting for a batch of 8 rows each hold a thread.
    assert grpc_threads(flags.grpc_max_threads, batching_options(flags)) == 8 + 8
    assert grpc_threads(5, batching_options(flags)) == 5
