"""Benchmark: what session kNN costs a session request, in-process, with and without it side by side.

    python bench/session_latency.py --dataset=diginetica

Builds the session export over a benchmark's whole catalog and training sessions: the transformer
(session defaults, untrained: its weights do not change the work a request does), an exact top-k
index, and session kNN over every training session. Real test prefixes are sent to the signature
with and without the neighbours, in turn, round after round, so a change in machine load hits
both alike. Prints the median and 95th-percentile milliseconds per call, and their ratio.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import time

import numpy as np

import tfrs_pipeline  # noqa: F401  (selects Keras 2 first)

# isort: split
import tensorflow as tf

from tfrs_pipeline import index
from tfrs_pipeline.catalog import Catalog
from tfrs_pipeline.config import SessionConfig
from tfrs_pipeline.data.sessions import load_sessions
from tfrs_pipeline.export.savedmodels import SessionExport
from tfrs_pipeline.pipelines.session import build_model, session_neighbours

DATA_ROOT = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
BATCH_SIZES = (1, 32)
TOP_K = 100


def exports(data_dir: pathlib.Path) -> tuple[dict[str, SessionExport], list[np.ndarray]]:
    """{"transformer": ..., "transformer_and_session_knn": ...} over the data set, and its test prefixes."""
    data = load_sessions(data_dir, "srgnn")
    catalog = Catalog.by_popularity(data.train_sessions)
    config = SessionConfig()  # what train --task=session runs with
    model = build_model(config, catalog, data.train_sessions)
    top_k = index.build_top_k("brute_force", tf.constant(catalog.item_ids.astype(str)),
                              model.catalog_embeddings()[1:], TOP_K)
    neighbours = session_neighbours(config, len(catalog),
                                    [catalog.indices(items) for items in data.train_sessions], weight=3.0)
    popular = catalog.item_ids[:TOP_K]
    built = {name: SessionExport(model, top_k, popular, np.ones(TOP_K), TOP_K, with_neighbours)
             for name, with_neighbours in (("transformer", None), ("transformer_and_session_knn", neighbours))}
    return built, data.test_prefixes


def padded(prefixes: list[np.ndarray]) -> tf.Tensor:
    width = max(len(prefix) for prefix in prefixes)
    return tf.constant([list(prefix) + [""] * (width - len(prefix)) for prefix in prefixes])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="diginetica")
    parser.add_argument("--data_root", default=os.environ.get("TFRS_PIPELINE_TEST_DATA", str(DATA_ROOT)))
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    modules, prefixes = exports(pathlib.Path(args.data_root) / args.dataset)
    rng = np.random.default_rng(0)
    print(f"{args.dataset}: median / p95 ms per call, {args.rounds} rounds; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    for batch_size in BATCH_SIZES:
        timings = {name: [] for name in modules}
        for round_number in range(args.rounds + 5):
            batch = padded([prefixes[i] for i in rng.integers(0, len(prefixes), batch_size)])
            for name, module in modules.items():
                started = time.perf_counter()
                module.serve(batch)["item_ids"].numpy()
                if round_number >= 5:  # the first calls trace and warm up
                    timings[name].append(1000 * (time.perf_counter() - started))
        medians = {name: float(np.median(values)) for name, values in timings.items()}
        for name, values in timings.items():
            print(f"  batch {batch_size:>3} {name:<28} {medians[name]:7.2f} / {np.percentile(values, 95):7.2f}")
        print(f"  batch {batch_size:>3} ratio (with / without kNN): "
              f"{medians['transformer_and_session_knn'] / medians['transformer']:.2f}")


if __name__ == "__main__":
    main()
