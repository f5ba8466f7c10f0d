"""Fault injection: the real server, on small real exports, against operators' slips and hostile clients.

Each test reproduces an item of issue 19 (the number in its docstring) and fails on the code before
it: versions that appear corrupt, late or oddly named, configs that are empty or contradict their
labels, reloads from strangers, requests that lie about their size, and clients that never finish.
"""
import gc
import json
import logging
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import time

import grpc
import numpy as np
import psutil
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import get_model_status_pb2, model_management_pb2, model_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from tfrs_pipeline import recommend, rollout
from tfrs_pipeline.export.serving_config import ModelEntry, build_config, read_config, write_config
from tfrs_pipeline.export.versioning import write_version
from tfrs_pipeline.index import SCANN_SAVE_OPTIONS, build_top_k
from tfrs_pipeline.serving.server import ModelServer, build_flag_parser
from test_serving_server import RunningServer, exports, free_port, retrieval_request, served_version  # noqa: F401
from test_serving_toy_models import (  # noqa: F401
    ToyRanking,
    ToyRetrieval,
    export_broken,
    export_toy,
    toy_exports,
)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
AVAILABLE = get_model_status_pb2.ModelVersionStatus.State.Value("AVAILABLE")


def wait_until(condition, timeout_s: float = 60, what: str = "the condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {timeout_s} s")


# The recommender takes retrieval's inputs and gives its outputs: the toy retrieval stands in for its mechanics.
SHIPPED_MODELS = (("retrieval", ToyRetrieval), ("ranking", ToyRanking), ("recommender", ToyRetrieval))


def toy_versions(root: pathlib.Path, versions, models=SHIPPED_MODELS):
    for name, model_class in models:
        for version in versions:
            export_toy(root / name, model_class, version)


def status_of(server: RunningServer, model: str) -> dict[int, int]:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    return {status.version: status.state
            for status in server.models.GetModelStatus(request, timeout=10).model_version_status}


def single_model_server(base: pathlib.Path, tmp_path, *flags, **entry) -> RunningServer:
    config = write_config(build_config([ModelEntry("retrieval", str(base), **entry)]), tmp_path / "models.config")
    return RunningServer(config, *flags)


# 1. Rollouts and labels -------------------------------------------------------------------------------------------

def shipped_config_at(root: pathlib.Path, path: pathlib.Path) -> pathlib.Path:
    """``serving_config/models.config`` with its base paths moved under ``root``, as a deployment would."""
    config = read_config(REPO_ROOT / "serving_config" / "models.config")
    del config.model_config_list.config[1]  # retrieval_brute_force: the same mechanics as retrieval
    for model in config.model_config_list.config:
        model.base_path = str(root / pathlib.Path(model.base_path).name)
    return write_config(config, path)


def test_the_shipped_config_survives_a_third_version_and_rollouts_move_labels_together(tmp_path):
    """1: three versions on disk; labels on 1 stay served; canary, promote and rollback are commands."""
    toy_versions(tmp_path / "export", [1, 2, 3])
    config_path = shipped_config_at(tmp_path / "export", tmp_path / "models.config")
    server = RunningServer(config_path, "--model_config_file_poll_wait_seconds=0.2")
    try:
        for label in ("stable", "canary"):
            assert served_version(server.predictions.Predict(retrieval_request(["1"], label=label), timeout=10)) == 1

        def label_serves(label, version):
            return lambda: served_version(server.predictions.Predict(
                retrieval_request(["1"], label=label), timeout=10)) == version

        assert rollout.main(["canary", f"--model_config_file={config_path}"]) == 0
        wait_until(label_serves("canary", 3), what="canary moving to version 3")
        assert served_version(server.predictions.Predict(retrieval_request(["1"], label="stable"), timeout=10)) == 1
        configs = {model.name: model for model in read_config(config_path).model_config_list.config}
        for name in ("ranking", "recommender"):  # an arm's models move together
            assert dict(configs[name].version_labels) == {"stable": 1, "canary": 3}
            assert list(configs[name].model_version_policy.specific.versions) == [1, 3]

        assert rollout.main(["promote", f"--model_config_file={config_path}"]) == 0
        wait_until(label_serves("stable", 3), what="stable moving to version 3")
        wait_until(lambda: 1 not in status_of(server, "retrieval") or status_of(server, "retrieval")[1] != AVAILABLE,
                   what="version 1 leaving service")
        before = config_path.read_text()
        assert rollout.main(["canary", "--version=7", f"--model_config_file={config_path}"]) == 2
        assert config_path.read_text() == before  # a version not on disk is refused, the file unchanged
    finally:
        server.close()
    restarted = RunningServer(config_path)  # a restart on what the command wrote serves (no exit status 2)
    try:
        assert served_version(restarted.predictions.Predict(retrieval_request(["1"], label="canary"), timeout=10)) == 3
    finally:
        restarted.close()


def test_a_label_outside_the_version_policy_keeps_its_version_loaded(tmp_path):
    """1: the old shipped config (latest 2, labels on 1) with three versions: labels answer, restarts start."""
    toy_versions(tmp_path, [1, 2, 3], models=(("retrieval", ToyRetrieval),))
    server = single_model_server(tmp_path / "retrieval", tmp_path, num_versions=2,
                                 version_labels={"stable": 1, "canary": 1})
    try:
        assert served_version(server.predictions.Predict(retrieval_request(["1"], label="stable"), timeout=10)) == 1
        assert served_version(server.predictions.Predict(retrieval_request(["1"]), timeout=10)) == 3
        assert status_of(server, "retrieval") == {1: AVAILABLE, 2: AVAILABLE, 3: AVAILABLE}
    finally:
        server.close()


# 2. A corrupt newest version at start-up ----------------------------------------------------------------------------

def test_a_corrupt_newest_version_at_start_serves_the_newest_that_loads_and_readiness_tells(tmp_path, toy_exports):
    """2: latest 1 with a corrupt version 2 serves 1; a model with nothing loadable makes /readyz 503."""
    shutil.copytree(toy_exports / "retrieval" / "1", tmp_path / "retrieval" / "1")
    export_broken(tmp_path / "retrieval", 2)
    export_broken(tmp_path / "ranking", 1)
    config = write_config(build_config([ModelEntry("retrieval", str(tmp_path / "retrieval")),
                                        ModelEntry("ranking", str(tmp_path / "ranking"))]),
                          tmp_path / "models.config")
    server = RunningServer(config)
    try:
        assert served_version(server.predictions.Predict(retrieval_request(["1"]), timeout=10)) == 1
        assert server.rest("/v1/models/ranking")[0] == 200  # the status route reports; it does not judge
        status, answer = server.rest("/readyz")
        assert status == 503 and "ranking" in answer["error"] and "retrieval" not in answer["error"]
        shutil.rmtree(tmp_path / "ranking" / "1")
        shutil.copytree(toy_exports / "ranking" / "1", tmp_path / "ranking" / "2")
        wait_until(lambda: server.rest("/readyz")[0] == 200, what="readiness once ranking loads")
    finally:
        server.close()


# 3. Empty configs ---------------------------------------------------------------------------------------------------

def test_an_empty_config_from_the_poller_or_a_reload_is_ignored(exports, tmp_path):
    """3: TF Serving ignores an empty config; unloading every model is never what was meant."""
    config_path = write_config(build_config([ModelEntry("retrieval", str(exports / "retrieval"))]),
                               tmp_path / "models.config")
    server = RunningServer(config_path, "--model_config_file_poll_wait_seconds=0.2")
    try:
        response = server.models.HandleReloadConfigRequest(
            model_management_pb2.ReloadConfigRequest(config=model_server_config_pb2.ModelServerConfig()), timeout=30)
        assert response.status.error_code == 0
        assert served_version(server.predictions.Predict(retrieval_request(["1"]), timeout=10)) == 2
        config_path.write_text("")  # an editor truncating the file before it writes
        time.sleep(1.0)  # five polls
        assert served_version(server.predictions.Predict(retrieval_request(["1"]), timeout=10)) == 2
    finally:
        server.close()


# 4. Retried loads ---------------------------------------------------------------------------------------------------

def test_a_version_that_failed_to_load_is_retried_and_served_once_fixed(tmp_path, toy_exports):
    """4: a version fixed in place (or finished copying) loads at a retry, as with --max_num_load_retries."""
    base = tmp_path / "retrieval"
    shutil.copytree(toy_exports / "retrieval" / "1", base / "1")
    export_broken(base, 2)
    server = single_model_server(base, tmp_path, "--load_retry_interval_micros=200000", "--max_num_load_retries=50")
    try:
        assert served_version(server.predictions.Predict(retrieval_request(["1"]), timeout=10)) == 1
        for entry in (toy_exports / "retrieval" / "2").iterdir():  # fix version 2 in place
            target = base / "2" / entry.name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
            (shutil.copytree if entry.is_dir() else shutil.copy)(entry, target)
        wait_until(lambda: served_version(server.predictions.Predict(retrieval_request(["1"]), timeout=10)) == 2,
                   what="the fixed version 2 serving")
    finally:
        server.close()


# 5. Odd version folder names ---------------------------------------------------------------------------------------

def test_version_folders_that_are_not_plain_integers_are_ignored_with_a_warning(tmp_path, toy_exports, caplog):
    """5: '²', '06' and numbers above int64 neither stop polling nor break gRPC answers."""
    base = tmp_path / "retrieval"
    shutil.copytree(toy_exports / "retrieval" / "1", base / "1")
    for name in ["²", "06", "9223372036854775808", "99999999999999999999999"]:
        shutil.copytree(toy_exports / "retrieval" / "2", base / name)
    with caplog.at_level(logging.WARNING):
        server = single_model_server(base, tmp_path, version_policy="all")
    try:
        assert served_version(server.predictions.Predict(retrieval_request(["1"]), timeout=10)) == 1
        assert status_of(server, "retrieval") == {1: AVAILABLE}
        assert server.rest("/v1/models/retrieval")[0] == 200
        export_toy(base, ToyRetrieval, 2)  # polling goes on
        wait_until(lambda: served_version(server.predictions.Predict(retrieval_request(["1"]), timeout=10)) == 2,
                   what="version 2 being picked up")
    finally:
        server.close()
    assert "ignoring the folder '06'" in caplog.text and "ignoring the folder '²'" in caplog.text


# 7. Base paths and who may reload ------------------------------------------------------------------------------------

def test_reloads_name_missing_base_paths_and_stay_within_the_base_path_roots(exports, tmp_path, caplog):
    """7: a missing base path is said at start and refused on reload; /proc is outside the roots."""
    with caplog.at_level(logging.WARNING):
        server = RunningServer(write_config(build_config([
            ModelEntry("retrieval", str(exports / "retrieval")),
            ModelEntry("ranking", str(exports / "typo"))]), tmp_path / "models.config"))
    assert f"base_path {exports / 'typo'} does not exist" in caplog.text
    try:
        for base_path, code, reason in [(exports / "missing", grpc.StatusCode.INVALID_ARGUMENT, "does not exist"),
                                        ("/proc", grpc.StatusCode.PERMISSION_DENIED, "outside the base path roots")]:
            config = build_config([ModelEntry("retrieval", str(exports / "retrieval")),
                                   ModelEntry("other", str(base_path))])
            response = server.models.HandleReloadConfigRequest(
                model_management_pb2.ReloadConfigRequest(config=config), timeout=30)
            assert response.status.error_code == code.value[0] and reason in response.status.error_message
        assert server.rest("/v1/models/other")[0] == 404  # refused: the previous config serves on
    finally:
        server.close()


def non_loopback_address() -> str | None:
    """An address of this machine that is not loopback, or None (then the remote-peer test cannot run)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent, the kernel only picks a route
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_a_reload_from_a_remote_peer_is_refused(exports, tmp_path):
    """7: configuration reload is for loopback peers unless --allow_remote_config_reload."""
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to call from")
    config = write_config(build_config([ModelEntry("retrieval", str(exports / "retrieval"))]),
                          tmp_path / "models.config")
    server = RunningServer(config, "--host=0.0.0.0")
    try:
        with grpc.insecure_channel(f"{address}:{server.server.grpc_port}") as channel:
            response = model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
                model_management_pb2.ReloadConfigRequest(config=read_config(config)), timeout=30)
        assert response.status.error_code == grpc.StatusCode.PERMISSION_DENIED.value[0]
        assert "loopback" in response.status.error_message
    finally:
        server.close()


# 8. Requests that lie about their size ------------------------------------------------------------------------------

def declared_strings(dims, values=()) -> tensor_pb2.TensorProto:
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in dims])
    return tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape, string_val=list(values))


@pytest.mark.parametrize("tensor, reason", [
    (declared_strings([8_000_000, 1]), "larger than the maximum request batch size"),
    (declared_strings([1000, 1]), "holds 1000 values but 0 were sent"),
    (declared_strings([3], [b"1"]), "holds 3 values but 1 were sent"),
    (tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_content=b"\0" * 7, tensor_shape=tensor_shape_pb2.
                            TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=4)])), "tensor_content"),
])
def test_tensors_whose_values_do_not_match_their_shape_are_refused_before_allocation(exports, tmp_path, tensor,
                                                                                     reason):
    """8: a 41-byte request declaring [8M, 1] strings cost 107 MB; now it costs an INVALID_ARGUMENT."""
    server = single_model_server(exports / "retrieval", tmp_path)
    try:
        with pytest.raises(grpc.RpcError) as raised:
            server.predictions.Predict(retrieval_request(None, user_id=tensor), timeout=10)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and reason in raised.value.details()
    finally:
        server.close()


def test_a_request_batch_above_the_limit_is_refused_over_grpc_and_rest(exports, tmp_path):
    """8: --max_request_batch_size caps a request's batch (TF Serving's batcher answers INVALID_ARGUMENT)."""
    server = single_model_server(exports / "retrieval", tmp_path, "--max_request_batch_size=64")
    try:
        with pytest.raises(grpc.RpcError) as raised:
            server.predictions.Predict(retrieval_request([str(user) for user in range(65)]), timeout=10)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "--max_request_batch_size" in raised.value.details()
        status, answer = server.rest("/v1/models/retrieval:predict", {"instances": ["1"] * 65})
        assert status == 400 and "--max_request_batch_size" in answer["error"]
        assert server.rest("/v1/models/retrieval:predict", {"instances": ["1"] * 64})[0] == 200
    finally:
        server.close()


# 9. Metrics ---------------------------------------------------------------------------------------------------------

def test_metrics_label_only_the_models_the_server_serves(exports, tmp_path):
    """9: 20 requests naming 3 MB models grew /metrics to 35 MB; names the server does not serve are no label."""
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true path: "/metrics" }')
    server = single_model_server(exports / "retrieval", tmp_path, f"--monitoring_config_file={monitoring}")
    try:
        for index in range(20):
            with pytest.raises(grpc.RpcError):
                server.predictions.Predict(retrieval_request(["1"], model=f"{index}-" + "x" * 100_000), timeout=10)
        server.predictions.Predict(retrieval_request(["1"]), timeout=10)
        status, metrics = server.rest("/metrics")
    finally:
        server.close()
    assert status == 200 and len(metrics) < 10_000
    assert 'model_name="",model_version="",API="predict",entrypoint="GRPC",status="NOT_FOUND"} 20' in metrics
    assert 'model_name="retrieval"' in metrics


# 10. REST under hostile clients -------------------------------------------------------------------------------------

@pytest.fixture
def rest_server(exports, tmp_path):
    server = single_model_server(exports / "retrieval", tmp_path, "--rest_api_timeout_in_ms=500",
                                 "--rest_api_num_threads=2")
    yield server
    server.close()


def raw_http(server: RunningServer, data: bytes, read_timeout_s: float = 10) -> bytes:
    """Sends ``data`` as is and returns what the server answers before it closes the connection."""
    with socket.create_connection(("127.0.0.1", server.server.rest_port), timeout=read_timeout_s) as connection:
        connection.sendall(data)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer and _complete(answer):
                break
    return answer


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    length = re.search(rb"Content-Length: (\d+)", head)
    return bool(length) and len(body) >= int(length[1])


def post(path: str, body: bytes, *headers: str, framed: bool = True) -> bytes:
    """A raw POST; ``framed`` adds the body's true Content-Length unless ``headers`` frame it themselves."""
    if framed and not any(header.startswith(("Content-Length", "Transfer-Encoding")) for header in headers):
        headers = (*headers, f"Content-Length: {len(body)}")
    lines = [f"POST {path} HTTP/1.1", "Host: localhost", "Connection: close", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def test_idle_and_half_sent_rest_connections_are_closed_and_do_not_starve_the_workers(rest_server):
    """10: no socket timeout held a thread for ever; now they time out and a bounded pool answers the rest."""
    idle = [socket.create_connection(("127.0.0.1", rest_server.server.rest_port)) for _ in range(4)]
    half = socket.create_connection(("127.0.0.1", rest_server.server.rest_port))
    half.sendall(post("/v1/models/retrieval:predict", b'{"instances": [', "Content-Length: 100"))
    try:
        started = time.monotonic()
        assert rest_server.rest("/v1/models/retrieval:predict", {"instances": ["1"]})[0] == 200
        assert time.monotonic() - started < 8
        for connection in [*idle, half]:
            connection.settimeout(10)
            assert connection.recv(1024) == b""  # closed by the server, not left hanging
    finally:
        for connection in [*idle, half]:
            connection.close()


@pytest.mark.parametrize("request_bytes, status, reason", [
    (post("/v1/models/retrieval:predict", b'{"instances": ["1"]}', framed=False), b"411", b"Content-Length"),
    (post("/v1/models/retrieval:predict", b"{}", "Content-Length: -5"), b"400", b"Content-Length"),
    (post("/v1/models/retrieval:predict", b"{}", "Content-Length: 99999999999"), b"413", b"larger than the limit"),
    (post("/v1/models/retrieval:predict", b'{"instances": [{"b64": "!!not base64!!"}]}'), b"400", b"base64"),
    (post("/v1/models/retrieval:predict", b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"), b"400",
     b"nested too deeply"),
    (post("/v1/models/retrieval:predict", b'{"signature_name": ["x"], "instances": ["1"]}'), b"400",
     b"signature_name"),
    (post("/v1/models/retrieval:predict", b'{"instances": [{"b64": 5}]}'), b"400", b"b64"),
    (post("/v1/models/retrieval:predict", b'{"inputs": {"user_id": [["1", ["2"]]]}}'), b"400", b"user_id"),
])
def test_malformed_rest_bodies_get_400_411_or_413_not_500(rest_server, request_bytes, status, reason):
    """10: mis-sized, invalid base64, nested and mistyped JSON are the client's error, as TF Serving says."""
    answer = raw_http(rest_server, request_bytes)
    assert answer.split(b" ")[1] == status, answer[:300]
    assert reason in answer
    assert rest_server.rest("/v1/models/retrieval:predict", {"instances": ["1"]})[0] == 200


def test_a_chunked_rest_body_is_read_whole(rest_server):
    """10: a chunked body was read as empty."""
    body = json.dumps({"instances": ["1", "2"]}).encode()
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:7], body[7:])) + b"0\r\n\r\n"
    answer = raw_http(rest_server, post("/v1/models/retrieval:predict", chunked, "Transfer-Encoding: chunked"))
    assert answer.split(b" ")[1] == b"200", answer[:300]
    assert len(json.loads(answer.partition(b"\r\n\r\n")[2])["predictions"]) == 2


# 11. Ports and message sizes ----------------------------------------------------------------------------------------

def test_a_request_above_grpc_s_default_4_mb_is_served(exports, tmp_path):
    """11: the message limit is --grpc_max_message_bytes (64 MiB by default), not gRPC's 4 MB."""
    server = single_model_server(exports / "retrieval", tmp_path)
    try:
        large_ids = [str(user) + " " * 60_000 for user in range(100)]  # 6 MB of user ids
        response = server.predictions.Predict(retrieval_request(large_ids), timeout=30)
        assert tf.make_ndarray(response.outputs["item_ids"]).shape == (100, 10)
    finally:
        server.close()


def test_a_second_server_on_a_busy_port_is_refused_in_one_line_before_loading(exports, tmp_path):
    """11: SO_REUSEPORT let a second server share the port; a busy port printed a traceback after loading."""
    config = write_config(build_config([ModelEntry("retrieval", str(exports / "retrieval"))]),
                          tmp_path / "models.config")
    first = RunningServer(config)
    try:
        with pytest.raises(OSError, match="cannot bind the gRPC port"):
            ModelServer(build_flag_parser().parse_args([f"--port={first.server.grpc_port}",
                                                        f"--model_config_file={config}"]))
        finished = subprocess.run(
            [sys.executable, "-m", "tfrs_pipeline.serving.server", f"--port={free_port()}",
             f"--rest_api_port={first.server.rest_port}", f"--model_config_file={config}"],
            capture_output=True, text=True, timeout=120)
    finally:
        first.close()
    assert finished.returncode == 2
    assert "Traceback" not in finished.stderr and "loaded model" not in finished.stderr
    assert f"cannot bind the REST port 127.0.0.1:{first.server.rest_port}" in finished.stderr.splitlines()[-1]


# 12. ScaNN loads ----------------------------------------------------------------------------------------------------

class ToyScannRetrieval(tf.Module):
    """A real ScaNN index over 600 items (the ScaNN ops in the graph, as in the retrieval export)."""

    def __init__(self):
        super().__init__()
        random = np.random.default_rng(0)
        self.user_embeddings = tf.Variable(random.normal(size=(9, 8)), dtype=tf.float32)
        self.top_k = build_top_k("scann", tf.constant([str(item) for item in range(600)]),
                                 random.normal(size=(600, 8)).astype("float32"), 10)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id")])
    def serve(self, user_id):
        rows = tf.strings.to_hash_bucket_fast(user_id, 9)
        scores, item_ids = self.top_k(tf.gather(self.user_embeddings, rows), k=10)
        return {"item_ids": item_ids, "scores": scores}


def test_loading_scann_versions_does_not_leak_threads(tmp_path):
    """12: each ScaNN retrieval load kept one OS thread (23 to 33 over 10 loads)."""
    module = ToyScannRetrieval()
    built = tmp_path / "built"
    tf.saved_model.save(module, str(built), signatures={"serving_default": module.serve}, options=SCANN_SAVE_OPTIONS)
    base = tmp_path / "retrieval"
    write_version(base, lambda folder: shutil.copytree(built, folder, dirs_exist_ok=True), version=1)
    server = single_model_server(base, tmp_path)
    process = psutil.Process()

    def answered_by(version):
        return server.predictions.Predict(retrieval_request(["1"]), timeout=10).model_spec.version.value == version

    try:
        assert answered_by(1)
        threads_before = process.num_threads()
        for version in range(2, 8):
            write_version(base, lambda folder: shutil.copytree(built, folder, dirs_exist_ok=True), version=version)
            wait_until(lambda: answered_by(version), what=f"version {version} serving")
            wait_until(lambda: list(status_of(server, "retrieval").values()).count(AVAILABLE) == 1,
                       what="the previous version unloading")
        gc.collect()
        assert process.num_threads() - threads_before <= 2, "six ScaNN loads must not keep six threads"
    finally:
        server.close()


# 13. The client -----------------------------------------------------------------------------------------------------

def test_recommend_splits_batches_that_do_not_fit_and_reports_fallbacks(exports, tmp_path, capsys):
    """13: a batch above the server's limit was served the popular fallback with exit status 0."""
    items = tmp_path / "items.tsv"
    items.write_text("item_id\ttitle\tpopularity\n" + "".join(f"{item}\tItem {item}\t{200 - item}\n"
                                                              for item in range(100, 130)))
    server = RunningServer(write_config(build_config([
        ModelEntry("retrieval", str(exports / "retrieval")), ModelEntry("ranking", str(exports / "ranking"))]),
        tmp_path / "models.config"), "--max_request_batch_size=16")
    users = tmp_path / "users.txt"
    users.write_text("".join(f"{user % 8 + 1}\n" for user in range(100)) + "not-a-user\n")
    output = tmp_path / "answers.jsonl"
    try:
        target = f"--server=127.0.0.1:{server.server.grpc_port}"
        code = recommend.main([target, f"--user_ids_file={users}", f"--items={items}", "--batch_size=101",
                               "--canary_fraction=0", f"--output={output}"])
        answers = [json.loads(line) for line in output.read_text().splitlines()]
        assert code == 0 and {answer["source"] for answer in answers} == {"two_stage"}
        flagged = {answer["user_id"] for answer in answers if answer["unknown_user"]}
        assert "not-a-user" in flagged and not flagged & {"2", "3", "8"}  # (the toy answers unknown ids as user 1)
        with pytest.raises(SystemExit):
            recommend.main([target, "--user_id=2", "--k=0"])
        capsys.readouterr()
        code = recommend.main([target, "--user_id=2", f"--items={items}", "--retrieval_model=absent"])
        assert code == 3 and "1 of 1 answers are popular_fallback" in capsys.readouterr().err
    finally:
        server.close()


def test_a_user_the_export_knows_is_not_flagged_unknown(exports, tmp_path):
    """13: unknown users are flagged in the answer; known ones are not."""
    server = RunningServer(write_config(build_config([
        ModelEntry("retrieval", str(exports / "retrieval")), ModelEntry("ranking", str(exports / "ranking"))]),
        tmp_path / "models.config"))
    output = tmp_path / "answers.jsonl"
    try:
        assert recommend.main([f"--server=127.0.0.1:{server.server.grpc_port}", "--user_id=2", "--user_id=nobody",
                               "--canary_fraction=0", f"--output={output}"]) == 0
    finally:
        server.close()
    answers = {answer["user_id"]: answer for answer in map(json.loads, output.read_text().splitlines())}
    assert answers["nobody"]["unknown_user"] and not answers["2"]["unknown_user"]
