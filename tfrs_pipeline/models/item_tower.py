"""The candidate tower: an item's id and its schema-declared features become one embedding.

The tower keeps its catalog's features preprocessed, so any item id (a candidate, or an item in a
user's history) is embedded from its id alone, with the same weights. Tying the history's input
embeddings to the candidate embeddings is what SASRec does; the feature part lets rarely seen items
borrow strength from their categories and words.

Items with no training interaction (new items, or items listed in the catalog that nobody chose yet)
get no id row of their own: an id row that only ever appears as a negative learns "never
recommend me", so they share the unknown item's row, which learns how likely an unseen item is, and
are told apart by their features. That is what makes a new item retrievable without retraining.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from tfrs_pipeline.contracts import FeatureSpec
from tfrs_pipeline.features.arrays import concatenate_rows, examples_as_tensors, missing_rows
from tfrs_pipeline.features.encoders import FeatureEncoder

UNKNOWN_ITEM = "[UNK]"


class ItemTower(tf.keras.Model):
    """Embeds items from raw features (``call``) or from ids through the catalog snapshot (``embed_catalog``).

    Args:
      item_ids: the catalog's ids, in the order that defines item indices 1..N (0 is "unknown").
      item_features: ``features.arrays.feature_arrays`` of the catalog, rows aligned with ``item_ids``.
      specs: the item features (may be empty: an id-only tower).
      dim: embedding width.
      has_interactions: [N] whether each item occurs in the training data (None: all do); the others
        share the unknown item's id row.
    """

    def __init__(self, item_ids: Sequence[str], item_features: dict[str, np.ndarray], specs: Sequence[FeatureSpec],
                 dim: int, has_interactions: np.ndarray | None = None, **kwargs):
        super().__init__(**kwargs)
        self.id_lookup = tf.keras.layers.StringLookup(vocabulary=list(item_ids), mask_token=None, num_oov_indices=1)
        self._id_embedding = tf.keras.layers.Embedding(len(item_ids) + 1, dim)
        own_row = np.ones(len(item_ids), bool) if has_interactions is None else np.asarray(has_interactions, bool)
        self._id_rows = tf.constant(np.concatenate([[0], np.where(own_row, np.arange(1, len(item_ids) + 1), 0)]))
        self.specs = tuple(specs)
        self.features = FeatureEncoder(self.specs, item_features, dim) if self.specs else None
        catalog_features = concatenate_rows(missing_rows(self.specs), item_features) if self.specs else {}
        self._catalog = self._preprocess({"item_id": tf.constant([UNKNOWN_ITEM, *item_ids]),
                                          **examples_as_tensors(catalog_features)})

    def _preprocess(self, features: dict) -> dict:
        preprocessed = {"id_row": tf.gather(self._id_rows, self.id_lookup(features["item_id"]))}
        if self.features is not None:
            preprocessed.update(self.features.preprocess(features))
        return preprocessed

    def _embed(self, preprocessed: dict) -> tf.Tensor:
        embeddings = self._id_embedding(preprocessed["id_row"])
        if self.features is not None:
            embeddings += self.features.embed(preprocessed)
        return embeddings

    def call(self, features: dict) -> tf.Tensor:
        """Embeds raw features: ``item_id`` [N] and each item feature (ids the tower does not know get row 0)."""
        return self._embed(self._preprocess(features))

    def embed_catalog(self) -> tf.Tensor:
        """Embeddings of every catalog item, [N + 1, dim]; row 0 is the unknown item."""
        return self._embed(self._catalog)

    def embed_catalog_rows(self, indices: tf.Tensor) -> tf.Tensor:
        """[N + 1, dim]: the catalog rows ``indices`` (any shape, repeats allowed) as ``embed_catalog``
        gives them, every other row zero.

        For a training step that reads a few thousand rows: embedding only those keeps the step's
        cost from growing with the catalog (at 100K items the whole catalog's embedding, forward and
        backward, was most of a sampled-softmax step).
        """
        rows, _ = tf.unique(tf.reshape(tf.cast(indices, tf.int64), [-1]))
        embedded = self._embed({name: tf.gather(values, rows) for name, values in self._catalog.items()})
        shape = tf.stack([tf.shape(self._catalog["id_row"], out_type=tf.int64)[0],
                          tf.shape(embedded, out_type=tf.int64)[1]])
        return tf.scatter_nd(rows[:, tf.newaxis], embedded, shape)

    def indices(self, item_ids: tf.Tensor) -> tf.Tensor:
        """Catalog indices of string ids (0 for unknown ids and for "" padding)."""
        return self.id_lookup(item_ids)
