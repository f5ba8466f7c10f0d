"""Session next-item model: a causal transformer over an anonymous session's items.

A visitor has no profile, only the items viewed so far in this session. The session's item
embeddings plus per-slot position embeddings go through the shared ``CausalTransformerEncoder``
(left-padded, so the most recent item always has the same position and recency is easy to learn);
the state after the last item is the query, scored against the same item embeddings (tied, as in
SASRec). Queries and items are L2-normalised and the cosine is multiplied by a fixed scale (NISER,
Gupta et al. 2019): without it the softmax favours popular items through their embedding norms,
which hurts the long tail that session data is full of. Every prefix of every session trains at
once (prefix -> next item) with the shared mixed-negative sampled softmax, or the full softmax.

Its serving signature is ``export.savedmodels.SessionExport``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfrs_pipeline.models.encoders import CausalTransformerEncoder
from tfrs_pipeline.models.sampled_softmax import MixedNegativeSoftmax

DEFAULT_SCALE = 16.0


class SessionModel(tfrs.models.Model):
    """``session_item_ids`` [batch, length] (left-padded with "") -> query [batch, dim].

    Args:
      item_ids: the catalog, in the order that defines item indices 1..N (0: unknown and padding).
      target_counts: [N + 1] how often each index is a training target (logQ of the sampled softmax).
      max_length: session slots; longer sessions keep their most recent items.
      dim: embedding width.
      num_blocks, num_heads, dropout: transformer shape.
      num_negatives: negatives per batch of the sampled softmax; None scores the whole catalog.
      scale: multiplies the query-item cosine (the softmax temperature's inverse).
    """

    def __init__(self, item_ids: Sequence[str], target_counts: np.ndarray, max_length: int, dim: int,
                 num_blocks: int = 2, num_heads: int = 2, dropout: float = 0.2, num_negatives: int | None = 1024,
                 scale: float = DEFAULT_SCALE, **kwargs):
        super().__init__(**kwargs)
        self.max_length = max_length
        self.scale = scale
        self.item_lookup = tf.keras.layers.StringLookup(vocabulary=list(item_ids), mask_token=None, num_oov_indices=1)
        self._item_embedding = tf.keras.layers.Embedding(len(item_ids) + 1, dim)
        self._item_embedding.build(None)
        self.encoder = CausalTransformerEncoder(max_length, dim, num_blocks, num_heads, dropout)
        self._softmax = MixedNegativeSoftmax(target_counts, num_negatives)

    def catalog_embeddings(self) -> tf.Tensor:
        """[N + 1, dim] unit-length item embeddings; row 0 is the unknown item."""
        return tf.math.l2_normalize(self._item_embedding.embeddings, axis=-1)

    def sequence_queries(self, session_item_ids: tf.Tensor, training: bool = False,
                         catalog_embeddings: tf.Tensor | None = None) -> tf.Tensor:
        """[batch, length, dim]: the query after each slot (slot t has seen slots 0..t)."""
        if catalog_embeddings is None:
            catalog_embeddings = self.catalog_embeddings()
        item_embeddings = tf.gather(catalog_embeddings, self.item_lookup(session_item_ids))
        states = self.encoder(item_embeddings, tf.not_equal(session_item_ids, ""), training=training)
        return self.scale * tf.math.l2_normalize(states, axis=-1)

    def call(self, session_item_ids: tf.Tensor, training: bool = False) -> tf.Tensor:
        """[batch, dim]: the query after the most recent item (the last slot)."""
        return self.sequence_queries(session_item_ids, training)[:, -1]

    def compute_loss(self, features: dict, training: bool = False) -> tf.Tensor:
        """Every slot with a target predicts it (``history_item_ids`` -> ``target_item_ids``)."""
        targets = features["target_item_ids"]
        has_target = tf.not_equal(targets, "")
        catalog_embeddings = self.catalog_embeddings()
        queries = tf.boolean_mask(
            self.sequence_queries(features["history_item_ids"], training, catalog_embeddings), has_target)
        positives = tf.boolean_mask(self.item_lookup(targets), has_target)
        return self._softmax.loss(queries, positives, catalog_embeddings)
