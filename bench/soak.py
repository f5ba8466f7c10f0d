"""Soak: the server under steady load while versions are published, some corrupt, and labels move by command.

For ``--duration_s`` (30 minutes by default), ``--clients`` concurrent clients ask for two-stage
recommendations through ``TwoStageClient`` over gRPC, a share of users on the ``canary`` label; a
quarter of the clients retrieve from ``retrieval_brute_force``, whose ``latest`` policy loads every
new version as it appears. Meanwhile, every ``--publish_every_s`` (a minute), a new version of every
model is published as a unit (``versioning.publish_together``, copies of the export's newest
versions) and moved to ``canary`` with ``python -m tfrs_pipeline.rollout canary``, and the canary is
promoted a minute later; every ``--corrupt_every``-th version (the fifth) is corrupt: published, but
never labelled, so only ``retrieval_brute_force`` tries (and retries) to load it.

Reports failed requests (any answer that is not two-stage, any exception: the target is 0), p50 and
p99 latency per minute, and the server's resident memory and thread count over time (they must stay
flat), as JSON.

    python bench/soak.py --export_dir=export --out=soak.json                  # 30 minutes
    python bench/soak.py --export_dir=export --duration_s=600 --out=soak.json  # 10 minutes
"""
import argparse
import json
import pathlib
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import psutil

import tfrs_pipeline  # noqa: F401  (Keras 2 before TensorFlow loads)
from tfrs_pipeline import rollout
from tfrs_pipeline.catalog import read_items_file
from tfrs_pipeline.contracts import ITEMS_FILE, RANKING_MODEL, RETRIEVAL_BRUTE_FORCE_MODEL, RETRIEVAL_MODEL
from tfrs_pipeline.export.serving_config import ModelEntry, build_config, read_config, write_config
from tfrs_pipeline.export.versioning import existing_versions, publish_together
from tfrs_pipeline.serving.client import GrpcTransport, PredictError, TwoStageClient

MODELS = (RETRIEVAL_MODEL, RETRIEVAL_BRUTE_FORCE_MODEL, RANKING_MODEL)
KEEP_VERSIONS = 4  # a retention job: older versions that no label names are deleted from disk
# ML-1M's user ids; an export trained on fewer users answers the others as new users (still two-stage).
USER_IDS = [str(user) for user in range(1, 6041)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def prepare(export_dir: pathlib.Path, work_dir: pathlib.Path) -> pathlib.Path:
    """A working copy of the export's newest versions as version 1, and a config with labels on 1."""
    for name in MODELS:
        source = export_dir / name / str(existing_versions(export_dir / name)[-1])
        shutil.copytree(source, work_dir / name / "1")
    entries = [ModelEntry(RETRIEVAL_MODEL, str(work_dir / RETRIEVAL_MODEL), version_policy="specific", versions=(1,),
                          version_labels={"stable": 1, "canary": 1}),
               ModelEntry(RETRIEVAL_BRUTE_FORCE_MODEL, str(work_dir / RETRIEVAL_BRUTE_FORCE_MODEL)),
               ModelEntry(RANKING_MODEL, str(work_dir / RANKING_MODEL), version_policy="specific", versions=(1,),
                          version_labels={"stable": 1, "canary": 1})]
    return write_config(build_config(entries), work_dir / "models.config")


def publish(work_dir: pathlib.Path, version: int, corrupt: bool) -> None:
    """Publishes ``version`` of every model together: a copy of version 1, or a corrupt SavedModel."""
    def writer(name):
        if corrupt:
            return lambda folder: (pathlib.Path(folder) / "saved_model.pb").write_bytes(b"corrupt")
        return lambda folder: shutil.copytree(work_dir / name / "1", folder, dirs_exist_ok=True)
    publish_together({work_dir / name: writer(name) for name in MODELS}, version)


def prune(work_dir: pathlib.Path, labelled: set[int]) -> None:
    for name in MODELS:
        versions = existing_versions(work_dir / name)
        for version in versions[:-KEEP_VERSIONS]:
            if version != 1 and version not in labelled:
                shutil.rmtree(work_dir / name / str(version), ignore_errors=True)


class Load:
    """``clients`` threads asking for recommendations until stopped; latencies and failures per minute."""

    def __init__(self, port: int, items_path: pathlib.Path, user_ids: list[str], clients: int):
        self.failures: list[tuple[float, str]] = []
        self.latencies: list[tuple[float, float]] = []  # (seconds since start, latency in seconds)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._started = time.monotonic()
        catalog = read_items_file(items_path)[0]
        self._threads = [threading.Thread(target=self._client, daemon=True, args=(
            TwoStageClient(GrpcTransport(f"127.0.0.1:{port}"), catalog, canary_fraction=0.3, timeout_s=10,
                           retrieval_model=RETRIEVAL_BRUTE_FORCE_MODEL if index % 4 == 3 else RETRIEVAL_MODEL),
            user_ids, index)) for index in range(clients)]

    def start(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def _client(self, client: TwoStageClient, user_ids: list[str], seed: int) -> None:
        generator = random.Random(seed)
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                answer = client.recommend(generator.choice(user_ids), k=10)
                problem = "" if answer.source == "two_stage" else f"{answer.source}: {answer.error}"
            except Exception as error:  # noqa: BLE001  (every failure is counted, whatever it is)
                problem = f"{type(error).__name__}: {error}"
            finished = time.monotonic()
            with self._lock:
                self.latencies.append((finished - self._started, finished - started))
                if problem:
                    self.failures.append((finished - self._started, problem))

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--export_dir", required=True, help="a `python -m tfrs_pipeline.train` export")
    parser.add_argument("--duration_s", type=float, default=1800)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--publish_every_s", type=float, default=60)
    parser.add_argument("--corrupt_every", type=int, default=5)
    parser.add_argument("--out", help="write the report here as JSON (default: standard output)")
    flags = parser.parse_args(argv)
    export_dir = pathlib.Path(flags.export_dir)
    work_dir = pathlib.Path(tempfile.mkdtemp(prefix="soak-"))
    config_path = prepare(export_dir, work_dir)
    port = free_port()
    log = open(work_dir / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "tfrs_pipeline.serving.server", f"--port={port}", f"--model_config_file={config_path}",
         "--model_config_file_poll_wait_seconds=2", "--file_system_poll_wait_seconds=2",
         "--load_retry_interval_micros=20000000"], stdout=log, stderr=subprocess.STDOUT)
    server_process = psutil.Process(server.pid)
    samples, events = [], []
    try:
        _wait_for_ready(port)
        started = time.monotonic()
        load = Load(port, export_dir / ITEMS_FILE, USER_IDS, flags.clients).start()
        version, next_publish, next_sample = 1, started + flags.publish_every_s, started
        canary_pending = None
        while time.monotonic() - started < flags.duration_s:
            now = time.monotonic()
            if now >= next_sample:
                samples.append({"t_s": round(now - started), "rss_mib": round(server_process.memory_info().rss / 2**20),
                                "threads": server_process.num_threads()})
                next_sample += 10
            if now >= next_publish:
                next_publish += flags.publish_every_s
                version += 1
                corrupt = version % flags.corrupt_every == 0
                publish(work_dir, version, corrupt)
                events.append({"t_s": round(now - started), "published": version, "corrupt": corrupt})
                if canary_pending is not None:  # the previous canary served a minute: promote it
                    _rollout(["promote"], config_path)
                    events.append({"t_s": round(time.monotonic() - started), "promoted": canary_pending})
                    canary_pending = None
                if not corrupt:
                    _rollout(["canary", f"--version={version}"], config_path)
                    events.append({"t_s": round(time.monotonic() - started), "canary": version})
                    canary_pending = version
                prune(work_dir, {version, canary_pending or version} | _labelled(config_path))
            time.sleep(0.5)
        load.stop()
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
    report = _report(flags, load, samples, events)
    text = json.dumps(report, indent=2)
    if flags.out:
        pathlib.Path(flags.out).write_text(text + "\n")
    print(json.dumps({key: report[key] for key in ("requests", "failed_requests", "p99_ms_per_minute",
                                                   "rss_mib", "threads")}, indent=1))
    shutil.rmtree(work_dir, ignore_errors=True)
    return 0


def _labelled(config_path: pathlib.Path) -> set[int]:
    return {version for model in read_config(config_path).model_config_list.config
            for version in model.version_labels.values()}


def _rollout(arguments: list[str], config_path: pathlib.Path) -> None:
    if rollout.main([*arguments, f"--model_config_file={config_path}"]) != 0:
        raise RuntimeError(f"rollout {arguments} failed")


def _wait_for_ready(port: int, timeout_s: float = 600) -> None:
    client = TwoStageClient(GrpcTransport(f"127.0.0.1:{port}"), timeout_s=10)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if client.recommend("1").source == "two_stage":
                return
        except PredictError:
            pass
        time.sleep(1)
    raise RuntimeError("the server did not start serving")


def _report(flags, load: Load, samples: list[dict], events: list[dict]) -> dict:
    latencies = np.array(load.latencies)
    minutes = (latencies[:, 0] // 60).astype(int)
    per_minute = [{"minute": int(minute), "requests": int((minutes == minute).sum()),
                   "p50_ms": round(float(np.percentile(latencies[minutes == minute, 1], 50)) * 1000, 1),
                   "p99_ms": round(float(np.percentile(latencies[minutes == minute, 1], 99)) * 1000, 1)}
                  for minute in np.unique(minutes)]
    return {
        "settings": vars(flags),
        "requests": len(load.latencies),
        "failed_requests": len(load.failures),
        "failures": load.failures[:20],
        "p99_ms_per_minute": [row["p99_ms"] for row in per_minute],
        "per_minute": per_minute,
        "rss_mib": [sample["rss_mib"] for sample in samples],
        "threads": [sample["threads"] for sample in samples],
        "samples": samples,
        "events": events,
    }


if __name__ == "__main__":
    sys.exit(main())
