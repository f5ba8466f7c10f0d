"""Keras preprocessing and embedding of schema-declared features, inside the towers.

Each feature kind gets the layer TensorFlow provides for it (``StringLookup`` for categorical and
multi-valued features, ``Discretization`` for numbers, ``TextVectorization`` for text), fitted on
the training tables when the tower is built. Because the layers live inside the model, a SavedModel
takes raw values and no client can preprocess them differently from training.

Preprocessing (``preprocess``: strings to indices) is kept apart from embedding (``embed``: indices
to vectors) so that a tower can preprocess its whole catalog once and embed it at every training
step without running the lookups again.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import tensorflow as tf

from tfrs_pipeline.contracts import CATEGORICAL, MULTI_CATEGORICAL, NUMERIC, TEXT, FeatureSpec

MIN_VALUE_COUNT = 2  # a categorical value seen once teaches nothing that transfers: it shares the OOV row
MAX_VOCABULARY = 100_000
NUMERIC_BUCKETS = 16  # quantile buckets of a numeric feature
TEXT_TOKENS = 20_000
TEXT_LENGTH = 16  # words of a text value that count


NO_VALUES = "\x00no values"  # the vocabulary of a feature with no usable value: a lookup needs one entry


def _vocabulary(values: np.ndarray) -> list[str]:
    """Values seen at least ``MIN_VALUE_COUNT`` times, most frequent first ("" is never a value)."""
    counts = pd.Series(values.ravel()).value_counts(sort=True)
    counts = counts[(counts.index != "") & (counts >= MIN_VALUE_COUNT)]
    return [str(value) for value in counts.index[:MAX_VOCABULARY]] or [NO_VALUES]


class _Categorical(tf.keras.layers.Layer):
    """One string per row -> an embedding; unknown and missing values share one row."""

    def __init__(self, values: np.ndarray, dim: int, **kwargs):
        super().__init__(**kwargs)
        vocabulary = _vocabulary(values)
        self.lookup = tf.keras.layers.StringLookup(vocabulary=vocabulary, mask_token=None, num_oov_indices=1)
        self.embedding = tf.keras.layers.Embedding(len(vocabulary) + 1, dim)
        self.built = True  # no weights of its own: its sublayers build on first use

    def preprocess(self, values: tf.Tensor) -> tf.Tensor:
        return self.lookup(values)

    def embed(self, indices: tf.Tensor) -> tf.Tensor:
        return self.embedding(indices)


class _MultiCategorical(tf.keras.layers.Layer):
    """A "" padded set of strings per row -> the mean of its values' embeddings (zero for an empty set)."""

    def __init__(self, values: np.ndarray, dim: int, **kwargs):
        super().__init__(**kwargs)
        vocabulary = _vocabulary(values)
        self.lookup = tf.keras.layers.StringLookup(vocabulary=vocabulary, mask_token="", num_oov_indices=1)
        self.embedding = tf.keras.layers.Embedding(len(vocabulary) + 2, dim)
        self.built = True

    def preprocess(self, values: tf.Tensor) -> tf.Tensor:
        return self.lookup(values)

    def embed(self, indices: tf.Tensor) -> tf.Tensor:
        return _mean_of_present(self.embedding(indices), indices > 0)


class _Numeric(tf.keras.layers.Layer):
    """A number -> the embedding of its quantile bucket; missing (NaN) values have a bucket of their own.

    Buckets rather than a scaled value: a price or a release year rarely acts linearly on taste.
    """

    def __init__(self, values: np.ndarray, dim: int, **kwargs):
        super().__init__(**kwargs)
        present = values[~np.isnan(values)]
        quantiles = np.quantile(present, np.linspace(0, 1, NUMERIC_BUCKETS + 1)[1:-1]) if len(present) else []
        boundaries = sorted(set(float(boundary) for boundary in quantiles))
        self.buckets = tf.keras.layers.Discretization(bin_boundaries=boundaries)
        self.missing_bucket = len(boundaries) + 1
        self.embedding = tf.keras.layers.Embedding(len(boundaries) + 2, dim)
        self.built = True

    def preprocess(self, values: tf.Tensor) -> tf.Tensor:
        values = tf.cast(values, tf.float32)
        is_missing = tf.math.is_nan(values)
        buckets = tf.cast(self.buckets(tf.where(is_missing, 0.0, values)), tf.int64)
        return tf.where(is_missing, tf.cast(self.missing_bucket, tf.int64), buckets)

    def embed(self, indices: tf.Tensor) -> tf.Tensor:
        return self.embedding(indices)


class _Text(tf.keras.layers.Layer):
    """Free text -> the mean embedding of its first ``TEXT_LENGTH`` words (lower-cased, punctuation removed)."""

    def __init__(self, values: np.ndarray, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.vectorizer = tf.keras.layers.TextVectorization(max_tokens=TEXT_TOKENS,
                                                            output_sequence_length=TEXT_LENGTH)
        texts = values.astype(str)
        if any(text.strip() for text in texts):
            self.vectorizer.adapt(tf.constant(texts))
        else:
            self.vectorizer.set_vocabulary([NO_VALUES])
        self.embedding = tf.keras.layers.Embedding(self.vectorizer.vocabulary_size(), dim)
        self.built = True

    def preprocess(self, values: tf.Tensor) -> tf.Tensor:
        return self.vectorizer(values)

    def embed(self, indices: tf.Tensor) -> tf.Tensor:
        return _mean_of_present(self.embedding(indices), indices > 0)


_ENCODERS = {CATEGORICAL: _Categorical, MULTI_CATEGORICAL: _MultiCategorical, NUMERIC: _Numeric, TEXT: _Text}


class FeatureEncoder(tf.keras.layers.Layer):
    """The schema's features of one side (user or item) -> one [batch, dim] vector.

    Each feature is embedded by its kind's layer; the embeddings are concatenated and projected,
    so the tower learns how the features combine.

    Args:
      specs: the features, in signature order.
      training_values: ``features.arrays.feature_arrays`` of the training table, which fits the
        vocabularies, buckets and text tokens.
      dim: output width.
    """

    def __init__(self, specs: Sequence[FeatureSpec], training_values: dict[str, np.ndarray], dim: int, **kwargs):
        super().__init__(**kwargs)
        self.specs = tuple(specs)
        if not self.specs:
            raise ValueError("a FeatureEncoder needs at least one feature")
        self.encoders = [_ENCODERS[spec.kind](training_values[spec.name], dim, name=f"feature_{position}")
                         for position, spec in enumerate(self.specs)]
        self.projection = tf.keras.layers.Dense(dim)
        self.built = True

    def preprocess(self, features: dict) -> dict[str, tf.Tensor]:
        """Raw values -> indices, per feature (what ``embed`` takes)."""
        return {spec.name: encoder.preprocess(features[spec.name]) for spec, encoder in zip(self.specs, self.encoders)}

    def embed(self, preprocessed: dict) -> tf.Tensor:
        parts = [encoder.embed(preprocessed[spec.name]) for spec, encoder in zip(self.specs, self.encoders)]
        return self.projection(tf.concat(parts, axis=-1))

    def call(self, features: dict) -> tf.Tensor:
        return self.embed(self.preprocess(features))


def _mean_of_present(embeddings: tf.Tensor, present: tf.Tensor) -> tf.Tensor:
    """Mean over axis -2 of the rows of ``embeddings`` [..., n, dim] where ``present`` [..., n]."""
    weights = tf.cast(present, embeddings.dtype)[..., tf.newaxis]
    return tf.reduce_sum(embeddings * weights, axis=-2) / tf.maximum(tf.reduce_sum(weights, axis=-2), 1.0)
