"""Two-tower retrieval trained on every prefix of every history (prefix -> next item).

The loss is the mixed-negative sampled softmax with logQ correction of ``sampled_softmax``
(in-batch and uniform negatives, accidental hits masked); ``num_negatives=None`` scores the whole
catalog (exact softmax).

Evaluation and serving never recommend an item the user already has, so a position's own earlier
history items can be left out of its softmax (``exclude_history``): otherwise every step pushes down
the items nearest to what the query has just read, a demand the ranked lists never make.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfrs_pipeline.contracts import HISTORY_INPUT
from tfrs_pipeline.models.query_tower import QueryTower
from tfrs_pipeline.models.sampled_softmax import MixedNegativeSoftmax, ReadHistory


class RetrievalModel(tfrs.models.Model):
    """Query tower + candidate tower + sampled softmax with logQ correction.

    Args:
      query_tower: maps features with ``history_item_ids`` to per-position queries; its ``item_tower``
        is the candidate tower (shared with the history encoder).
      target_counts: [N + 1] how often each catalog index is a training target; sets logQ.
      num_negatives: negatives per batch, half in-batch and half uniform; None for the full catalog.
      exclude_history: leave the items each position has read in its window (other than its own target) out
        of its softmax.
      popularity_adjustment: the whole-catalog softmax's logit adjustment (``MixedNegativeSoftmax``).
    """

    def __init__(self, query_tower: QueryTower, target_counts: np.ndarray, num_negatives: int | None = 1024,
                 exclude_history: bool = False, popularity_adjustment: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.query_tower = query_tower
        self.item_tower = query_tower.item_tower
        self.num_negatives = num_negatives
        self.exclude_history = exclude_history
        self._softmax = MixedNegativeSoftmax(target_counts, num_negatives, popularity_adjustment)

    def compute_loss(self, features: dict, training: bool = False) -> tf.Tensor:
        targets = features["target_item_ids"]
        has_target = tf.not_equal(targets, "")
        history = self.item_tower.indices(features[HISTORY_INPUT])
        positives = tf.boolean_mask(self.item_tower.indices(targets), has_target)
        negatives = None
        if self.num_negatives is None:
            catalog_embeddings = self.item_tower.embed_catalog()
        else:  # the step reads only its histories', targets' and negatives' rows: embed those alone
            negatives = self._softmax.draw_negatives(positives)
            catalog_embeddings = self.item_tower.embed_catalog_rows(tf.concat(
                [tf.reshape(history, [-1]), positives, negatives], axis=0))
        read = ReadHistory(history, has_target) if self.exclude_history else None
        sequence_queries = self.query_tower.sequence_embeddings(features, training, catalog_embeddings)
        queries = tf.boolean_mask(sequence_queries, has_target)
        # Inside a distributed train step Keras sums the replicas' losses; dividing keeps the loss
        # (and its gradient) the same as on one device. Outside one, there is nothing to divide.
        replica_context = tf.distribute.get_replica_context()
        replicas = replica_context.num_replicas_in_sync if replica_context is not None else 1
        return self._softmax.loss(queries, positives, catalog_embeddings, negatives=negatives,
                                  read=read) / replicas
