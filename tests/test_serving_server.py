"""The model server, started for real on loopback and called with TF Serving's own stubs and over REST."""
import json
import pathlib
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tfrs_pipeline.export.serving_config import ModelEntry, build_config, write_config
from tfrs_pipeline.serving.server import ModelServer, build_flag_parser
from test_serving_toy_models import ToyRetrieval, export_broken, export_toy, toy_exports  # noqa: F401

AVAILABLE = get_model_status_pb2.ModelVersionStatus.State.Value("AVAILABLE")
END = get_model_status_pb2.ModelVersionStatus.State.Value("END")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RunningServer:
    """A ModelServer on free loopback ports, with a gRPC channel and a REST helper."""

    def __init__(self, config_path, *extra_flags):
        flags = build_flag_parser().parse_args([
            "--port=0", f"--rest_api_port={free_port()}", f"--model_config_file={config_path}",
            "--file_system_poll_wait_seconds=0.2", *extra_flags])
        self.server = ModelServer(flags).start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.server.grpc_port}")
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self.rest_url = f"http://127.0.0.1:{self.server.rest_port}"

    def rest(self, path: str, body=None) -> tuple[int, object]:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        request = urllib.request.Request(self.rest_url + path, data=data, method="POST" if data else "GET")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                payload = response.read().decode()
                status = response.status
        except urllib.error.HTTPError as error:
            payload, status = error.read().decode(), error.code
        try:
            return status, json.loads(payload)
        except json.JSONDecodeError:
            return status, payload

    def close(self):
        self.channel.close()
        self.server.stop()


def retrieval_request(user_ids, model="retrieval", version=None, label=None, **inputs) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    tensors = inputs or {"user_id": tf.make_tensor_proto(user_ids, dtype=tf.string)}
    for name, proto in tensors.items():
        request.inputs[name].CopyFrom(proto)
    return request


def served_version(response: predict_pb2.PredictResponse) -> int:
    """The toy models add 1000 * version to every score."""
    return int(np.round(tf.make_ndarray(response.outputs["scores"]).mean() / 1000))


@pytest.fixture
def exports(toy_exports, tmp_path):
    shutil.copytree(toy_exports, tmp_path / "exports")
    return tmp_path / "exports"


@pytest.fixture
def server(exports, tmp_path):
    config = build_config([
        ModelEntry("retrieval", str(exports / "retrieval"), num_versions=2, version_labels={"stable": 1, "canary": 2}),
        ModelEntry("ranking", str(exports / "ranking"))])
    running = RunningServer(write_config(config, tmp_path / "models.config"))
    yield running
    running.close()


def test_predict_with_the_official_stubs_by_latest_version_and_label(server):
    latest = server.predictions.Predict(retrieval_request(["1", "2"]), timeout=10)
    assert latest.model_spec.name == "retrieval" and latest.model_spec.version.value == 2
    assert latest.model_spec.signature_name == "serving_default"
    assert tf.make_ndarray(latest.outputs["item_ids"]).shape == (2, 10)
    assert served_version(latest) == 2
    assert served_version(server.predictions.Predict(retrieval_request(["1"], version=1), timeout=10)) == 1
    assert served_version(server.predictions.Predict(retrieval_request(["1"], label="stable"), timeout=10)) == 1
    assert served_version(server.predictions.Predict(retrieval_request(["1"], label="canary"), timeout=10)) == 2

    ranking = predict_pb2.PredictRequest()
    ranking.model_spec.name = "ranking"
    ranking.inputs["user_id"].CopyFrom(tf.make_tensor_proto(["1", "2"]))
    ranking.inputs["item_ids"].CopyFrom(latest.outputs["item_ids"])
    scores = tf.make_ndarray(server.predictions.Predict(ranking, timeout=10).outputs["scores"])
    assert scores.shape == (2, 10)


def test_metadata_and_status_with_the_official_stubs(server):
    metadata_request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata_request.model_spec.name = "ranking"
    metadata = server.predictions.GetModelMetadata(metadata_request, timeout=10)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    metadata.metadata["signature_def"].Unpack(signatures)
    serving_default = signatures.signature_def["serving_default"]
    assert set(serving_default.inputs) == {"user_id", "item_ids"}
    assert set(serving_default.outputs) == {"scores"}

    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "retrieval"
    statuses = server.models.GetModelStatus(status_request, timeout=10).model_version_status
    assert [(status.version, status.state) for status in statuses] == [(1, AVAILABLE), (2, AVAILABLE)]


def test_rest_api_row_and_columnar_formats_status_and_metadata(server):
    status, rows = server.rest("/v1/models/retrieval/labels/stable:predict", {"instances": ["1", "2"]})
    assert status == 200 and len(rows["predictions"]) == 2
    assert set(rows["predictions"][0]) == {"item_ids", "scores", "known_user"}
    assert len(rows["predictions"][0]["item_ids"]) == 10
    assert round(np.mean(rows["predictions"][0]["scores"]) / 1000) == 1

    status, columns = server.rest("/v1/models/ranking/versions/1:predict", {
        "inputs": {"user_id": ["1"], "item_ids": [rows["predictions"][0]["item_ids"]]}})
    assert status == 200 and np.array(columns["outputs"]).shape == (1, 10)
    status, same = server.rest("/v1/models/ranking:predict", {
        "instances": [{"user_id": "1", "item_ids": rows["predictions"][0]["item_ids"]}]})
    assert status == 200 and np.allclose(same["predictions"], columns["outputs"])

    status, model_status = server.rest("/v1/models/retrieval")
    assert status == 200
    assert [(entry["version"], entry["state"], entry["status"]["error_code"])
            for entry in model_status["model_version_status"]] == [("1", "AVAILABLE", "OK"), ("2", "AVAILABLE", "OK")]
    status, metadata = server.rest("/v1/models/retrieval/versions/1/metadata")
    assert status == 200 and metadata["model_spec"]["version"] == "1"
    assert "user_id" in metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]


@pytest.mark.parametrize("request_kwargs, code, reason", [
    (dict(model="nonexistent"), grpc.StatusCode.NOT_FOUND, "nonexistent"),
    (dict(version=7), grpc.StatusCode.NOT_FOUND, "Specific(retrieval, 7)"),
    (dict(label="experimental"), grpc.StatusCode.INVALID_ARGUMENT, "Unrecognized servable version label"),
    (dict(userid=tf.make_tensor_proto(["1"])), grpc.StatusCode.INVALID_ARGUMENT, "missing ['user_id']"),
    (dict(user_id=tf.make_tensor_proto([1.0])), grpc.StatusCode.INVALID_ARGUMENT, "expects dtype string"),
    (dict(user_id=tf.make_tensor_proto([["1"]])), grpc.StatusCode.INVALID_ARGUMENT, "expects shape [batch]"),
])
def test_bad_grpc_requests_get_tf_serving_status_codes_and_the_server_stays_up(server, request_kwargs, code, reason):
    with pytest.raises(grpc.RpcError) as raised:
        server.predictions.Predict(retrieval_request(["1"], **request_kwargs), timeout=10)
    assert raised.value.code() == code
    assert reason in raised.value.details()
    assert served_version(server.predictions.Predict(retrieval_request(["1"]), timeout=10)) == 2


@pytest.mark.parametrize("path, body, status, reason", [
    ("/v1/models/nonexistent:predict", {"instances": ["1"]}, 404, "nonexistent"),
    ("/v1/models/retrieval/versions/9", None, 404, "version 9"),
    ("/v1/models/retrieval:predict", b"{not json", 400, "not valid JSON"),
    ("/v1/models/retrieval:predict", {"instances": [1.5]}, 400, "user_id"),
    ("/v1/models/retrieval:predict", {"instances": ["1"], "inputs": ["1"]}, 400, "exactly one of"),
    ("/v1/models/ranking:predict", {"inputs": {"user_id": ["1"], "item_ids": [["100"], ["101", "102"]]}}, 400,
     "ragged"),
    ("/v1/models/retrieval:predict", {"inputs": {"user_id": ["1"], "history": ["2"]}}, 400, "unknown ['history']"),
    ("/v2/anything", None, 404, "no route"),
])
def test_bad_rest_requests_get_the_right_http_status_and_the_server_stays_up(server, path, body, status, reason):
    answered_status, answer = server.rest(path, body)
    assert answered_status == status
    assert reason in answer["error"]
    assert server.rest("/v1/models/retrieval:predict", {"instances": ["1"]})[0] == 200


def test_classify_answers_unimplemented_with_a_reason(server):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "retrieval"
    with pytest.raises(grpc.RpcError) as raised:
        server.predictions.Classify(request, timeout=10)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "use Predict" in raised.value.details()


def test_a_new_version_is_picked_up_while_serving_with_no_failed_request(tmp_path, toy_exports):
    base = tmp_path / "retrieval"
    shutil.copytree(toy_exports / "retrieval" / "1", base / "1")
    config = write_config(build_config([ModelEntry("retrieval", str(base))]), tmp_path / "models.config")
    running = RunningServer(config)
    failures, stop = [], threading.Event()
    versions_seen = [[] for _ in range(4)]  # per client, in the order its answers came back

    def hammer(seen: list):
        while not stop.is_set():
            try:
                seen.append(served_version(running.predictions.Predict(retrieval_request(["3"]), timeout=10)))
            except grpc.RpcError as error:
                failures.append(error)

    clients = [threading.Thread(target=hammer, args=(seen,)) for seen in versions_seen]
    try:
        for client in clients:
            client.start()
        time.sleep(0.5)
        export_toy(base, ToyRetrieval, 2)
        deadline = time.monotonic() + 120  # a loaded machine can take a while to load the new version
        while not all(seen[-5:] == [2] * 5 for seen in versions_seen) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        for client in clients:
            client.join()
        statuses = running.server.manager.statuses("retrieval")
        running.close()
    assert failures == []
    for seen in versions_seen:
        assert seen[0] == 1 and seen[-5:] == [2] * 5
        assert 1 not in seen[seen.index(2):], "once a client is answered by the new version, the old one is gone"
    assert {version: status.state for version, status in statuses.items()} == {1: "END", 2: "AVAILABLE"}


def test_a_broken_version_is_reported_and_the_others_keep_serving(tmp_path, toy_exports):
    base = tmp_path / "retrieval"
    shutil.copytree(toy_exports / "retrieval" / "1", base / "1")
    export_broken(base, 2)
    config = write_config(build_config([ModelEntry("retrieval", str(base), version_policy="all")]),
                          tmp_path / "models.config")
    running = RunningServer(config)
    try:
        assert served_version(running.predictions.Predict(retrieval_request(["1"]), timeout=10)) == 1
        status_request = get_model_status_pb2.GetModelStatusRequest()
        status_request.model_spec.name = "retrieval"
        statuses = running.models.GetModelStatus(status_request, timeout=10).model_version_status
        assert [(status.version, status.state) for status in statuses] == [(1, AVAILABLE), (2, END)]
        assert "failed to load model retrieval version 2" in statuses[1].status.error_message
        assert statuses[1].status.error_code != 0
        with pytest.raises(grpc.RpcError) as raised:
            running.predictions.Predict(retrieval_request(["1"], version=2), timeout=10)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        running.close()


def test_reload_config_adds_a_model_and_a_bad_label_is_refused(server, exports):
    config = build_config([ModelEntry("retrieval", str(exports / "retrieval")),
                           ModelEntry("ranking_copy", str(exports / "ranking"))])
    response = server.models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config),
                                                       timeout=30)
    assert response.status.error_code == 0
    assert server.rest("/v1/models/ranking_copy")[0] == 200
    assert server.rest("/v1/models/ranking")[0] == 404

    bad = build_config([ModelEntry("retrieval", str(exports / "retrieval"), version_labels={"canary": 5})])
    response = server.models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=bad),
                                                       timeout=30)
    assert response.status.error_code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "points to version 5" in response.status.error_message
    assert server.rest("/v1/models/ranking_copy")[0] == 200  # the previous config is still served


def test_batching_merges_concurrent_requests_and_answers_each_its_own_rows(exports, tmp_path):
    config = write_config(build_config([ModelEntry("retrieval", str(exports / "retrieval"))]),
                          tmp_path / "models.config")
    batching = tmp_path / "batching.config"
    batching.write_text("max_batch_size { value: 16 } batch_timeout_micros { value: 20000 } "
                        "num_batch_threads { value: 1 } max_enqueued_batches { value: 4 }")
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true path: "/metrics" }')
    running = RunningServer(config, "--enable_batching", f"--batching_parameters_file={batching}",
                            f"--monitoring_config_file={monitoring}")
    users = [str(user) for user in range(1, 9)]
    try:
        alone = {user: tf.make_ndarray(running.predictions.Predict(retrieval_request([user]), timeout=10)
                                       .outputs["item_ids"]) for user in users}
        answers = {}

        def ask(user):
            response = running.predictions.Predict(retrieval_request([user]), timeout=10)
            answers[user] = tf.make_ndarray(response.outputs["item_ids"])

        threads = [threading.Thread(target=ask, args=(user,)) for user in users * 4]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert all(np.array_equal(answers[user], alone[user]) for user in users)
        status, metrics = running.rest("/metrics")
    finally:
        running.close()
    assert status == 200
    assert (':tensorflow:serving:request_count{model_name="retrieval",model_version="2",API="predict",'
            'entrypoint="GRPC",status="OK"} 40') in metrics
    assert ':tensorflow:serving:request_latency_count{model_name="retrieval",model_version="2"' in metrics


def _command_line_server(exports, *flags: str) -> tuple[subprocess.Popen, int]:
    """The server started as a user starts it, serving the toy retrieval model; and its REST port."""
    rest_port = free_port()
    return subprocess.Popen(
        [sys.executable, "-m", "tfrs_pipeline.serving.server", f"--port={free_port()}",
         f"--rest_api_port={rest_port}", "--model_name=retrieval", f"--model_base_path={exports / 'retrieval'}",
         *flags], stderr=subprocess.PIPE, text=True), rest_port


def _answers_once_ready(process: subprocess.Popen, rest_port: int) -> None:
    """Waits for the server's REST API, then asks it for one user's recommendations."""
    for line in process.stderr:
        if "Exporting HTTP/REST API" in line:
            break
    with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/v1/models/retrieval:predict",
                                data=json.dumps({"instances": ["4"]}).encode(), timeout=10) as response:
        assert len(json.loads(response.read())["predictions"][0]["item_ids"]) == 10


def test_the_command_line_server_starts_answers_and_stops(exports, tmp_path):
    process, rest_port = _command_line_server(exports)
    try:
        _answers_once_ready(process, rest_port)
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0


def test_the_tensorflow_thread_flags_size_the_server_process_s_thread_pools(exports):
    """TensorFlow makes its pools once per process, so only a server process of its own shows them:
    two servers alike but for the inter-op pool differ by that pool's threads and nothing else."""
    def serving_server(inter_op_threads: int) -> tuple[subprocess.Popen, int]:
        return _command_line_server(exports, "--tensorflow_intra_op_parallelism=1",
                                    f"--tensorflow_inter_op_parallelism={inter_op_threads}")

    def threads_once_it_answers(process: subprocess.Popen, rest_port: int) -> int:
        _answers_once_ready(process, rest_port)
        return len(list(pathlib.Path(f"/proc/{process.pid}/task").iterdir()))

    servers = [serving_server(1), serving_server(9)]  # started together: each imports TensorFlow
    try:
        one, nine = (threads_once_it_answers(*server) for server in servers)
        assert nine - one == 8, (one, nine)
    finally:
        for process, _ in servers:
            process.terminate()
            assert process.wait(timeout=30) == 0


def test_the_command_line_server_names_a_bad_config_and_exits(tmp_path):
    bad = tmp_path / "models.config"
    bad.write_text("model_config_list { config { name: 'retrieval' } }")
    finished = subprocess.run([sys.executable, "-m", "tfrs_pipeline.serving.server", "--port=0",
                               f"--model_config_file={bad}"], capture_output=True, text=True, timeout=120)
    assert finished.returncode == 2
    assert f"{bad}: model 'retrieval': base_path is missing" in finished.stderr


def test_moving_the_canary_label_in_the_config_file_is_applied_while_serving(exports, tmp_path):
    def config_with_canary_at(version):
        return build_config([ModelEntry("retrieval", str(exports / "retrieval"), num_versions=2,
                                        version_labels={"stable": 1, "canary": version})])

    path = write_config(config_with_canary_at(1), tmp_path / "models.config")
    running = RunningServer(path, "--model_config_file_poll_wait_seconds=0.2")
    try:
        assert served_version(running.predictions.Predict(retrieval_request(["1"], label="canary"), timeout=10)) == 1
        write_config(config_with_canary_at(2), path)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            canary = served_version(running.predictions.Predict(retrieval_request(["1"], label="canary"), timeout=10))
            if canary == 2:
                break
            time.sleep(0.1)
        assert canary == 2
        assert served_version(running.predictions.Predict(retrieval_request(["1"], label="stable"), timeout=10)) == 1
    finally:
        running.close()
