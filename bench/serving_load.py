"""Two-stage recommendations under load: through the model server versus the SavedModels in-process.

Each of ``--clients`` concurrent clients repeatedly asks for one user's recommendations the way
production does: one Predict to the ``recommender`` model (retrieve, rank, top k in one graph), or
the two-call path: retrieval Predict (the export's top 100) -> ranking Predict on those 100
candidates -> top 10. The same run measures these ways of answering:

- ``in_process``: the recommender SavedModel loaded in this process and called directly (the floor:
  model compute only); ``in_process_two_calls``: the retrieval and ranking SavedModels;
- ``in_process_batching``: the server's own model path without gRPC: the recommender's ``Servable``
  behind the server's ``Batcher`` (``serving_config/batching.config``), called by the client threads.
  Its gap to ``server_lean_batching`` is what the gRPC front end costs once requests are batched;
- ``server``: ``tfrs-model-server`` in its own process, called over gRPC on loopback by
  ``TwoStageClient`` (what a production caller pays: serialization, gRPC, the server's checks);
  ``server_two_calls``: the same client asking retrieval and ranking apart;
- ``server_batching``: the one-call path with ``--enable_batching`` and ``serving_config/batching.config``;
- ``server_lean`` (and ``server_lean_batching``): the one-call path asked by a load generator that
  costs little, so the figure measures the server: requests serialized once before the run, sent as
  bytes by ``--clients`` coroutines on gRPC's asyncio API (C-core channels, one per client), answers
  checked for ``k`` item ids without building numpy arrays. The Python-client modes stay beside it:
  they are what a Python caller pays;
- ``grpc_floor``: the lean generator against a Python gRPC server set up as ours whose Predict only
  echoes the request: gRPC's own cost per call in Python, the part of ``server_lean`` that is not
  inference and not our code.

The difference between ``server`` and ``in_process`` is the server's own overhead. Reports p50, p90,
p99 and mean latency, throughput and errors (any answer that is not a two-stage answer counts), CPU
per request, and the server's peak resident memory (what a replica must be given).

    python bench/serving_load.py --export_dir=export --clients=16 --duration_s=20 --out=bench_serving.json
"""
import argparse
import asyncio
import concurrent.futures
import itertools
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import threading
import time

import grpc
import numpy as np

import tfrs_pipeline  # noqa: F401  (Keras 2 before TensorFlow loads)

# isort: split
import tensorflow as tf
from scann import scann_ops  # noqa: F401  (the ScaNN retrieval export needs its ops)
from tensorflow_serving.apis import predict_pb2

from tfrs_pipeline.contracts import (
    ITEM_IDS_OUTPUT,
    RANKING_MODEL,
    RECOMMENDER_MODEL,
    RETRIEVAL_MODEL,
    SERVING_SIGNATURE,
    USER_ID_INPUT,
)
from tfrs_pipeline.export.versioning import existing_versions
from tfrs_pipeline.serving.batching import Batcher
from tfrs_pipeline.serving.client import GrpcTransport, TwoStageClient
from tfrs_pipeline.serving.servable import Servable
from tfrs_pipeline.serving.server import batching_options, build_flag_parser, grpc_threads, tensorflow_session_config

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
MODES = ("in_process", "in_process_two_calls", "in_process_batching", "server", "server_two_calls", "server_batching",
         "server_lean", "server_lean_batching", "grpc_floor")
BATCHING_CONFIG = REPO_ROOT / "serving_config/batching.config"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class InProcessTwoStage:
    """The floor: the SavedModels called directly, no serialization, no network."""

    def __init__(self, export_dir: pathlib.Path, one_call: bool):
        self._recommender = _latest_signature(export_dir / RECOMMENDER_MODEL) if one_call else None
        self._retrieval = None if one_call else _latest_signature(export_dir / RETRIEVAL_MODEL)
        self._ranking = None if one_call else _latest_signature(export_dir / RANKING_MODEL)

    def recommend(self, user_id: str, k: int) -> list[str]:
        users = tf.constant([user_id])
        if self._recommender is not None:
            return self._recommender(user_id=users)["item_ids"].numpy()[0, :k].astype(str).tolist()
        candidates = self._retrieval(user_id=users)["item_ids"]
        scores = self._ranking(user_id=users, item_ids=candidates)["scores"].numpy()[0]
        return [candidates[0, index].numpy().decode() for index in np.argsort(-scores)[:k]]


class InProcessBatched:
    """The server's model path without gRPC: the latest recommender ``Servable`` behind a ``Batcher``."""

    def __init__(self, export_dir: pathlib.Path):
        base_path = export_dir / RECOMMENDER_MODEL
        version = existing_versions(base_path)[-1]
        # The sessions and batches of a server started as ServerProcess(batching=True) starts it.
        server_flags = build_flag_parser().parse_args(
            ["--enable_batching", f"--batching_parameters_file={BATCHING_CONFIG}"])
        self._servable = Servable(RECOMMENDER_MODEL, version, base_path / str(version),
                                  tensorflow_session_config(server_flags))
        self._batcher = Batcher(lambda inputs: self._servable.call(SERVING_SIGNATURE, inputs),
                                batching_options(server_flags))

    def recommend(self, user_id: str, k: int) -> list[str]:
        outputs = self._batcher.run({USER_ID_INPUT: np.array([user_id.encode()], dtype=object)})
        return [item.decode() for item in outputs[ITEM_IDS_OUTPUT][0, :k]]

    def stop(self) -> None:
        self._batcher.stop()


def _latest_signature(base_path: pathlib.Path):
    return tf.saved_model.load(str(base_path / str(existing_versions(base_path)[-1]))).signatures["serving_default"]


class ServerProcess:
    """``python -m tfrs_pipeline.serving.server`` on free loopback ports, until ``stop``."""

    def __init__(self, export_dir: pathlib.Path, batching: bool, port: int | None = None,
                 extra_flags: tuple[str, ...] = ()):
        """``port``: listen there beside the other processes given it (SO_REUSEPORT); by default a free one.
        ``extra_flags``: more server flags (``--grpc_max_threads=4``, ...)."""
        self.port = port or free_port()
        self._log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        flags = [f"--port={self.port}", f"--model_config_file={export_dir / 'models.config'}",
                 "--file_system_poll_wait_seconds=0", *(["--grpc_reuse_port"] if port else [])]
        if batching:
            flags += ["--enable_batching", f"--batching_parameters_file={BATCHING_CONFIG}"]
        flags += extra_flags  # last, so that they override the flags above
        self._process = subprocess.Popen([sys.executable, "-m", "tfrs_pipeline.serving.server", *flags],
                                         stdout=self._log, stderr=self._log, cwd=REPO_ROOT)
        deadline = time.monotonic() + 300
        while "Running gRPC ModelServer" not in pathlib.Path(self._log.name).read_text():
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start:\n" + pathlib.Path(self._log.name).read_text())
            time.sleep(0.2)

    @property
    def pid(self) -> int:
        return self._process.pid

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=60)
        os.unlink(self._log.name)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    """The most resident memory a process has used so far (Linux ``/proc``: VmHWM), in MiB."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def run_load(recommend, user_ids: list[str], clients: int, duration_s: float, warmup_s: float,
             rate: float | None = None, server_pids: tuple[int, ...] = ()) -> dict:
    """``clients`` threads call ``recommend(user_id)``; latencies of calls started after the warm-up count.

    Without ``rate`` each client sends its next request as soon as the previous one returns (closed
    loop: the maximum throughput, where latency is mostly queueing: 16 clients / throughput). With
    ``rate`` (requests per second, all clients together) requests go out on a fixed schedule and a
    request's latency runs from its scheduled time (open loop, no coordinated omission): the latency
    a service sees at that traffic.

    CPU milliseconds per request (this process, and the server's) do not depend on what else the
    machine runs, unlike latencies: ``2000 / cpu_ms`` is the throughput two idle cores could reach.
    """
    latencies, errors, lock = [], [], threading.Lock()
    recommend(user_ids[0])  # first calls initialize lazily (graph functions, ScaNN searcher): not under load
    cpu_before = cpu_seconds(server_pids)
    calls = itertools.count()
    started = time.perf_counter()
    measure_from, stop_at = started + warmup_s, started + warmup_s + duration_s

    def client(index: int) -> None:
        rng = np.random.default_rng(index)
        for request_number in itertools.count():
            now = time.perf_counter()
            if rate:
                now = started + (request_number * clients + index) / rate
                time.sleep(max(0.0, now - time.perf_counter()))
            if now >= stop_at:
                return
            user_id = user_ids[rng.integers(len(user_ids))]
            next(calls)
            try:
                recommend(user_id)
                problem = None
            except Exception as error:  # counted, reported, and the load goes on
                problem = f"{type(error).__name__}: {error}"
            finished = time.perf_counter()
            if now >= measure_from:
                with lock:
                    latencies.append(finished - now)
                    if problem:
                        errors.append(problem)

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return figures(latencies, errors, next(calls), cpu_before, cpu_seconds(server_pids), duration_s)


def cpu_seconds(server_pids: tuple[int, ...]) -> dict[str, float]:
    """CPU seconds so far of this process (the clients) and of the server processes."""
    return {"client": process_cpu_seconds(os.getpid()), "server": sum(process_cpu_seconds(pid) for pid in server_pids)}


def figures(latencies: list[float], errors: list[str], total_calls: int, cpu_before: dict[str, float],
            cpu_after: dict[str, float], duration_s: float) -> dict:
    """Throughput, latency percentiles and CPU per request of one measured load."""
    cpu_ms = {f"{name}_cpu_ms_per_request": 1e3 * (cpu_after[name] - cpu_before[name]) / total_calls
              for name in (("client", "server") if cpu_after["server"] else ("client",))}
    if not latencies:
        raise RuntimeError(f"no request finished within {duration_s} s after the warm-up")
    latencies_ms = 1e3 * np.array(latencies)
    return {"requests": len(latencies), "errors": len(errors), "first_errors": errors[:3],
            "throughput_rps": len(latencies) / duration_s,
            "p50_ms": float(np.percentile(latencies_ms, 50)), "p90_ms": float(np.percentile(latencies_ms, 90)),
            "p99_ms": float(np.percentile(latencies_ms, 99)), "mean_ms": float(latencies_ms.mean()), **cpu_ms}


def run_lean_load(ports: list[int], user_ids: list[str], clients: int, duration_s: float, warmup_s: float,
                  k: int | None, server_pids: tuple[int, ...]) -> dict:
    """Closed-loop load on the recommender by a generator whose own cost per request is small.

    Requests are serialized before the run; each of ``clients`` coroutines sends the bytes on its own
    C-core channel (to ``ports`` in turn) and checks that the answer holds ``k`` item ids (parsing the
    response message, no numpy), so nearly all the CPU a request costs is the server's. ``k`` None
    accepts any answer (the echo server's).
    """
    return figures(*lean_load(ports, user_ids, clients, duration_s, warmup_s, k, server_pids), duration_s)


def lean_load(ports: list[int], user_ids: list[str], clients: int, duration_s: float, warmup_s: float,
              k: int | None, server_pids: tuple[int, ...]) -> tuple[list[float], list[str], int, dict, dict]:
    """``run_lean_load``'s measurements before they are summed up: latencies (s) and errors of the requests
    sent after the warm-up, all requests sent, and CPU seconds before and after (``cpu_seconds``)."""
    requests = [recommender_request(user_id) for user_id in user_ids]

    async def load() -> tuple[list[float], list[str], int, dict, dict]:
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{ports[index % len(ports)]}") for index in range(clients)]
        calls = [channel.unary_unary(PREDICT_METHOD) for channel in channels]  # bytes in, bytes out
        latencies, errors = [], []
        total_calls = 0
        await calls[0](requests[0], timeout=60)  # the first call initializes lazily: not under load
        cpu_before = cpu_seconds(server_pids)
        started = time.perf_counter()
        measure_from, stop_at = started + warmup_s, started + warmup_s + duration_s

        async def client(index: int) -> None:
            nonlocal total_calls
            rng = np.random.default_rng(index)
            while (sent := time.perf_counter()) < stop_at:
                total_calls += 1
                try:
                    answer = await calls[index](requests[rng.integers(len(requests))], timeout=5)
                    problem = None if k is None else _short_answer(answer, k)
                except grpc.aio.AioRpcError as error:
                    problem = f"{error.code().name}: {error.details()}"
                if sent >= measure_from:
                    latencies.append(time.perf_counter() - sent)
                    if problem:
                        errors.append(problem)

        await asyncio.gather(*(client(index) for index in range(clients)))
        cpu_after = cpu_seconds(server_pids)
        for channel in channels:
            await channel.close()
        return latencies, errors, total_calls, cpu_before, cpu_after

    return asyncio.run(load())


def _short_answer(response: bytes, k: int) -> str | None:
    items = len(predict_pb2.PredictResponse.FromString(response).outputs["item_ids"].string_val)
    return None if items >= k else f"{items} item ids, expected at least {k}"


class EchoServer:
    """The gRPC floor: a Python gRPC server set up as ours (same thread pool, same options) whose
    Predict returns the request's bytes, in its own process. What it costs per call is what gRPC in
    Python costs before any of our code runs."""

    def __init__(self):
        self.port = free_port()
        self._process = subprocess.Popen([sys.executable, __file__, f"--serve_echo_on={self.port}"],
                                         stdout=subprocess.PIPE, text=True)
        if self._process.stdout.readline().strip() != "ready":
            raise RuntimeError("the echo server did not start")
        self.pid = self._process.pid

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=60)


def serve_echo(port: int) -> None:
    defaults = build_flag_parser().parse_args([])
    threads = grpc_threads(defaults.grpc_max_threads, None)  # the unbatched server's
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=threads),
                         options=[("grpc.max_receive_message_length", defaults.grpc_max_message_bytes),
                                  ("grpc.max_send_message_length", defaults.grpc_max_message_bytes)])
    echo = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(PREDICT_METHOD.split("/")[1],
                                                                          {"Predict": echo})])
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def recommender_request(user_id: str) -> bytes:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = RECOMMENDER_MODEL
    request.model_spec.signature_name = SERVING_SIGNATURE
    request.inputs[USER_ID_INPUT].CopyFrom(tf.make_tensor_proto([user_id]))
    return request.SerializeToString()


def server_recommender(ports: list[int], k: int, one_call: bool = True, timeout_s: float = 5):
    """One ``TwoStageClient`` (own gRPC channel) per client thread, as separate callers would have.

    With several server processes, client threads are spread over them round-robin: the client-side
    balancing a headless Kubernetes Service gives gRPC callers (deploy/kubernetes/).
    """
    local = threading.local()
    next_port = itertools.cycle(ports)
    lock = threading.Lock()

    def recommend(user_id: str):
        if not hasattr(local, "client"):
            with lock:
                port = next(next_port)
            local.client = TwoStageClient(GrpcTransport(f"127.0.0.1:{port}"), timeout_s=timeout_s, retries=0,
                                          recommender_model=RECOMMENDER_MODEL if one_call else None)
        answer = local.client.recommend(user_id, k)
        if answer.source != "two_stage" or len(answer.items) != k:
            raise RuntimeError(f"not a two-stage answer: {answer.source} {answer.error}")
    return recommend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--export_dir", default="export", help="a train export (retrieval/, ranking/, models.config)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration_s", type=float, default=20)
    parser.add_argument("--warmup_s", type=float, default=3)
    parser.add_argument("--rate", type=float, help="open loop: requests per second (all clients); default closed loop")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--num_users", type=int, default=6040, help="user ids 1..N are sampled uniformly")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {MODES}")
    parser.add_argument("--server_processes", default="1",
                        help="comma-separated server process counts to measure the server modes with, e.g. 1,2")
    parser.add_argument("--shared_port", action="store_true",
                        help="several processes listen on one port (SO_REUSEPORT: the kernel spreads connections) "
                             "instead of one port each, spread by the clients")
    parser.add_argument("--server_flag", action="append", default=[],
                        help="a flag for every server process, e.g. --server_flag=--grpc_max_threads=4 (repeatable)")
    parser.add_argument("--out", help="write the figures as JSON here")
    parser.add_argument("--serve_echo_on", type=int, help=argparse.SUPPRESS)  # the grpc_floor mode's server
    flags = parser.parse_args()
    if flags.serve_echo_on:
        return serve_echo(flags.serve_echo_on)
    export_dir = pathlib.Path(flags.export_dir).resolve()
    user_ids = [str(user) for user in range(1, flags.num_users + 1)]
    results = {}
    for mode in flags.modes.split(","):
        if mode == "grpc_floor":
            echo = EchoServer()
            try:
                results[mode] = run_lean_load([echo.port], user_ids, flags.clients, flags.duration_s, flags.warmup_s,
                                              None, (echo.pid,))
            finally:
                echo.stop()
            print(f"{mode}: {json.dumps(results[mode])}", flush=True)
            continue
        if mode == "in_process_batching":
            batched = InProcessBatched(export_dir)
            try:
                results[mode] = run_load(lambda user_id: batched.recommend(user_id, flags.k), user_ids, flags.clients,
                                         flags.duration_s, flags.warmup_s, flags.rate)
            finally:
                batched.stop()
            print(f"{mode}: {json.dumps(results[mode])}", flush=True)
            continue
        if mode.startswith("in_process"):
            model = InProcessTwoStage(export_dir, one_call=mode == "in_process")
            results[mode] = run_load(lambda user_id: model.recommend(user_id, flags.k), user_ids, flags.clients,
                                     flags.duration_s, flags.warmup_s, flags.rate)
            print(f"{mode}: {json.dumps(results[mode])}", flush=True)
            continue
        for processes in (int(count) for count in flags.server_processes.split(",")):
            label = mode if processes == 1 else f"{mode} x{processes} processes" + (
                " on one port" if flags.shared_port else "")
            port = free_port() if flags.shared_port and processes > 1 else None
            servers = [ServerProcess(export_dir, batching=mode.endswith("_batching"), port=port,
                                     extra_flags=tuple(flags.server_flag)) for _ in range(processes)]
            server_pids = tuple(server.pid for server in servers)
            try:
                if mode.startswith("server_lean"):
                    results[label] = run_lean_load(sorted({server.port for server in servers}), user_ids,
                                                   flags.clients, flags.duration_s, flags.warmup_s, flags.k,
                                                   server_pids)
                else:
                    one_call = mode != "server_two_calls"
                    # Every process answers its first request slowly (graphs, the ScaNN searcher): warm them all,
                    # each warm-up on a new connection, which a shared port hands to any of its processes.
                    for warmed_port in [server.port for server in servers] * (4 if port else 1):
                        server_recommender([warmed_port], flags.k, one_call, timeout_s=60)(user_ids[0])
                    recommend = server_recommender(sorted({server.port for server in servers}), flags.k, one_call)
                    results[label] = run_load(recommend, user_ids, flags.clients, flags.duration_s, flags.warmup_s,
                                              flags.rate, server_pids)
                results[label]["server_peak_rss_mb"] = max(peak_rss_mb(server.pid) for server in servers)
            finally:
                for server in servers:
                    server.stop()
            print(f"{label}: {json.dumps(results[label])}", flush=True)
    report = {"clients": flags.clients, "rate": flags.rate, "duration_s": flags.duration_s,
              "server_flags": flags.server_flag,
              "export_dir": str(export_dir),
              "cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "results": results}
    traffic = f"open loop at {flags.rate:g} req/s" if flags.rate else "closed loop"
    print(f"\n{flags.clients} concurrent clients ({traffic}), two-stage (retrieve, rank, top {flags.k}), "
          f"{flags.duration_s:.0f} s per mode, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")
    print("| mode | requests | errors | throughput (req/s) | p50 ms | p90 ms | p99 ms | mean ms "
          "| CPU ms/request (client + server) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for mode, figures in results.items():
        cpu = f"{figures['client_cpu_ms_per_request']:.1f} + {figures.get('server_cpu_ms_per_request', 0):.1f}"
        print(f"| {mode} | {figures['requests']} | {figures['errors']} | {figures['throughput_rps']:.1f} | "
              f"{figures['p50_ms']:.1f} | {figures['p90_ms']:.1f} | {figures['p99_ms']:.1f} | {figures['mean_ms']:.1f} "
              f"| {cpu} |")
    if flags.out:
        pathlib.Path(flags.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
