"""Benchmark: the whole-catalog softmax loss and its gradient, TensorFlow's op against the fused one.

    python bench/softmax_benchmark.py [--positions=25600 --items=3706 --dim=64 --repeats=10]

The default shape is one MovieLens-1M training batch at the default settings (128 users x 200
history slots, every movie a candidate). Both losses run in the same process, alternately, on the
same inputs; the script prints a markdown table of median step times, the ratio, and the largest
difference between the two losses and gradients.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

import tfrs_pipeline  # noqa: F401

# isort: split
import tensorflow as tf

from tfrs_pipeline.models.sampled_softmax import full_softmax_cross_entropy


def library_loss(queries, items, labels, bonus):
    logits = tf.matmul(queries, items, transpose_b=True)
    if bonus is not None:
        logits += bonus
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))


def timed_step(loss_fn, labels, bonus):
    """A compiled step returning the loss and its gradients with respect to queries and items."""

    @tf.function
    def step(queries, items):
        with tf.GradientTape() as tape:
            tape.watch([queries, items])
            loss = loss_fn(queries, items, labels, bonus)
        return loss, tape.gradient(loss, [queries, items])

    return step


def measure(args: argparse.Namespace, with_bonus: bool) -> dict:
    rng = np.random.default_rng(0)
    queries = tf.constant(rng.normal(size=(args.positions, args.dim)), tf.float32)
    items = tf.constant(rng.normal(size=(args.items, args.dim)) * 0.3, tf.float32)
    labels = tf.constant(rng.integers(0, args.items, args.positions))
    bonus = tf.constant(rng.normal(size=(args.positions, args.items)), tf.float32) if with_bonus else None
    steps = {"library": timed_step(library_loss, labels, bonus),
             "fused": timed_step(full_softmax_cross_entropy, labels, bonus)}
    outputs = {name: step(queries, items) for name, step in steps.items()}  # traces; also compared
    times = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step(queries, items)
            times[name].append(time.perf_counter() - start)
    difference = max(float(tf.reduce_max(tf.abs(a - b)))
                     for a, b in zip(tf.nest.flatten(outputs["library"]), tf.nest.flatten(outputs["fused"])))
    medians = {name: float(np.median(values)) for name, values in times.items()}
    return {"bonus": with_bonus, "median_s": medians, "speedup": medians["library"] / medians["fused"],
            "max_abs_difference": difference}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=25600)
    parser.add_argument("--items", type=int, default=3706)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()
    results = [measure(args, with_bonus) for with_bonus in (False, True)]
    print(f"| [{args.positions}, {args.items}] logits | library (s) | fused (s) | speed-up | max difference |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for result in results:
        label = "with a dense bonus" if result["bonus"] else "plain"
        print(f"| {label} | {result['median_s']['library']:.3f} | {result['median_s']['fused']:.3f} | "
              f"{result['speedup']:.2f}x | {result['max_abs_difference']:.1e} |")
    if args.out:
        machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "load_average": os.getloadavg()}
        with open(args.out, "w") as handle:
            json.dump({"args": vars(args), "machine": machine, "results": results}, handle, indent=2)


if __name__ == "__main__":
    main()
