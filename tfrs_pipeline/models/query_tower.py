"""The query tower: a user's demographics and ordered history become one query embedding per position.

The history is encoded by the causal transformer over the candidate tower's own item embeddings, so
the query and candidate spaces are tied. A per-user id embedding is optional: at tens of millions of
users such a table is large, goes stale between retrainings and cannot serve new users, while the
history and features can (docs/architecture.md measures what dropping it costs).
"""
from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from tfrs_pipeline.models.encoders import CausalTransformerEncoder
from tfrs_pipeline.models.item_tower import ItemTower

AGE_BUCKETS = [1, 18, 25, 35, 45, 50, 56]
NUM_OCCUPATIONS = 22
ZIP_PREFIX_BINS = 1000


class QueryTower(tf.keras.Model):
    """Maps user features and ``history_item_ids`` ([batch, length], left-padded with "") to queries.

    Args:
      item_tower: the candidate tower whose item embeddings encode the history.
      max_length: history slots; the export keeps each user's most recent items.
      dim: embedding width (equal to the item tower's).
      user_ids: vocabulary of a per-user embedding, or None for a tower without one.
      num_blocks, num_heads, dropout: shape of the transformer.
    """

    def __init__(self, item_tower: ItemTower, max_length: int, dim: int, user_ids: Sequence[str] | None = None,
                 num_blocks: int = 2, num_heads: int = 2, dropout: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        self.item_tower = item_tower
        self.max_length = max_length
        self.encoder = CausalTransformerEncoder(max_length, dim, num_blocks, num_heads, dropout)
        self._user_id_lookup = None
        if user_ids is not None:
            self._user_id_lookup = tf.keras.layers.StringLookup(vocabulary=list(user_ids), mask_token=None)
            self._user_id_embedding = tf.keras.layers.Embedding(len(user_ids) + 1, dim)
        self._age_lookup = tf.keras.layers.IntegerLookup(vocabulary=AGE_BUCKETS, mask_token=None)
        self._age_embedding = tf.keras.layers.Embedding(len(AGE_BUCKETS) + 1, dim)
        self._gender_embedding = tf.keras.layers.Embedding(2, dim)
        self._occupation_embedding = tf.keras.layers.Embedding(NUM_OCCUPATIONS + 1, dim)
        self._zip_hashing = tf.keras.layers.Hashing(ZIP_PREFIX_BINS)
        self._zip_embedding = tf.keras.layers.Embedding(ZIP_PREFIX_BINS, dim)
        self._user_projection = tf.keras.layers.Dense(dim)

    def user_embedding(self, features: dict) -> tf.Tensor:
        """[batch, dim] from demographics (and the user id, where the tower has a table for it)."""
        occupation = tf.clip_by_value(tf.cast(features["user_occupation_label"], tf.int64), 0, NUM_OCCUPATIONS)
        parts = [
            self._age_embedding(self._age_lookup(tf.cast(features["bucketized_user_age"], tf.int64))),
            self._gender_embedding(tf.cast(features["user_gender"], tf.int64)),
            self._occupation_embedding(occupation),
            self._zip_embedding(self._zip_hashing(tf.strings.substr(features["user_zip_code"], 0, 3))),
        ]
        if self._user_id_lookup is not None:
            parts.append(self._user_id_embedding(self._user_id_lookup(features["user_id"])))
        return self._user_projection(tf.add_n(parts))

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

    def _history(self, features: dict, catalog_embeddings: tf.Tensor | None) -> tuple[tf.Tensor, tf.Tensor]:
        """The history's item embeddings [batch, length, dim] and which slots hold an item [batch, length]."""
        if catalog_embeddings is None:
            catalog_embeddings = self.item_tower.embed_catalog()
        history = features["history_item_ids"]
        return tf.gather(catalog_embeddings, self.item_tower.indices(history)), tf.not_equal(history, "")
