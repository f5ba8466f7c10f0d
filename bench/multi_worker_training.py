"""Multi-worker training on one machine: ``--distribution=multi_worker`` with local workers and their TF_CONFIG.

    python bench/multi_worker_training.py --data_dir=/tmp/synthetic_tiny --work_dir=/tmp/multi_worker \
        [--workers=2] [--train_flag=--epochs=1 ...]

What a cluster does with one ``TF_CONFIG`` per machine (Kubernetes operators and Vertex AI write it),
here with one process per worker on localhost ports: each runs the same ``python -m
tfrs_pipeline.train`` command with ``--distribution=multi_worker``, and `tf.distribute`'s
MultiWorkerMirroredStrategy keeps their retrieval models in step over gRPC (each worker takes its
share of every global batch; the gradients are all-reduced). They share one export folder
(``<work_dir>/export``), which only the chief (worker 0) writes; the other workers print their
retrieval losses and exit. The workers trained the same weights when their retrieval training
losses agree epoch for epoch, which the script checks and prints with each worker's wall time
beside a one-worker run of the same command.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
NON_CHIEF_LOSSES = re.compile(r"is not the chief: .*\(loss per epoch: ([^)]*)\)")


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for probe in sockets:
        probe.bind(("127.0.0.1", 0))
    ports = [probe.getsockname()[1] for probe in sockets]
    for probe in sockets:
        probe.close()
    return ports


def train_command(data_dir: str, export_dir: pathlib.Path, extra_flags: list[str], distribution: str) -> list[str]:
    return [sys.executable, "-m", "tfrs_pipeline.train", f"--data_dir={data_dir}", f"--export_dir={export_dir}",
            f"--distribution={distribution}", "--verbose=0", *extra_flags]


def run_workers(data_dir: str, work_dir: pathlib.Path, workers: int, extra_flags: list[str]) -> dict:
    """Trains with ``workers`` local processes; returns each one's seconds and retrieval losses."""
    addresses = [f"localhost:{port}" for port in free_ports(workers)]
    children = []
    started = time.perf_counter()
    for index in range(workers):
        tf_config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CONFIG": json.dumps(tf_config),
               "CUDA_VISIBLE_DEVICES": ""}
        log = open(work_dir / f"worker_{index}.log", "w")
        children.append((subprocess.Popen(train_command(data_dir, work_dir / "export", extra_flags, "multi_worker"),
                                          stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT), log))
    results = []
    for index, (child, log) in enumerate(children):
        child.wait()
        log.close()
        if child.returncode:
            tail = (work_dir / f"worker_{index}.log").read_text()[-3000:]
            raise RuntimeError(f"worker {index} failed ({child.returncode}):\n{tail}")
        losses = (_losses(work_dir / "export") if index == 0
                  else _printed_losses((work_dir / f"worker_{index}.log").read_text()))
        results.append({"seconds": round(time.perf_counter() - started, 1), **losses})
    return {"workers": results}


def run_single(data_dir: str, work_dir: pathlib.Path, extra_flags: list[str]) -> dict:
    started = time.perf_counter()
    with open(work_dir / "single.log", "w") as log:
        subprocess.run(train_command(data_dir, work_dir / "single", extra_flags, "default"), check=True, stdout=log,
                       stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, cwd=REPO_ROOT)
    return {"seconds": round(time.perf_counter() - started, 1), **_losses(work_dir / "single")}


def _losses(export_dir: pathlib.Path) -> dict:
    metrics = json.loads((export_dir / "metrics.json").read_text())
    return {"retrieval_loss": metrics["training"]["retrieval"]["loss"],
            "retrieval_hr@10": metrics.get("evaluation", {}).get("retrieval", {}).get("hr@10")}


def _printed_losses(log: str) -> dict:
    """A non-chief worker's retrieval losses, from the line it prints instead of writing an export."""
    found = NON_CHIEF_LOSSES.search(log)
    if not found:
        raise RuntimeError(f"no loss line from a non-chief worker:\n{log[-3000:]}")
    return {"retrieval_loss": [float(loss) for loss in found.group(1).split(", ")]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/multi_worker_training.py",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True, help="as train --data_dir")
    parser.add_argument("--work_dir", required=True, help="export folders and logs")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--train_flag", action="append", default=[], help="extra flag for train, repeatable")
    parser.add_argument("--skip_single", action="store_true", help="do not train the one-worker run to compare")
    flags = parser.parse_args(argv)
    work_dir = pathlib.Path(flags.work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    report = run_workers(flags.data_dir, work_dir, flags.workers, flags.train_flag)
    losses = [worker["retrieval_loss"] for worker in report["workers"]]
    report["workers_agree"] = all(abs(a - b) <= 1e-4 * abs(a) for loss in losses[1:] for a, b in zip(losses[0], loss))
    if not flags.skip_single:
        report["single"] = run_single(flags.data_dir, work_dir, flags.train_flag)
    print(json.dumps(report, indent=2))
    return 0 if report["workers_agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
