"""Session next-item model: a causal transformer over an anonymous session's items.

A visitor has no profile, only the items viewed so far in this session. The session's item
embeddings plus per-slot position embeddings go through the shared ``CausalTransformerEncoder``
(left-padded, so the most recent item always has the same position and recency is easy to learn);
the state after the last item is the query, scored against the same item embeddings (tied, as in
SASRec). Queries and items are L2-normalised and the cosine is multiplied by a fixed scale (NISER,
Gupta et al. 2019): without it the softmax favours popular items through their embedding norms,
which hurts the long tail that session data is full of. Every prefix of every session trains at
once (prefix -> next item) with the shared mixed-negative sampled softmax, or the full softmax.

Shoppers go back to what they just looked at: on DIGINETICA a fifth of the next clicks are an item
already in the session, and one in eleven is the item on screen. A dot product with one query
vector cannot put several earlier items on top at once, so each item of the session gets a learned
bonus added to its score, by how recently it was clicked (``repeat_bonus[r]`` for an item clicked r
clicks before the query; repeated clicks add up). The bonus trains with everything else, inside the
same softmax, so the model learns how much a repeat is worth against a new item.

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
      num_blocks, num_heads, dropout, relative_attention_bias: the transformer's
        (``encoders.CausalTransformerEncoder``).
      num_negatives: negatives per batch of the sampled softmax; None scores the whole catalog.
      scale: multiplies the query-item cosine (the softmax temperature's inverse).
    """

    def __init__(self, item_ids: Sequence[str], target_counts: np.ndarray, max_length: int, dim: int,
                 num_blocks: int = 2, num_heads: int = 2, dropout: float = 0.2, num_negatives: int | None = 1024,
                 scale: float = DEFAULT_SCALE, relative_attention_bias: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.max_length = max_length
        self.scale = scale
        self.item_lookup = tf.keras.layers.StringLookup(vocabulary=list(item_ids), mask_token=None, num_oov_indices=1)
        self._item_embedding = tf.keras.layers.Embedding(len(item_ids) + 1, dim)
        self._item_embedding.build(None)
        self._candidate_dropout = tf.keras.layers.Dropout(dropout)
        self.encoder = CausalTransformerEncoder(max_length, dim, num_blocks, num_heads, dropout,
                                                relative_attention_bias)
        self._softmax = MixedNegativeSoftmax(target_counts, num_negatives)
        self.repeat_bonus = self.add_weight(name="repeat_bonus", shape=[max_length], initializer="zeros")

    def catalog_embeddings(self) -> tf.Tensor:
        """[N + 1, dim] unit-length item embeddings; row 0 is the unknown item."""
        return tf.math.l2_normalize(self._item_embedding.embeddings, axis=-1)

    def sequence_queries(self, session_item_ids: tf.Tensor, training: bool = False,
                         catalog_embeddings: tf.Tensor | None = None) -> tf.Tensor:
        """[batch, length, dim]: the query after each slot (slot t has seen slots 0..t)."""
        states = self.encoder(*self._items(session_item_ids, catalog_embeddings), training=training)
        return self.scale * tf.math.l2_normalize(states, axis=-1)

    def query(self, session_item_ids: tf.Tensor, training: bool = False,
              catalog_embeddings: tf.Tensor | None = None) -> tf.Tensor:
        """[batch, dim]: ``sequence_queries(...)[:, -1]``, computed for the last slot alone."""
        state = self.encoder.last_state(*self._items(session_item_ids, catalog_embeddings), training=training)
        return self.scale * tf.math.l2_normalize(state, axis=-1)

    def call(self, session_item_ids: tf.Tensor, training: bool = False) -> tf.Tensor:
        """[batch, dim]: the query after the most recent item (the last slot)."""
        return self.query(session_item_ids, training)

    def _items(self, session_item_ids: tf.Tensor, catalog_embeddings: tf.Tensor | None) -> tuple[tf.Tensor, tf.Tensor]:
        """The slots' item embeddings [batch, length, dim] and which slots hold an item [batch, length]."""
        if catalog_embeddings is None:
            catalog_embeddings = self.catalog_embeddings()
        embeddings = tf.gather(catalog_embeddings, self.item_lookup(session_item_ids))
        return embeddings, tf.not_equal(session_item_ids, "")

    def last_slot_bonus(self, width: int | tf.Tensor) -> tf.Tensor:
        """[width] the repeat bonus of the item in each of ``width`` left-padded slots, for the query after the last."""
        return tf.gather(self.repeat_bonus, tf.range(width - 1, -1, -1))

    def compute_loss(self, features: dict, training: bool = False) -> tf.Tensor:
        """Every slot with a target predicts it (``history_item_ids`` -> ``target_item_ids``)."""
        targets = features["target_item_ids"]
        has_target = tf.not_equal(targets, "")
        catalog_embeddings = self.catalog_embeddings()
        history = features["history_item_ids"]
        queries = tf.boolean_mask(self.sequence_queries(history, training, catalog_embeddings), has_target)
        positives = tf.boolean_mask(self.item_lookup(targets), has_target)
        repeats = PrefixRepeats(self.item_lookup(history), has_target, self.repeat_bonus)
        return self._softmax.loss(queries, positives, self._candidates(training), repeats)

    def _candidates(self, training: bool) -> tf.Tensor:
        """The item table the loss scores, with dropout on the raw embeddings while training.

        Dropping coordinates of the candidates before they are normalised (CORE's robust distance,
        Hou et al. 2022) keeps the model from leaning on a few directions of each item; on
        DIGINETICA it added 0.005 P@20 and MRR@20 (docs/benchmarks.md).
        """
        embeddings = self._candidate_dropout(self._item_embedding.embeddings, training=training)
        return tf.math.l2_normalize(embeddings, axis=-1)


class PrefixRepeats:
    """The repeat bonus of every training query: items of its own prefix, weighted by how recent they are.

    Query (b, t) is the state after slot t of window b; it has seen slots 0..t, and the item in slot
    c gets ``bonus[t - c]`` (an item clicked twice gets both). Sampled negatives would rarely include
    a query's own session items, so the bonus would only ever be rewarded (when the next click is a
    repeat) and never charged (when it is not): ``row_items`` makes every row's session items
    compete, each once, with its bonus.

    Args:
      history: [B, W] catalog indices of the left-padded windows (0: padding).
      has_target: [B, W] which slots are training queries (their rows, in order, are the loss's rows).
      bonus: [max_length] bonus by recency (0: the query's own last item).
    """

    def __init__(self, history: tf.Tensor, has_target: tf.Tensor, bonus: tf.Tensor):
        width = tf.shape(history)[1]
        slots = tf.range(width)
        recency = slots[:, tf.newaxis] - slots[tf.newaxis, :]  # [t, c]
        seen = tf.logical_and(has_target[:, :, tf.newaxis], recency[tf.newaxis] >= 0)
        seen = tf.logical_and(seen, history[:, tf.newaxis, :] > 0)  # [B, t, c]: query (b, t) has seen slot c
        slot_bonus = tf.where(recency >= 0, tf.gather(bonus, tf.maximum(recency, 0)), 0.0)  # [t, c]
        same_item = tf.cast(tf.equal(history[:, :, tf.newaxis], history[:, tf.newaxis, :]), tf.float32)  # [B, c, c']
        # The bonus of all the item's clicks that query t has seen, and whether one of them is after slot c.
        item_bonus = tf.einsum("bcd,td->btc", same_item, slot_bonus)
        after_c_up_to_t = tf.cast(tf.logical_and(slots[tf.newaxis, tf.newaxis, :] > slots[tf.newaxis, :, tf.newaxis],
                                                 recency[:, tf.newaxis, :] >= 0), tf.float32)  # [t, c, c']
        clicked_again = tf.einsum("bcd,tcd->btc", same_item, after_c_up_to_t) > 0
        self._items = tf.boolean_mask(tf.broadcast_to(history[:, tf.newaxis, :], tf.shape(seen)), has_target)
        self._item_bonus = tf.boolean_mask(item_bonus, has_target)
        self._listed = tf.boolean_mask(tf.logical_and(seen, tf.logical_not(clicked_again)), has_target)

    def for_items(self, items: tf.Tensor) -> tf.Tensor:
        """[P] the bonus of ``items`` [P] (one catalog index per query row), e.g. the positives."""
        matches = tf.logical_and(self._listed, tf.equal(self._items, items[:, tf.newaxis]))
        return tf.reduce_sum(tf.where(matches, self._item_bonus, 0.0), axis=1)

    def row_items(self) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Each row's session items: catalog indices [P, W], their bonus [P, W], and which to list [P, W]."""
        return self._items, self._item_bonus, self._listed

    def for_candidates(self, candidates: tf.Tensor, num_items: int) -> tf.Tensor:
        """[P, S] the bonus of ``candidates`` [S] (distinct catalog indices in 1..``num_items``) for every row."""
        return self._scatter(candidates, num_items, self._item_bonus)

    def contains(self, candidates: tf.Tensor, num_items: int) -> tf.Tensor:
        """[P, S] whether each of ``candidates`` [S] (distinct catalog indices) is in the row's session."""
        return self._scatter(candidates, num_items, tf.ones_like(self._item_bonus)) > 0

    def _scatter(self, candidates: tf.Tensor, num_items: int, values: tf.Tensor) -> tf.Tensor:
        column_of_item = tf.scatter_nd(candidates[:, tf.newaxis], tf.range(1, tf.size(candidates) + 1),
                                       [num_items + 1]) - 1
        columns = tf.gather(column_of_item, self._items)
        kept = tf.logical_and(self._listed, columns >= 0)
        rows = tf.broadcast_to(tf.range(tf.shape(columns)[0])[:, tf.newaxis], tf.shape(columns))
        indices = tf.stack([tf.boolean_mask(rows, kept), tf.boolean_mask(columns, kept)], axis=1)
        shape = tf.stack([tf.shape(columns)[0], tf.size(candidates)])
        return tf.scatter_nd(indices, tf.boolean_mask(values, kept), shape)
