"""``tfrs-model-server``: a TF-Serving-compatible model server (gRPC + REST), flag for flag.

Run it like ``tensorflow_model_server``::

    python -m tfrs_pipeline.serving.server --port=8500 --rest_api_port=8501 \\
        --model_config_file=serving_config/models.config --model_config_file_poll_wait_seconds=60 \\
        --monitoring_config_file=serving_config/monitoring.config

or for one model: ``--model_name=retrieval --model_base_path=export/retrieval``. It binds to
127.0.0.1 unless ``--host`` says otherwise. The same config files and clients work against real
TF Serving replicas; this server exists because the binary cannot be installed everywhere.

Its ports are bound before any model loads, so a busy port is a one-line error at once, and a
second server on a port already served is refused (gRPC's SO_REUSEPORT would otherwise let both
listen and split the traffic) unless ``--grpc_reuse_port`` asks for it.
"""
import argparse
import concurrent.futures
import logging
import os
import pathlib
import signal
import sys
import threading
from typing import Callable

import grpc
from google.protobuf import text_format
from tensorflow.core.protobuf import config_pb2

from tfrs_pipeline.export.serving_config import ModelEntry, ServingConfigError, build_config, read_config
from tfrs_pipeline.serving.batching import BatchingOptions
from tfrs_pipeline.serving.errors import ServingError
from tfrs_pipeline.serving.grpc_service import ReloadPolicy, add_services
from tfrs_pipeline.serving.metrics import ServerMetrics
from tfrs_pipeline.serving.model_manager import ModelManager
from tfrs_pipeline.serving.prediction import PredictionBackend
from tfrs_pipeline.serving.rest_api import RestServer
from tfrs_pipeline.serving.servable import session_config_for
from tfrs_pipeline.serving.server_protos import BatchingParameters, MonitoringConfig

log = logging.getLogger("tfrs_pipeline.serving")
DEFAULT_METRICS_PATH = "/monitoring/prometheus/metrics"


def parse_bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def at_least(lowest: int) -> Callable[[str], int]:
    """An argparse type: an integer not below ``lowest``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"expected an integer of at least {lowest}, got {value}")
        return value
    return parse


def build_flag_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfrs-model-server", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    flag = parser.add_argument
    flag("--port", type=int, default=8500, help="gRPC port (0 picks a free one)")
    flag("--rest_api_port", type=int, default=0, help="REST port; 0 disables the REST API")
    flag("--host", default="127.0.0.1", help="address to bind (use 0.0.0.0 to serve other machines)")
    flag("--model_name", default="default", help="name of the single model (with --model_base_path)")
    flag("--model_base_path", default="", help="base path of a single model; ignored with --model_config_file")
    flag("--model_config_file", default="", help="ModelServerConfig text file (models, policies, labels)")
    flag("--model_config_file_poll_wait_seconds", type=float, default=0,
         help="seconds between reads of --model_config_file; 0 reads it once")
    flag("--file_system_poll_wait_seconds", type=float, default=1,
         help="seconds between looks for new version folders; 0 looks once at start-up")
    flag("--allow_version_labels_for_unavailable_models", type=parse_bool, nargs="?", const=True, default=False,
         help="accept labels that point to versions that are not loaded")
    flag("--enable_batching", type=parse_bool, nargs="?", const=True, default=False,
         help="merge concurrent requests into batches")
    flag("--batching_parameters_file", default="", help="BatchingParameters text file")
    flag("--monitoring_config_file", default="", help="MonitoringConfig text file (Prometheus metrics)")
    flag("--grpc_max_threads", type=int, default=0,
         help="threads answering gRPC requests; 0: 4 per CPU (TF Serving's default), plus max_batch_size with "
              "--enable_batching, since a request waiting for its batch holds a thread")
    flag("--grpc_max_message_bytes", type=int, default=64 << 20,
         help="largest gRPC message received or sent, and largest REST body (gRPC's own default is 4 MiB)")
    flag("--grpc_reuse_port", type=parse_bool, nargs="?", const=True, default=False,
         help="let several servers listen on the same gRPC port (SO_REUSEPORT)")
    flag("--max_request_batch_size", type=int, default=1024,
         help="most examples one Predict request may carry (INVALID_ARGUMENT above it); 0: no limit")
    flag("--max_num_load_retries", type=int, default=5, help="retries of a version that failed to load")
    flag("--tensorflow_graph_rewrites", type=parse_bool, nargs="?", const=True, default=True,
         help="let TensorFlow's graph optimizer (Grappler) rewrite each signature when a version loads, as "
              "TF Serving does; false loads faster in less memory")
    flag("--tensorflow_intra_op_parallelism", type=at_least(0), default=0,
         help="threads one TensorFlow op may split its work over; 0: one per CPU. With several server "
              "processes on one machine, 1 keeps each process's model work on one core")
    flag("--tensorflow_inter_op_parallelism", type=at_least(-1), default=0,
         help="threads that run a signature's ready TensorFlow ops; 0: one per CPU, -1: each request's "
              "ops in the thread that runs it")
    flag("--tensorflow_thread_spinning", type=parse_bool, nargs="?", const=True, default=False,
         help="let TensorFlow's idle pool threads spin for more work before they sleep; on a server they take "
              "the CPU that gRPC's threads need")
    flag("--load_retry_interval_micros", type=int, default=60_000_000, help="time between those retries")
    flag("--rest_api_num_threads", type=int, default=16, help="threads answering REST requests")
    flag("--rest_api_timeout_in_ms", type=int, default=30_000,
         help="a REST connection that sends nothing for this long is closed")
    flag("--allow_remote_config_reload", type=parse_bool, nargs="?", const=True, default=False,
         help="accept HandleReloadConfigRequest from peers other than loopback")
    flag("--model_base_path_roots", default="",
         help="comma-separated folders that base paths of a gRPC config reload must lie in "
              "(default: the folders holding the start-up config's base paths)")
    return parser


def read_text_proto(path: str, message_class, what: str):
    try:
        return text_format.Parse(pathlib.Path(path).read_text(), message_class())
    except OSError as error:
        raise ServingConfigError(path, f"cannot read the {what} file: {error.strerror}") from None
    except text_format.ParseError as error:
        raise ServingConfigError(path, f"not a {what} text proto: {error}") from None


def model_server_config(flags: argparse.Namespace):
    if flags.model_config_file:
        return read_config(flags.model_config_file)
    if flags.model_base_path:
        return build_config([ModelEntry(flags.model_name, str(pathlib.Path(flags.model_base_path).absolute()))])
    raise ServingConfigError("<flags>", "give --model_config_file, or --model_name and --model_base_path")


def tensorflow_session_config(flags: argparse.Namespace) -> config_pb2.ConfigProto:
    """The session configuration every loaded version runs with, from the ``--tensorflow_*`` flags."""
    return session_config_for(flags.tensorflow_graph_rewrites, flags.tensorflow_intra_op_parallelism,
                              flags.tensorflow_inter_op_parallelism, flags.tensorflow_thread_spinning)


def batching_options(flags: argparse.Namespace) -> BatchingOptions | None:
    if not flags.enable_batching:
        return None
    if not flags.batching_parameters_file:
        return BatchingOptions()
    parameters = read_text_proto(flags.batching_parameters_file, BatchingParameters, "BatchingParameters")
    return BatchingOptions.from_proto(parameters)


def grpc_threads(max_threads: int, batching: BatchingOptions | None) -> int:
    """``--grpc_max_threads``, or for 0 its default: threads beyond a few per core only contend for the interpreter.

    Each request in the server holds a thread until it is answered, so with batching a batch can only
    fill if its rows' requests all hold one while the batch threads run.
    """
    if max_threads:
        return max_threads
    # CPUs as TF Serving counts them: those this process may run on (a pinned container's, not the host's).
    schedulable_cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 4 * schedulable_cpus + (batching.max_batch_size if batching else 0)


def metrics_path(flags: argparse.Namespace) -> str | None:
    if not flags.monitoring_config_file:
        return None
    config = read_text_proto(flags.monitoring_config_file, MonitoringConfig, "MonitoringConfig")
    if not config.prometheus_config.enable:
        return None
    return config.prometheus_config.path or DEFAULT_METRICS_PATH


def base_path_roots(flags: argparse.Namespace, config) -> tuple[pathlib.Path, ...]:
    """Where a gRPC reload may point base paths: ``--model_base_path_roots``, or the start-up models' folders."""
    if flags.model_base_path_roots:
        folders = [folder for folder in flags.model_base_path_roots.split(",") if folder.strip()]
    else:
        folders = [str(pathlib.Path(model.base_path).absolute().parent) for model in config.model_config_list.config]
    return tuple(sorted({pathlib.Path(folder.strip()).resolve() for folder in folders}))


class ModelServer:
    """The running server: model manager, gRPC server and (optionally) REST server. Usable in-process."""

    def __init__(self, flags: argparse.Namespace):
        self.flags = flags
        config = model_server_config(flags)
        self.manager = ModelManager(flags.allow_version_labels_for_unavailable_models,
                                    on_unload=lambda servable: self.backend.forget(servable),
                                    max_num_load_retries=flags.max_num_load_retries,
                                    load_retry_interval_s=flags.load_retry_interval_micros / 1e6,
                                    session_config=tensorflow_session_config(flags))
        batching = batching_options(flags)
        self.backend = PredictionBackend(self.manager, ServerMetrics(), batching, flags.max_request_batch_size)
        self.metrics_path = metrics_path(flags)
        message_limits = [("grpc.max_receive_message_length", flags.grpc_max_message_bytes),
                          ("grpc.max_send_message_length", flags.grpc_max_message_bytes),
                          ("grpc.so_reuseport", int(flags.grpc_reuse_port))]
        threads = grpc_threads(flags.grpc_max_threads, batching)
        self.grpc_server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=threads),
                                       options=message_limits)
        add_services(self.grpc_server, self.backend, ReloadPolicy(flags.allow_remote_config_reload,
                                                                  base_path_roots(flags, config)))
        try:
            self.grpc_port = self.grpc_server.add_insecure_port(f"{flags.host}:{flags.port}")
        except RuntimeError:  # grpcio raises it for an address in use
            self.grpc_port = 0
        if self.grpc_port == 0:
            raise OSError(f"cannot bind the gRPC port {flags.host}:{flags.port}: is another server running there?")
        self.rest_server = None
        if flags.rest_api_port:
            try:
                self.rest_server = RestServer((flags.host, flags.rest_api_port), self.backend, self.metrics_path,
                                              flags.rest_api_num_threads, flags.rest_api_timeout_in_ms / 1000,
                                              flags.grpc_max_message_bytes)
            except OSError as error:
                self.grpc_server.stop(None)
                raise OSError(f"cannot bind the REST port {flags.host}:{flags.rest_api_port}: "
                              f"{error.strerror or error}") from None
        self.rest_port = self.rest_server.server_address[1] if self.rest_server else None
        try:
            self.manager.apply_config(config)  # the ports are ours: now the (slow) model loads
        except BaseException:
            self._close_ports()
            raise

    def start(self) -> "ModelServer":
        config_source = (lambda: read_config(self.flags.model_config_file)) if self.flags.model_config_file else None
        self.manager.start_polling(self.flags.file_system_poll_wait_seconds, config_source,
                                   self.flags.model_config_file_poll_wait_seconds)
        self.grpc_server.start()
        log.info("Running gRPC ModelServer at %s:%d ...", self.flags.host, self.grpc_port)
        if self.rest_server:
            threading.Thread(target=self.rest_server.serve_forever, daemon=True, name="rest").start()
            log.info("Exporting HTTP/REST API at %s:%d ...", self.flags.host, self.rest_port)
        return self

    def stop(self) -> None:
        self.manager.stop()
        if self.rest_server:
            self.rest_server.shutdown()
        self._close_ports()
        self.backend.close()

    def _close_ports(self) -> None:
        if self.rest_server:
            self.rest_server.server_close()
        self.grpc_server.stop(grace=1).wait()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    flags = build_flag_parser().parse_args(argv)
    try:
        server = ModelServer(flags).start()
    except (ServingConfigError, ServingError, OSError) as error:
        print(f"tfrs-model-server: {error}", file=sys.stderr)
        return 2
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    stopped.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
