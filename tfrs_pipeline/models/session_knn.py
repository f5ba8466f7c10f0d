"""Session k-nearest neighbours: what the visitors of the most similar training sessions clicked.

V-SKNN (Ludewig & Jannach 2018) finds the k training sessions that share the most (recency
weighted) items with the current one and scores each item by the summed similarity of the
neighbours that contain it. As VSTAN (Ludewig et al. 2021) does, rare shared items weigh more and a
neighbour's items count more the closer they were clicked to the item it shares with the session.
It is the strongest simple method on e-commerce clickstreams: alone it is above SR-GNN's P@20 on
DIGINETICA (0.524 against 0.507), and it holds what a query vector cannot, namely whole other
sessions that overlap this one. The session model adds its evidence to the transformer's scores
(``SessionModel`` owns neither; ``pipelines.session`` chooses the weight on held-out sessions).

It is written in TensorFlow so that the evaluation and the SavedModel run the same code: the
served lists then equal the evaluated ones, ties included.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from tfrs_pipeline.config import SessionConfig

DEFAULT_SESSIONS_PER_ITEM = 1000
EVALUATION_READS = 1 << 24  # candidate sessions read per call of ``dense_scores``: bounds its memory
_POSITION_SPAN = 1 << 32  # reference keys are slot * span + click position: the most recent slot wins


class SessionNeighbours(tf.Module):
    """Item scores of sessions from their k most similar training sessions.

    A session's item at position p of n (1 = oldest) weighs p / n times its rarity, log(training
    sessions / training sessions that contain it), so recent clicks decide the neighbours and
    sharing a bestseller says little; a training session's similarity is the summed weight of the
    items it shares with the session (each counted once, at its most recent click), times
    exp(-newer / (recency_scale * sessions)), where ``newer`` counts the training sessions after it:
    what shoppers clicked lately says more about what they click next (STAN, Garg et al. 2019).
    A neighbour gives each of its items its similarity times exp(-clicks / position_scale), where
    ``clicks`` separate the item's last click from that of the shared item most recent in the
    session: what a shopper clicked just before or after the product this visitor looks at now says
    the most (STAN's third factor). An item's score is the sum over the neighbours that contain it.

    Args:
      sessions: per training session, its catalog indices (1..N; 0 is skipped), oldest session first.
      num_items: N.
      neighbours: k, training sessions that score each session.
      sessions_per_item: only an item's most recent sessions are candidates: it bounds the work a
        popular item costs a request, as V-SKNN's sampling does.
      recency_scale: how fast older sessions fade, as a share of the training sessions; 0: never.
      position_scale: how fast a neighbour's items fade with their distance in clicks from the shared
        item; 0: never.
      weight: how much the scores count beside the transformer's (``bonus``).
    """

    def __init__(self, sessions: Sequence[np.ndarray], num_items: int,
                 neighbours: int = SessionConfig.session_neighbours, sessions_per_item: int = DEFAULT_SESSIONS_PER_ITEM,
                 recency_scale: float = SessionConfig.neighbour_recency_scale,
                 position_scale: float = SessionConfig.neighbour_position_scale, weight: float = 0.0):
        super().__init__()
        self.weight = weight
        self._fading = 1.0 / (recency_scale * max(1, len(sessions))) if recency_scale else 0.0
        self._position_fading = 1.0 / position_scale if position_scale else 0.0
        distinct = [_last_clicks(session) for session in sessions]
        lengths = np.asarray([len(items) for items, _ in distinct], np.int64)
        items = np.concatenate([np.zeros(0, np.int64)] + [items for items, _ in distinct]).astype(np.int64)
        positions = np.concatenate([np.zeros(0, np.int64)] + [clicks for _, clicks in distinct]).astype(np.int64)
        sessions_with_item = np.bincount(items, minlength=num_items + 1)
        rarity = np.log(max(1, len(distinct)) / np.maximum(sessions_with_item, 1))
        session_of_item = np.repeat(np.arange(len(distinct), dtype=np.int64), lengths)
        by_item = np.argsort(items, kind="stable")  # within an item, sessions stay oldest first
        item_starts = np.searchsorted(items[by_item], np.arange(num_items + 2))
        recent = np.arange(len(items)) >= np.repeat(item_starts[1:] - sessions_per_item, np.diff(item_starts))
        kept_sessions = session_of_item[by_item][recent]
        kept_starts = np.searchsorted(items[by_item][recent], np.arange(num_items + 2))
        self.num_items = num_items
        self.neighbours = neighbours
        self._sessions_per_item = sessions_per_item
        self._num_sessions = len(distinct)
        # Variables, not constants: an export keeps them beside the graph, which has a 2 GB limit.
        self._session_items = tf.Variable(items, trainable=False)
        self._session_starts = tf.Variable(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), trainable=False)
        self._item_sessions = tf.Variable(kept_sessions, trainable=False)
        self._session_positions = tf.Variable(positions, trainable=False)
        self._item_positions = tf.Variable(positions[by_item][recent], trainable=False)  # aligned with _item_sessions
        self._rarity = tf.Variable(rarity.astype(np.float32), trainable=False)
        self._item_starts = tf.Variable(kept_starts.astype(np.int64), trainable=False)

    def bonus(self, session_indices: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """(row, item, bonus) to add to the transformer's scores: ``weight * evidence(score)``."""
        rows, items, scores = self.scores(session_indices)
        return rows, items, self.weight * evidence(scores)

    def dense_scores(self, session_indices: np.ndarray) -> np.ndarray:
        """[batch, N + 1] ``scores`` as an array, for evaluation: a few sessions per call.

        Each item of a session reads up to ``sessions_per_item`` candidate sessions, so a batch of
        long histories (MovieLens users) would need gigabytes at once.
        """
        dense = np.zeros((len(session_indices), self.num_items + 1), np.float32)
        step = max(1, EVALUATION_READS // (max(1, session_indices.shape[1]) * self._sessions_per_item))
        for start in range(0, len(session_indices), step):
            rows, items, values = self.scores(session_indices[start:start + step])
            dense[start + rows.numpy(), items.numpy()] = values.numpy()
        return dense

    def scores(self, session_indices: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """(row, item, score) of every item with a score, from sessions [batch, width] of catalog indices.

        Sessions are left- or right-padded with 0; rows come out in order, each item of a row once.
        """
        session_indices = tf.convert_to_tensor(session_indices, tf.int64)
        rows, slots, items, weights = _weighted_items(session_indices)
        neighbour_rows, neighbour_sessions, similarities, shared_positions = self._neighbours(
            rows, slots, items, weights * tf.gather(self._rarity, items), tf.shape(session_indices)[0])
        spans = tf.ragged.range(tf.gather(self._session_starts, neighbour_sessions),
                                tf.gather(self._session_starts, neighbour_sessions + 1))
        owner = spans.value_rowids()
        clicks_apart = tf.abs(tf.gather(self._session_positions, spans.flat_values)
                              - tf.gather(shared_positions, owner))
        values = tf.gather(similarities, owner) * tf.exp(-self._position_fading * tf.cast(clicks_apart, tf.float32))
        return sum_by_row(tf.gather(neighbour_rows, owner), tf.gather(self._session_items, spans.flat_values),
                          values, self.num_items + 1)

    def _neighbours(self, rows: tf.Tensor, slots: tf.Tensor, items: tf.Tensor, weights: tf.Tensor,
                    batch: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        """(row, training session, similarity, position of the shared item) of each row's k most similar sessions.

        The shared item is the one the row clicked most recently, at its last click in the training session.
        """
        spans = tf.ragged.range(tf.gather(self._item_starts, items), tf.gather(self._item_starts, items + 1))
        owner = spans.value_rowids()
        keys, groups = _distinct_pairs(tf.gather(rows, owner), tf.gather(self._item_sessions, spans.flat_values),
                                      self._num_sessions)
        similarities = tf.math.unsorted_segment_sum(tf.gather(weights, owner), groups, tf.size(keys))
        references = tf.math.unsorted_segment_max(
            tf.gather(slots, owner) * _POSITION_SPAN + tf.gather(self._item_positions, spans.flat_values),
            groups, tf.size(keys))
        candidate_rows, candidates = keys // self._num_sessions, keys % self._num_sessions
        similarities *= tf.exp(-self._fading * tf.cast(self._num_sessions - 1 - candidates, tf.float32))

        def by_row(values: tf.Tensor, padding) -> tf.Tensor:
            ragged = tf.RaggedTensor.from_value_rowids(values, candidate_rows, nrows=tf.cast(batch, tf.int64))
            # [batch, most candidates of a row], newest session first: ties go to the more recent session.
            return tf.reverse(ragged.to_tensor(default_value=padding), axis=[1])

        padded_similarities = by_row(similarities, -1.0)
        k = tf.minimum(self.neighbours, tf.shape(padded_similarities)[1])
        best, positions = tf.math.top_k(padded_similarities, k=k)
        sessions = tf.gather(by_row(candidates, tf.constant(0, tf.int64)), positions, batch_dims=1)
        shared_positions = tf.gather(by_row(references % _POSITION_SPAN, tf.constant(0, tf.int64)), positions,
                                     batch_dims=1)
        found = best > 0
        neighbour_rows = tf.broadcast_to(tf.range(tf.cast(batch, tf.int64))[:, tf.newaxis], tf.shape(sessions))
        return tuple(tf.boolean_mask(values, found) for values in (neighbour_rows, sessions, best, shared_positions))


def evidence(scores: tf.Tensor) -> tf.Tensor:
    """log(1 + score): grows slowly with the neighbours' agreement, as the transformer's log-odds do."""
    return tf.math.log1p(scores)


def _last_clicks(session: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct catalog indices, ascending; the position of each one's last click among the session's known items)."""
    clicked = session[session > 0]
    items, clicks_from_end = np.unique(clicked[::-1], return_index=True)
    return items, len(clicked) - 1 - clicks_from_end


def _weighted_items(session_indices: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """(row, slot, item, weight) of each distinct item of each session, at its most recent click.

    Slots grow with recency whatever the padding, so the largest slot of a row is its most recent item.
    """
    real = session_indices > 0
    width = tf.shape(session_indices)[1]
    position = tf.cumsum(tf.cast(real, tf.float32), axis=1)
    weight = position / tf.maximum(position[:, -1:], 1.0)
    same_item = tf.equal(session_indices[:, :, tf.newaxis], session_indices[:, tf.newaxis, :])
    later = tf.range(width)[tf.newaxis, :] > tf.range(width)[:, tf.newaxis]
    kept = tf.logical_and(real, tf.logical_not(tf.reduce_any(tf.logical_and(same_item, later[tf.newaxis]), -1)))
    rows_and_slots = tf.where(kept)
    return (rows_and_slots[:, 0], rows_and_slots[:, 1], tf.boolean_mask(session_indices, kept),
            tf.boolean_mask(weight, kept))


def sum_by_row(rows: tf.Tensor, keys: tf.Tensor, values: tf.Tensor,
               num_keys: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(row, key, summed value) of each distinct (row, key), ordered by row then key."""
    pairs, groups = _distinct_pairs(rows, keys, num_keys)
    return pairs // num_keys, pairs % num_keys, tf.math.unsorted_segment_sum(values, groups, tf.size(pairs))


def _distinct_pairs(rows: tf.Tensor, keys: tf.Tensor, num_keys: int) -> tuple[tf.Tensor, tf.Tensor]:
    """(row * num_keys + key of each distinct (row, key), ascending; the position there of each input pair)."""
    pairs, groups = tf.unique(rows * num_keys + keys)
    order = tf.argsort(pairs)
    return tf.gather(pairs, order), tf.gather(tf.math.invert_permutation(order), groups)
