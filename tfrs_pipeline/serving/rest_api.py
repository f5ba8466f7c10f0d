"""TF Serving's REST API on the standard library's HTTP server.

Routes, as TF Serving documents them:

- ``GET  /v1/models/NAME[/versions/N | /labels/L]``: model status;
- ``GET  /v1/models/NAME[/versions/N | /labels/L]/metadata``: signatures;
- ``POST /v1/models/NAME[/versions/N | /labels/L]:predict``: ``{"instances": [...]}`` (row format,
  answered with ``predictions``) or ``{"inputs": ...}`` (columnar format, answered with ``outputs``),
  with an optional ``signature_name``;
- ``GET  <monitoring path>``: Prometheus metrics, when a monitoring config enables them.

Errors answer ``{"error": "..."}`` with the HTTP status TF Serving maps the gRPC code to.
"""
import http.server
import json
import re
import socket

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format

from tfrs_pipeline.contracts import SERVING_SIGNATURE
from tfrs_pipeline.serving import tensors
from tfrs_pipeline.serving.errors import ServingError, invalid_argument, not_found
from tfrs_pipeline.serving.grpc_service import model_status_response, signature_def_map
from tfrs_pipeline.serving.prediction import PredictionBackend

MODEL_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)"
                        r"(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
                        r"(?P<suffix>/metadata|:predict)?/?$")


def parse_row_format(instances, signature_inputs) -> dict[str, np.ndarray]:
    """``instances``: one value per example (single input) or one ``{input: value}`` object per example."""
    if not isinstance(instances, list) or not instances:
        raise invalid_argument("'instances' must be a non-empty list")
    names = sorted(signature_inputs)
    if all(isinstance(instance, dict) and set(instance) != {"b64"} for instance in instances):
        if any(set(instance) != set(names) for instance in instances):
            raise invalid_argument(f"every instance must have exactly the inputs {names}")
        columns = {name: [instance[name] for instance in instances] for name in names}
    elif len(names) == 1:
        columns = {names[0]: instances}
    else:
        raise invalid_argument(f"the signature has several inputs {names}: each instance must be an object "
                               "naming them")
    return {name: tensors.from_json(name, value, tf.as_dtype(signature_inputs[name].dtype))
            for name, value in columns.items()}


def parse_columnar_format(inputs, signature_inputs) -> dict[str, np.ndarray]:
    """``inputs``: ``{input: batched value}``, or the batched value itself for a single-input signature."""
    names = sorted(signature_inputs)
    if not isinstance(inputs, dict) or set(inputs) == {"b64"}:
        if len(names) != 1:
            raise invalid_argument(f"the signature has several inputs {names}: 'inputs' must be an object")
        inputs = {names[0]: inputs}
    return {name: tensors.from_json(name, value, tf.as_dtype(signature_inputs[name].dtype))
            if name in signature_inputs else np.array(value, dtype=object)
            for name, value in inputs.items()}


def format_row_outputs(outputs: dict[str, np.ndarray]) -> list:
    rows = {name: tensors.to_json(value) for name, value in outputs.items()}
    if len(rows) == 1:
        return next(iter(rows.values()))
    batch_sizes = {len(value) for value in rows.values()}
    if len(batch_sizes) != 1:
        raise invalid_argument("outputs have different batch sizes; ask for the columnar format ('inputs')")
    return [{name: value[index] for name, value in rows.items()} for index in range(batch_sizes.pop())]


class RestHandler(http.server.BaseHTTPRequestHandler):
    """One HTTP request; the server object carries ``backend`` and ``metrics_path``."""

    protocol_version = "HTTP/1.1"
    server_version = "tfrs-model-server"

    def setup(self):
        super().setup()
        # Headers and body go out in two writes; without TCP_NODELAY, Nagle's algorithm holds the body
        # until the client's delayed ACK (up to 200 ms on Linux).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format, *args):  # noqa: A002  (the base class's signature)
        pass  # request logs would drown the server's own log; metrics count requests instead

    def do_GET(self):
        self._answer(self._get)

    def do_POST(self):
        self._answer(self._post)

    def _answer(self, route) -> None:
        try:
            status, content_type, body = route()
        except ServingError as error:
            status, content_type = error.http_status, "application/json"
            body = json.dumps({"error": error.message}).encode()
        except Exception as error:  # a bug answers 500 and leaves the server up
            status, content_type = 500, "application/json"
            body = json.dumps({"error": f"{type(error).__name__}: {error}"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _get(self):
        if self.server.metrics_path and self.path.split("?")[0] == self.server.metrics_path:
            return 200, "text/plain; version=0.0.4", self.server.backend.metrics.render().encode()
        name, version, label, suffix = self._route()
        manager = self.server.backend.manager
        if suffix == ":predict":
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED, "predict needs a POST request")
        if suffix == "/metadata":
            servable = manager.servable(name, version, label)
            body = {"model_spec": {"name": servable.name, "signature_name": "", "version": str(servable.version)},
                    "metadata": {"signature_def": json_format.MessageToDict(
                        signature_def_map(servable), preserving_proto_field_name=True)}}
            return 200, "application/json", json.dumps(body).encode()
        status = model_status_response(manager, name, version, label)
        body = json_format.MessageToJson(status, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True)
        return 200, "application/json", body.encode()

    def _post(self):
        name, version, label, suffix = self._route()
        if suffix != ":predict":
            raise not_found(f"no POST route for {self.path}; use /v1/models/NAME[/versions/N|/labels/L]:predict")
        request = self._json_body()
        signature_name = request.get("signature_name") or SERVING_SIGNATURE
        backend = self.server.backend
        signature_inputs = backend.manager.servable(name, version, label).signature_def(signature_name).inputs
        if ("instances" in request) == ("inputs" in request):
            raise invalid_argument("the request must have exactly one of 'instances' (row format) or 'inputs' "
                                   "(columnar format)")
        if "instances" in request:
            inputs = parse_row_format(request["instances"], signature_inputs)
        else:
            inputs = parse_columnar_format(request["inputs"], signature_inputs)
        _, outputs = backend.predict(name, version, label, signature_name, inputs, (), entrypoint="REST")
        if "instances" in request:
            body = {"predictions": format_row_outputs(outputs)}
        else:
            columns = {output: tensors.to_json(value) for output, value in outputs.items()}
            body = {"outputs": next(iter(columns.values())) if len(columns) == 1 else columns}
        return 200, "application/json", json.dumps(body).encode()

    def _route(self) -> tuple[str, int | None, str | None, str | None]:
        match = MODEL_PATH.match(self.path.split("?")[0])
        if not match:
            raise not_found(f"no route for {self.path}; the API is /v1/models/NAME[/versions/N|/labels/L]"
                            "[/metadata|:predict]")
        version = int(match["version"]) if match["version"] else None
        return match["name"], version, match["label"], match["suffix"]

    def _json_body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            request = json.loads(self.rfile.read(length) or b"null")
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise invalid_argument(f"the request body is not valid JSON: {error}") from None
        if not isinstance(request, dict):
            raise invalid_argument("the request body must be a JSON object")
        return request


class RestServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], backend: PredictionBackend, metrics_path: str | None):
        super().__init__(address, RestHandler)
        self.backend = backend
        self.metrics_path = metrics_path
