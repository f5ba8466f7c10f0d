"""TF Serving's REST API on the standard library's HTTP server.

Routes, as TF Serving documents them:

- ``GET  /v1/models/NAME[/versions/N | /labels/L]``: model status;
- ``GET  /v1/models/NAME[/versions/N | /labels/L]/metadata``: signatures;
- ``POST /v1/models/NAME[/versions/N | /labels/L]:predict``: ``{"instances": [...]}`` (row format,
  answered with ``predictions``) or ``{"inputs": ...}`` (columnar format, answered with ``outputs``),
  with an optional ``signature_name``;
- ``GET  <monitoring path>``: Prometheus metrics, when a monitoring config enables them;
- ``GET  /readyz``: 200 when every configured model has an available version, else 503 naming those
  without one (``GET /v1/models/NAME`` answers 200 even then: it reports, it does not judge).

Errors answer ``{"error": "..."}`` with the HTTP status TF Serving maps the gRPC code to; a body
that is not valid JSON, base64 or a tensor is a 400, a POST without a length 411, a body above the
message limit 413. A bounded pool of workers answers, and a connection that sends nothing (idle,
half a request, a body shorter than its ``Content-Length``) is closed after the request timeout,
so no client can hold a thread for ever.
"""
import concurrent.futures
import http.server
import json
import logging
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

READY_PATH = "/readyz"
log = logging.getLogger(__name__)
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


class HttpError(Exception):
    """A request refused at the HTTP level (length, size, framing), before any model is asked."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class RestHandler(http.server.BaseHTTPRequestHandler):
    """One HTTP request; the server object carries ``backend``, ``metrics_path`` and ``max_body_bytes``.

    ``timeout`` (set per server) becomes the socket timeout of every read and write.
    """

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
        except HttpError as error:
            status, content_type = error.status, "application/json"
            body = json.dumps({"error": error.message}).encode()
            self.close_connection = True  # the rest of the body, if any, is not read
        except TimeoutError:
            self.close_connection = True
            return  # the client stopped sending; nothing can be answered on a half-read request
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
        if self.path.split("?")[0] == READY_PATH:
            unavailable = self.server.backend.manager.unavailable_models()
            if unavailable:
                return 503, "application/json", json.dumps(
                    {"error": f"not ready: no available version of {', '.join(unavailable)}"}).encode()
            return 200, "application/json", b'{"ready": true}'

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
        if not isinstance(signature_name, str):
            raise invalid_argument(f"'signature_name' must be a string, got {json.dumps(signature_name)[:60]}")
        backend = self.server.backend
        signature_inputs = backend.manager.servable(name, version, label).signature_def(signature_name).inputs
        if ("instances" in request) == ("inputs" in request):
            raise invalid_argument("the request must have exactly one of 'instances' (row format) or 'inputs' "
                                   "(columnar format)")
        try:
            if "instances" in request:
                inputs = parse_row_format(request["instances"], signature_inputs)
            else:
                inputs = parse_columnar_format(request["inputs"], signature_inputs)
        except (TypeError, ValueError, RecursionError) as error:  # JSON of the wrong types or depth
            raise invalid_argument(f"the request's tensors cannot be read: {type(error).__name__}: {error}") from None
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
        try:
            request = json.loads(self._body() or b"null")
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise invalid_argument(f"the request body is not valid JSON: {error}") from None
        except RecursionError:
            raise invalid_argument("the request body is nested too deeply") from None
        if not isinstance(request, dict):
            raise invalid_argument("the request body must be a JSON object")
        return request

    def _body(self) -> bytes:
        """The request body, framed by ``Content-Length`` or chunked transfer encoding, within the size limit."""
        limit = self.server.max_body_bytes
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._chunked_body(limit)
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            raise HttpError(411, "a POST request needs a Content-Length header (or chunked transfer encoding)")
        if not length_text.strip().isdigit():
            raise HttpError(400, f"invalid Content-Length {length_text[:30]!r}")
        length = int(length_text)
        if length > limit:
            raise HttpError(413, f"the body of {length} bytes is larger than the limit of {limit}")
        body = self.rfile.read(length)
        if len(body) != length:
            raise HttpError(400, f"the body ended after {len(body)} of its {length} bytes")
        return body

    def _chunked_body(self, limit: int) -> bytes:
        chunks, size = [], 0
        while True:
            line = self.rfile.readline(1024)
            try:
                chunk_size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise HttpError(400, f"invalid chunk size line {line[:30]!r}") from None
            if chunk_size < 0 or size + chunk_size > limit:
                raise HttpError(413 if chunk_size > 0 else 400, f"the chunked body exceeds the limit of {limit}")
            if chunk_size == 0:
                while self.rfile.readline(1024).strip():  # trailers, up to the blank line
                    pass
                return b"".join(chunks)
            chunk = self.rfile.read(chunk_size)
            if len(chunk) != chunk_size or self.rfile.read(2) != b"\r\n":
                raise HttpError(400, "a chunk is shorter than its size line says")
            chunks.append(chunk)
            size += chunk_size


class RestServer(http.server.HTTPServer):
    """The REST front end: ``num_threads`` workers, each request read under ``timeout_s``.

    Args:
      max_body_bytes: the largest request body accepted (the server's message limit).
    """

    def __init__(self, address: tuple[str, int], backend: PredictionBackend, metrics_path: str | None,
                 num_threads: int = 16, timeout_s: float = 30.0, max_body_bytes: int = 64 << 20):
        self._workers = concurrent.futures.ThreadPoolExecutor(num_threads, thread_name_prefix="rest")
        handler = type("TimedRestHandler", (RestHandler,), {"timeout": timeout_s})
        super().__init__(address, handler)  # closes the server (and so the workers) if the port is busy
        self.backend = backend
        self.metrics_path = metrics_path
        self.max_body_bytes = max_body_bytes

    def process_request(self, request, client_address) -> None:
        self._workers.submit(self._process, request, client_address)

    def _process(self, request, client_address) -> None:
        try:
            self.finish_request(request, client_address)
        except OSError as error:  # a client that went away or timed out
            log.debug("REST connection from %s ended: %s", client_address, error)
        finally:
            self.shutdown_request(request)

    def server_close(self) -> None:
        super().server_close()
        self._workers.shutdown(wait=False, cancel_futures=True)
