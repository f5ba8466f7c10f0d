"""Benchmark: in-process latency of the retrieval signatures of several exports, side by side.

    python bench/signature_latency.py two_blocks=/tmp/bench_a/default four_blocks=/tmp/bench_b/default

Each argument is a label and an export folder of ``python -m tfrs_pipeline.train`` (its
``retrieval/<latest>/``). ``serving_default`` looks up precomputed per-user state; ``query_features``
runs the query tower on the request's history, here full (200 slots), so the tower's depth shows.
Requests are for real users of the data set the exports were trained on (``--data_dir``, read as
``train`` reads it): their ids, and for ``query_features`` their own features, named and typed by
each export's description (``schema.json``), as the client builds them. The exports are called in
turn, round after round, so a change in machine load hits all alike. Prints the median milliseconds
per call.
"""
from __future__ import annotations

import argparse
import functools
import os
import pathlib
import statistics
import time

import numpy as np
import pandas as pd

import tfrs_pipeline  # noqa: F401  (selects Keras 2 first)

# isort: split
import tensorflow as tf
from scann import scann_ops  # noqa: F401  (registers the ScaNN ops the retrieval export uses)

from tfrs_pipeline.catalog import read_items_file
from tfrs_pipeline.contracts import DESCRIPTION_FILE, ITEMS_FILE, USER_ID_INPUT, ExportDescription
from tfrs_pipeline.data.dataset import load_dataset
from tfrs_pipeline.export.versioning import existing_versions
from tfrs_pipeline.features.arrays import concatenate_rows
from tfrs_pipeline.serving.client import fresh_feature_inputs

BATCH_SIZES = (1, 16)
DEFAULT_DATA_DIR = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-1m"


def load_retrieval(export_dir: pathlib.Path):
    base = export_dir / "retrieval"
    return tf.saved_model.load(str(base / str(existing_versions(base)[-1]))).signatures


def requests(description: ExportDescription, users: pd.DataFrame, items: list[str], batch_size: int,
             history_length: int, rng: np.random.Generator) -> dict:
    """Inputs of both signatures for ``batch_size`` of the data set's users, each with a full history of ``items``."""
    sampled = users.iloc[rng.integers(0, len(users), batch_size)]
    names = [spec.name for spec in description.features.user_features]
    times = 1_000_000_000 + 60 * np.arange(history_length)  # a minute apart, for exports whose towers read time
    rows = [fresh_feature_inputs(description, dict(zip(names, values)), rng.choice(items, history_length), times)
            for values in sampled[names].itertuples(index=False)]
    batch = functools.reduce(concatenate_rows, rows)  # one batch, sets and histories padded to the widest
    return {
        "serving_default": {USER_ID_INPUT: tf.constant(sampled["user_id"].to_numpy(dtype=str))},
        "query_features": {name: tf.constant(values) for name, values in batch.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exports", nargs="+", help="label=export_dir")
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--history_length", type=int, default=200)
    parser.add_argument("--data_dir", default=os.environ.get("TFRS_PIPELINE_DATA_DIR", str(DEFAULT_DATA_DIR)),
                        help="the data set the exports were trained on (any --data_dir of train): its users")
    args = parser.parse_args()
    exports = {label: pathlib.Path(path) for label, path in (argument.split("=", 1) for argument in args.exports)}
    signatures = {label: load_retrieval(path) for label, path in exports.items()}
    descriptions = {label: ExportDescription.read(path / DESCRIPTION_FILE) for label, path in exports.items()}
    items = {label: list(read_items_file(path / ITEMS_FILE)[0].item_ids)  # most popular first
             for label, path in exports.items()}
    users = load_dataset(args.data_dir).users
    rng = np.random.default_rng(0)
    cases = [(label, name, batch_size, inputs)
             for batch_size in BATCH_SIZES
             for label in exports
             for name, inputs in requests(descriptions[label], users, items[label], batch_size, args.history_length,
                                          rng).items()]
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
