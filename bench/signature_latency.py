"""Benchmark: in-process latency of the retrieval signatures of several exports, side by side.

    python bench/signature_latency.py two_blocks=/tmp/bench_a/default four_blocks=/tmp/bench_b/default

Each argument is a label and an export folder of ``python -m tfrs_pipeline.train`` (its
``retrieval/<latest>/``). ``serving_default`` looks up precomputed per-user state; ``query_features``
runs the query tower on the request's history, here full (200 slots), so the tower's depth shows.
The exports are called in turn, round after round, so a change in machine load hits all alike.
Prints the median milliseconds per call.
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import time

import numpy as np

import tfrs_pipeline  # noqa: F401  (selects Keras 2 first)

# isort: split
import tensorflow as tf
from scann import scann_ops  # noqa: F401  (registers the ScaNN ops the retrieval export uses)

from tfrs_pipeline.catalog import read_items_file
from tfrs_pipeline.contracts import ITEMS_FILE
from tfrs_pipeline.export.versioning import existing_versions

BATCH_SIZES = (1, 16)
MOVIELENS_USERS = 6040  # user ids 1..6040, all known to a full MovieLens-1M export


def load_retrieval(export_dir: pathlib.Path):
    base = export_dir / "retrieval"
    return tf.saved_model.load(str(base / str(existing_versions(base)[-1]))).signatures


def requests(items: list[str], batch_size: int, history_length: int, rng: np.random.Generator) -> dict:
    """Inputs of both signatures for ``batch_size`` known users, with a full history of catalog ``items``."""
    history = rng.choice(items, size=(batch_size, history_length))
    users = rng.integers(1, MOVIELENS_USERS + 1, batch_size)
    return {
        "serving_default": {"user_id": tf.constant([str(user) for user in users])},
        "query_features": {
            "history_item_ids": tf.constant(history),
            "user_gender": tf.constant([True] * batch_size),
            "bucketized_user_age": tf.constant([25.0] * batch_size),
            "user_occupation_label": tf.constant([4] * batch_size, tf.int64),
            "user_zip_code": tf.constant(["55455"] * batch_size),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exports", nargs="+", help="label=export_dir")
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--history_length", type=int, default=200)
    args = parser.parse_args()
    exports = dict(argument.split("=", 1) for argument in args.exports)
    signatures = {label: load_retrieval(pathlib.Path(path)) for label, path in exports.items()}
    items = {label: list(read_items_file(pathlib.Path(path) / ITEMS_FILE)[0].item_ids)  # most popular first
             for label, path in exports.items()}
    rng = np.random.default_rng(0)
    cases = [(label, name, batch_size, inputs)
             for batch_size in BATCH_SIZES
             for label in exports
             for name, inputs in requests(items[label], batch_size, args.history_length, rng).items()]
    timings = {case[:3]: [] for case in cases}
    for round_index in range(args.rounds + 1):
        for label, name, batch_size, inputs in cases:
            start = time.perf_counter()
            signatures[label][name](**inputs)["item_ids"].numpy()
            if round_index:  # the first round traces and warms up
                timings[(label, name, batch_size)].append(1000 * (time.perf_counter() - start))
    print("| export | signature | batch | median ms per call |\n| --- | --- | ---: | ---: |")
    for (label, name, batch_size), values in timings.items():
        print(f"| {label} | {name} | {batch_size} | {statistics.median(values):.2f} |")


if __name__ == "__main__":
    main()
