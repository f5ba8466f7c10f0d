"""The fresh-feature path's costs: store reads, the store path against the user-id path, event to answer.

Measured on an export's feature repository (SQLite online store) and its models:

- ``fetch``: ``OnlineFeatureStore.users`` for 1 and for 16 users (one call), p50/p99 over many reads;
- ``server``: two-stage answers through ``tfrs-model-server`` at ``--clients`` closed-loop clients, by
  user id (the export's snapshot) and from the store (read features and history, then both models'
  ``query_features`` signatures), in the same run: p50/p99, requests/s, CPU per request;
- ``event_to_answer``: a user watches an item (``push_events``), then asks again: the push's latency,
  the next answer's, and whether that answer changed (it must, with no retraining).

    python bench/feature_store_latency.py --export_dir=export --clients=16 --duration_s=20 --out=bench_fresh.json
"""
import argparse
import json
import os
import pathlib
import shutil
import threading
import time

import numpy as np
import pandas as pd
from serving_load import ServerProcess, peak_rss_mb, run_load

from tfrs_pipeline.catalog import read_items_file
from tfrs_pipeline.contracts import DESCRIPTION_FILE, FEATURE_REPO_DIR, ITEMS_FILE
from tfrs_pipeline.features.events import push_events, served_item_ids
from tfrs_pipeline.features.store import OnlineFeatureStore
from tfrs_pipeline.serving.client import QUERY_STORE, GrpcTransport, TwoStageClient


def percentiles(seconds: list[float]) -> dict:
    milliseconds = 1e3 * np.asarray(seconds)
    return {"p50_ms": float(np.percentile(milliseconds, 50)), "p99_ms": float(np.percentile(milliseconds, 99)),
            "mean_ms": float(milliseconds.mean()), "reads": len(milliseconds)}


def fetch_latency(store: OnlineFeatureStore, user_ids: list[str], batch: int, reads: int) -> dict:
    rng = np.random.default_rng(batch)
    store.users(user_ids[:batch])  # the first read loads the registry
    timings = []
    for _ in range(reads):
        chosen = [user_ids[index] for index in rng.integers(len(user_ids), size=batch)]
        started = time.perf_counter()
        store.users(chosen)
        timings.append(time.perf_counter() - started)
    return percentiles(timings)


def recommender(port: int, repo: pathlib.Path, items: pathlib.Path, from_store: bool, k: int):
    """One client (own channel, own store connection) per load thread, as separate callers would have."""
    local = threading.local()
    catalog, _ = read_items_file(items)

    def recommend(user_id: str) -> None:
        if not hasattr(local, "client"):
            local.client = TwoStageClient(GrpcTransport(f"127.0.0.1:{port}"), catalog, timeout_s=5, retries=0)
            local.store = OnlineFeatureStore(repo) if from_store else None
        answer = (local.client.recommend_from_store(local.store, user_id, k) if from_store
                  else local.client.recommend(user_id, k))
        if answer.source != "two_stage" or (from_store and answer.query != QUERY_STORE) or len(answer.items) != k:
            raise RuntimeError(f"not a two-stage answer: {answer.source} {answer.query} {answer.error}")
    return recommend


def event_to_answer(port: int, repo: pathlib.Path, items: pathlib.Path, user_ids: list[str], k: int) -> dict:
    """For each user: push one event (an item from deep in the catalog), then ask again; did the answer change?"""
    store = OnlineFeatureStore(repo)
    catalog, _ = read_items_file(items)
    known = served_item_ids(store)
    client = TwoStageClient(GrpcTransport(f"127.0.0.1:{port}"), catalog, timeout_s=5, retries=0)
    pushes, answers, changed = [], [], 0
    for position, user in enumerate(store.users(user_ids)):
        before = [item.item_id for item in client.recommend_from_store(store, user.user_id, k).items]
        item = catalog.item_ids[(500 + 37 * position) % len(catalog)]
        event = pd.DataFrame({"user_id": [user.user_id], "item_id": [item],
                              "timestamp": [(user.last_event_seconds or 0) + 60]})
        started = time.perf_counter()
        push_events(store, event, known)
        pushed = time.perf_counter()
        after = [item.item_id for item in client.recommend_from_store(store, user.user_id, k).items]
        answers.append(time.perf_counter() - pushed)
        pushes.append(pushed - started)
        changed += after != before
    return {"users": len(user_ids), "answers_changed": changed, "push": percentiles(pushes),
            "next_answer": percentiles(answers),
            "event_to_changed_answer_p50_ms": float(np.percentile(1e3 * (np.array(pushes) + answers), 50))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--export_dir", default="export", help="a train export with its feature_repo/")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration_s", type=float, default=20)
    parser.add_argument("--warmup_s", type=float, default=3)
    parser.add_argument("--reads", type=int, default=2000, help="store reads per fetch figure")
    parser.add_argument("--event_users", type=int, default=50)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out", help="write the figures as JSON here")
    flags = parser.parse_args()
    export_dir = pathlib.Path(flags.export_dir).resolve()
    work = pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / f"feature_store_bench_{os.getpid()}"
    repo = _copy_of_repository(export_dir, work)  # pushes go to a copy, never to the export's own store
    items = repo.parent / ITEMS_FILE
    store = OnlineFeatureStore(repo)
    user_ids = [str(user_id) for user_id in pd.read_parquet(repo / "data" / "histories.parquet")["user_id"]]
    results = {"fetch_1_user": fetch_latency(store, user_ids, 1, flags.reads),
               "fetch_16_users": fetch_latency(store, user_ids, 16, flags.reads)}
    print(json.dumps(results), flush=True)
    server = ServerProcess(export_dir, batching=False)
    try:
        for mode, from_store in (("user_id", False), ("feature_store", True)):
            results[mode] = run_load(recommender(server.port, repo, items, from_store, flags.k), user_ids,
                                     flags.clients, flags.duration_s, flags.warmup_s, server_pids=(server.pid,))
            print(f"{mode}: {json.dumps(results[mode])}", flush=True)
        results["server_peak_rss_mb"] = peak_rss_mb(server.pid)
        results["event_to_answer"] = event_to_answer(server.port, repo, items, user_ids[:flags.event_users], flags.k)
    finally:
        server.stop()
    report = {"export_dir": str(export_dir), "clients": flags.clients, "duration_s": flags.duration_s,
              "cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "results": results}
    print(json.dumps(report, indent=2))
    if flags.out:
        pathlib.Path(flags.out).write_text(json.dumps(report, indent=2) + "\n")


def _copy_of_repository(export_dir: pathlib.Path, work: pathlib.Path) -> pathlib.Path:
    work.mkdir(parents=True, exist_ok=True)
    for name in (DESCRIPTION_FILE, ITEMS_FILE):
        shutil.copy(export_dir / name, work / name)
    shutil.copytree(export_dir / FEATURE_REPO_DIR, work / FEATURE_REPO_DIR, dirs_exist_ok=True)
    return work / FEATURE_REPO_DIR


if __name__ == "__main__":
    main()
