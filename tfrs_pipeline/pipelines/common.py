"""Pieces every pipeline run shares: feeding examples to Keras, recording training, writing results."""
from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import tensorflow as tf

from tfrs_pipeline.data.sequence_examples import WIDTH_STEP, length_bucketed_batches


def examples_as_tensors(examples: dict) -> dict:
    """The example arrays with object (string) columns as ``str`` arrays, which TensorFlow accepts."""
    return {name: (values.astype(str) if values.dtype == object else values) for name, values in examples.items()}


def training_dataset(examples: dict, batch_size: int, seed: int, width_step: int = WIDTH_STEP) -> tf.data.Dataset:
    """Shuffled, length-bucketed batches of ``examples`` (``length_bucketed_batches``), reshuffled every epoch."""
    examples = examples_as_tensors(examples)
    rng = np.random.default_rng(seed)
    signature = {
        name: tf.TensorSpec([None] * values.ndim, tf.string if values.dtype.kind in "US" else tf.as_dtype(values.dtype))
        for name, values in examples.items()
    }
    return tf.data.Dataset.from_generator(
        lambda: length_bucketed_batches(examples, batch_size, rng, width_step), output_signature=signature).prefetch(2)


def learning_rate(initial: float, decay: str,
                  total_steps: int) -> float | tf.keras.optimizers.schedules.LearningRateSchedule:
    """The optimizer's learning rate: constant (``decay="none"``) or cosine-decayed over ``total_steps``.

    A few epochs is all a full data set gets on CPU: decaying the rate to a twentieth over the run
    lets the last epochs settle into the optimum the early, large steps found, where a constant
    rate keeps bouncing around it (validation metrics plateau and jitter).
    """
    if decay == "none":
        return initial
    return tf.keras.optimizers.schedules.CosineDecay(initial, decay_steps=max(1, total_steps), alpha=0.05)


def history(keras_history: tf.keras.callbacks.History) -> dict:
    """Per-epoch logs of ``model.fit`` as plain floats (JSON-ready)."""
    return {name: [float(value) for value in values] for name, values in keras_history.history.items()}


def write_json_atomically(path: pathlib.Path, value: dict) -> None:
    """Writes ``value`` as indented JSON through a temporary file and a rename (never half a file)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(temporary, path)
