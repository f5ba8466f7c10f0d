"""The query tower: a user's schema-declared features and ordered history become one query per position.

The history is encoded by the causal transformer over the candidate tower's own item embeddings, so
the query and candidate spaces are tied. A per-user id embedding is optional: at tens of millions of
users such a table is large, goes stale between retrainings and cannot serve new users, while the
history and features can (docs/architecture.md measures what dropping it costs).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from tfrs_pipeline.contracts import HISTORY_INPUT, HISTORY_TIMESTAMPS_INPUT, USER_ID_INPUT, FeatureSpec
from tfrs_pipeline.features.encoders import FeatureEncoder
from tfrs_pipeline.models.encoders import CausalTransformerEncoder
from tfrs_pipeline.models.item_tower import ItemTower


class QueryTower(tf.keras.Model):
    """Maps user features and ``history_item_ids`` ([batch, length], left-padded with "") to queries.

    With a time bias the features hold ``history_timestamps`` too, slot for slot.

    Args:
      item_tower: the candidate tower whose item embeddings encode the history.
      max_length: history slots; the export keeps each user's most recent items.
      dim: embedding width (equal to the item tower's).
      user_specs: the user features the query reads (may be empty).
      user_features: ``features.arrays.feature_arrays`` of the training users (fits their vocabularies).
      user_ids: vocabulary of a per-user embedding, or None for a tower without one.
      num_blocks, num_heads, dropout, relative_attention_bias, time_attention_bias: the transformer's
        (``encoders.CausalTransformerEncoder``).
    """

    def __init__(self, item_tower: ItemTower, max_length: int, dim: int, user_specs: Sequence[FeatureSpec] = (),
                 user_features: dict[str, np.ndarray] | None = None, user_ids: Sequence[str] | None = None,
                 num_blocks: int = 2, num_heads: int = 2, dropout: float = 0.2, relative_attention_bias: bool = False,
                 time_attention_bias: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.item_tower = item_tower
        self.max_length = max_length
        self.dim = dim
        self.user_specs = tuple(user_specs)
        self.encoder = CausalTransformerEncoder(max_length, dim, num_blocks, num_heads, dropout,
                                                relative_attention_bias, time_attention_bias)
        self._user_features = FeatureEncoder(self.user_specs, user_features or {}, dim) if self.user_specs else None
        self._user_id_lookup = None
        if user_ids is not None:
            self._user_id_lookup = tf.keras.layers.StringLookup(vocabulary=list(user_ids), mask_token=None)
            self._user_id_embedding = tf.keras.layers.Embedding(len(user_ids) + 1, dim)

    def user_embedding(self, features: dict) -> tf.Tensor:
        """[batch, dim] from the user's features (and id, where the tower has a table for it); zeros without."""
        parts = []
        if self._user_features is not None:
            parts.append(self._user_features(features))
        if self._user_id_lookup is not None:
            parts.append(self._user_id_embedding(self._user_id_lookup(features[USER_ID_INPUT])))
        if not parts:
            return tf.zeros([tf.shape(features[HISTORY_INPUT])[0], self.dim])
        return tf.add_n(parts)

    def sequence_embeddings(self, features: dict, training: bool = False,
                            catalog_embeddings: tf.Tensor | None = None) -> tf.Tensor:
        """[batch, length, dim]: the query after each history position (position t saw items 0..t).

        ``catalog_embeddings`` ([N + 1, dim], from ``ItemTower.embed_catalog``) may be passed in when
        the caller needs them anyway: embedding the catalog once is cheaper than every history slot.
        """
        states = self.encoder(*self._history(features, catalog_embeddings), training=training)
        return states + self.user_embedding(features)[:, tf.newaxis, :]

    def query(self, features: dict, training: bool = False, catalog_embeddings: tf.Tensor | None = None) -> tf.Tensor:
        """[batch, dim]: ``sequence_embeddings(...)[:, -1]``, the query after the most recent item.

        What serving, evaluation and export need; the encoder computes it for the last slot alone.
        """
        state = self.encoder.last_state(*self._history(features, catalog_embeddings), training=training)
        return state + self.user_embedding(features)

    def call(self, features: dict, training: bool = False) -> tf.Tensor:
        """[batch, dim]: the query after the most recent item (the last slot)."""
        return self.query(features, training)

    @property
    def uses_time(self) -> bool:
        """Whether the features must hold the history's timestamps."""
        return self.encoder.uses_time

    def _history(self, features: dict,
                 catalog_embeddings: tf.Tensor | None) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor | None]:
        """The history's item embeddings [batch, length, dim], which slots hold an item [batch, length], and
        their timestamps (None without a time bias)."""
        if catalog_embeddings is None:
            catalog_embeddings = self.item_tower.embed_catalog()
        history = features[HISTORY_INPUT]
        timestamps = features[HISTORY_TIMESTAMPS_INPUT] if self.uses_time else None
        return tf.gather(catalog_embeddings, self.item_tower.indices(history)), tf.not_equal(history, ""), timestamps
