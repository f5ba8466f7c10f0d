"""Benchmark: where a retrieval epoch of the README run spends its CPU time.

    python bench/retrieval_epoch_profile.py --data_dir=../shared/data/ml-1m --steps=30 [--num_heads=1 ...]

Builds retrieval exactly as ``python -m tfrs_pipeline.train`` does (its defaults, or any of its flags
given here), then measures
three parts of an epoch on their own, wall and CPU seconds each: the input pipeline (every batch of
one epoch), ``--steps`` training steps on batches drawn at random from that epoch (after a first
pass over the same batches, which traces each batch width), and one full-catalog validation (what
``scoring.ValidationRanking`` adds to an epoch it validates). CPU seconds are the figure to compare
on a shared machine; the load average is printed with them.
"""
from __future__ import annotations

import argparse
import dataclasses
import os

import numpy as np

import tfrs_pipeline  # noqa: F401  (Keras 2 before TensorFlow loads)

# isort: split
import tensorflow as tf

from tfrs_pipeline import scoring
from tfrs_pipeline.data.dataset import load_dataset
from tfrs_pipeline.data.split import leave_last_out
from tfrs_pipeline.pipelines import two_stage
from tfrs_pipeline.pipelines.common import training_dataset
from tfrs_pipeline.pipelines.progress import stage
from tfrs_pipeline.train import parse_config


def timed(label: str):
    """``progress.stage`` (wall and CPU seconds of the block), its label carrying the load average."""
    return stage(f"{label} (load {os.getloadavg()[0]:.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="training steps timed (of one epoch's batches)")
    args, train_flags = parser.parse_known_args()
    config = dataclasses.replace(parse_config(train_flags), verbose=0)
    tf.keras.utils.set_random_seed(config.seed)
    inputs = two_stage.TwoStageInputs.from_data(load_dataset(config.data_dir))
    split, _ = two_stage._split(config, inputs.data)
    train, validation_targets = leave_last_out(split.history)
    popularity = inputs.catalog.counts(train.item_ids)
    model, examples = two_stage.build_retrieval(config, inputs, train, popularity)
    with timed("input pipeline, one epoch"):
        batches = list(training_dataset(examples, config.batch_size, config.seed, user_features=inputs.users))
    positions = [int(np.sum(batch["target_item_ids"].numpy() != b"")) for batch in batches]
    print(f"{len(batches)} steps per epoch, {sum(positions)} trained positions", flush=True)
    drawn = np.random.default_rng(config.seed).choice(len(batches), min(args.steps, len(batches)), replace=False)
    sample = [batches[row] for row in drawn]
    signature = {name: tf.TensorSpec([None] * values.shape.rank, values.dtype) for name, values in sample[0].items()}
    steps = tf.data.Dataset.from_generator(lambda: iter(sample), output_signature=signature)
    with timed(f"first pass over the {len(sample)} steps (traces each width)"):
        model.fit(steps, epochs=1, verbose=0)
    with timed(f"{len(sample)} training steps ({sum(positions[row] for row in drawn)} positions)"):
        model.fit(steps, epochs=1, verbose=0)
    validation = scoring.ValidationRanking(inputs.catalog, inputs.users, model.query_tower, train, validation_targets)
    with timed("one full-catalog validation"):
        validation.on_epoch_end(0, {})


if __name__ == "__main__":
    main()
