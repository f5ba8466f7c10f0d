"""Benchmark: how long dropping a spent tf.data iterator takes, with tf.data's autotuning on and off.

    python bench/iterator_teardown.py --trials=4 --seconds_per_batch=0.5

Keras's ``fit`` makes a fresh iterator each epoch and drops the last one. With autotuning on, the
dropped iterator waits for its tuning thread, which sleeps between tunings for up to a minute; a run
that misses its wake-up stands idle at the epoch boundary (docs/benchmarks.md, "the waits between
epochs"). Each trial reads a generator-fed, prefetched dataset shaped like the training batches for
about a minute, as an epoch does, then times dropping its iterator. The two settings alternate, so
a slow spell of the machine falls on both.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import tensorflow as tf

import tfrs_pipeline  # noqa: F401
from tfrs_pipeline.pipelines.common import untuned

BATCH_SHAPE = (32, 200)


def _teardown_seconds(dataset: tf.data.Dataset, seconds_per_batch: float) -> float:
    """Reads ``dataset`` to its end at ``seconds_per_batch``, then times dropping the iterator."""
    iterator = iter(dataset)
    for _ in iterator:
        time.sleep(seconds_per_batch)
    start = time.perf_counter()
    del iterator
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4, help="trials per setting")
    parser.add_argument("--batches", type=int, default=120, help="batches per trial's epoch")
    parser.add_argument("--seconds_per_batch", type=float, default=0.5, help="the consumer's time per batch")
    args = parser.parse_args()

    def batches():
        for _ in range(args.batches):
            yield np.zeros(BATCH_SHAPE, np.int64)

    tuned = tf.data.Dataset.from_generator(batches, output_signature=tf.TensorSpec([None, None], tf.int64)).prefetch(2)
    datasets = {"autotuned": tuned, "untuned": untuned(tuned)}
    seconds: dict[str, list[float]] = {name: [] for name in datasets}
    for trial in range(args.trials):
        for name, dataset in datasets.items():
            seconds[name].append(_teardown_seconds(dataset, args.seconds_per_batch))
            print(f"trial {trial} {name:9s}: dropping the spent iterator took {seconds[name][-1]:6.2f} s", flush=True)
    print(json.dumps({"batches": args.batches, "seconds_per_batch": args.seconds_per_batch, "teardown_s": seconds}))


if __name__ == "__main__":
    main()
