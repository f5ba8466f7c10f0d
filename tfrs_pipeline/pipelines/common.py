"""Pieces every pipeline run shares: feeding examples to Keras, the learning rate, recording training."""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfrs_pipeline.config import TaskConfig
from tfrs_pipeline.contracts import USER_ID_INPUT
from tfrs_pipeline.data.sequence_examples import WIDTH_STEP, length_bucketed_batches
from tfrs_pipeline.features.arrays import FeatureRows, examples_as_tensors


def training_dataset(examples: dict, batch_size: int, seed: int, width_step: int = WIDTH_STEP,
                     user_features: FeatureRows | None = None) -> tf.data.Dataset:
    """Shuffled, length-bucketed batches of ``examples`` (``length_bucketed_batches``), reshuffled every epoch.

    ``user_features`` adds each example's user features to its batch: looked up per batch rather
    than stored per example, so a user with a hundred windows keeps one copy of them. String columns
    become the ``str`` arrays TensorFlow takes a batch at a time, for the same reason: converted whole,
    the [windows, max_length] item columns would take 4 bytes per character of every padded slot
    beside the examples (7.5 GB more at 944K windows of 200 five-character ids).
    """
    rng = np.random.default_rng(seed)

    def with_features(batch: dict) -> dict:
        if user_features is not None:
            batch.update(user_features.lookup(batch[USER_ID_INPUT]))
        return examples_as_tensors(batch)

    def batches():
        for batch in length_bucketed_batches(examples, batch_size, rng, width_step):
            yield with_features(batch)

    sample = with_features(next(length_bucketed_batches(examples, 1, np.random.default_rng(0), width_step)))
    signature = {
        name: tf.TensorSpec([None] * values.ndim, tf.string if values.dtype.kind in "US" else tf.as_dtype(values.dtype))
        for name, values in sample.items()
    }
    return untuned(tf.data.Dataset.from_generator(batches, output_signature=signature).prefetch(2))


def untuned(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """``dataset`` without tf.data's autotuning, for the datasets ``model.fit`` iterates once per epoch.

    Keras drops each epoch's iterator before the next begins, and with autotuning on, dropping it
    waits for the iterator's tuning thread, which sleeps between tunings for up to a minute and can
    miss the wake-up: the main thread then stands idle at an epoch boundary until that sleep ends.
    These pipelines have nothing to tune (a fixed prefetch, or slices already in memory).
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def training_optimizer(config: TaskConfig, num_examples: int) -> tf.keras.optimizers.Optimizer:
    """Adam with ``config``'s learning rate, warm-up and decay over its epochs of ``num_examples`` examples."""
    steps_per_epoch = -(-num_examples // config.batch_size)
    return tf.keras.optimizers.Adam(learning_rate(
        config.learning_rate, config.learning_rate_decay, config.epochs * steps_per_epoch,
        round(config.learning_rate_warmup_epochs * steps_per_epoch)))


def learning_rate(initial: float, decay: str, total_steps: int,
                  warmup_steps: int = 0) -> float | tf.keras.optimizers.schedules.LearningRateSchedule:
    """The optimizer's learning rate: constant (``decay="none"``) or cosine-decayed over ``total_steps``.

    A few epochs is all a full data set gets on CPU: decaying the rate to a twentieth over the run
    lets the last epochs settle into the optimum the early, large steps found, where a constant
    rate keeps bouncing around it (validation metrics plateau and jitter). ``warmup_steps`` first
    raise the rate linearly from a tenth of ``initial``: Adam's first moment estimates are noisy,
    and a full-size first step can throw freshly initialized attention weights far off.
    """
    if decay == "none" and not warmup_steps:
        return initial
    warmup_steps = min(warmup_steps, max(0, total_steps - 1))
    floor = 1.0 if decay == "none" else 0.05  # CosineDecay's alpha: what share of the rate the decay ends at
    if not warmup_steps:
        return tf.keras.optimizers.schedules.CosineDecay(initial, decay_steps=max(1, total_steps), alpha=floor)
    return tf.keras.optimizers.schedules.CosineDecay(initial / 10, decay_steps=total_steps - warmup_steps,
                                                     alpha=floor, warmup_target=initial, warmup_steps=warmup_steps)


def history(keras_history: tf.keras.callbacks.History) -> dict:
    """Per-epoch logs of ``model.fit`` as plain floats (JSON-ready)."""
    return {name: [float(value) for value in values] for name, values in keras_history.history.items()}
