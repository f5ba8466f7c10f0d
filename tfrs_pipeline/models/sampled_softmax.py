"""The retrieval loss shared by every "predict the next item" model: mixed-negative sampled softmax.

The loss is a sampled softmax over a fixed budget of negatives shared by the whole batch: some are
drawn from the batch's own positives (in-batch negatives, which follow popularity and so are hard)
and some uniformly from the catalog, so rare items are pushed down too ("mixed negative sampling",
Yang et al. 2020). In-batch draws would teach the model to demote popular items; every logit is
therefore corrected by the log of the item's probability of being drawn (logQ correction, Yi et al.
2019). A negative that happens to equal a row's positive is masked out (no accidental hits). The
cost grows with the negative budget, not the catalog, which is what lets the same loss train on a
catalog of millions; ``num_negatives=None`` instead scores the whole catalog (exact softmax).

It works on plain tensors (queries, positive indices, catalog embeddings), so the two-tower
retrieval model and the session model share it whatever their towers look like. A model may add a
per-query bonus to some items' logits (the session model's repeat bonus) through ``logit_bonus``.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np
import tensorflow as tf


class LogitBonus(Protocol):
    """Extra logits for a few items of each query row (e.g. the items of the row's own session).

    Those items are the row's own hard negatives: the sampled softmax drops them from the sampled
    negatives and scores each of them exactly, once, with its bonus (no sampling correction, since
    they are always there; nor has a positive that is one of them).
    """

    def for_items(self, items: tf.Tensor) -> tf.Tensor:
        """[P] the bonus of one item per row (0 where the row has none for it)."""

    def row_items(self) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Each row's items with a bonus: catalog indices [P, R], bonus [P, R], and which are real [P, R]."""

    def for_candidates(self, candidates: tf.Tensor, num_items: int) -> tf.Tensor:
        """[P, S] the bonus of the distinct items ``candidates`` [S] for every row."""

    def contains(self, candidates: tf.Tensor, num_items: int) -> tf.Tensor:
        """[P, S] whether each of the distinct items ``candidates`` [S] is one of the row's items."""


class MixedNegativeSoftmax:
    """Softmax cross-entropy of each query's positive item against sampled (or all) catalog items.

    Args:
      target_counts: [N + 1] how often each catalog index is a training target (index 0, the
        unknown item, is never a target); sets the in-batch draw probabilities of the logQ term.
      num_negatives: negatives per batch, half in-batch and half uniform; None for the full catalog.
    """

    def __init__(self, target_counts: np.ndarray, num_negatives: int | None = 1024):
        self.num_negatives = num_negatives
        self._num_items = len(target_counts) - 1
        frequencies = target_counts / max(1, target_counts.sum())
        self._log_one_minus_frequency = tf.constant(np.log1p(-np.minimum(frequencies, 1 - 1e-7)), tf.float32)

    def draw_negatives(self, positives: tf.Tensor) -> tf.Tensor:
        """[S' <= S] distinct catalog indices: half drawn from the batch's ``positives``, half uniformly."""
        num_in_batch = self.num_negatives // 2
        in_batch = tf.gather(positives, tf.random.uniform([num_in_batch], 0, tf.size(positives), tf.int32))
        uniform = tf.random.uniform([self.num_negatives - num_in_batch], 1, self._num_items + 1, dtype=tf.int64)
        negatives, _ = tf.unique(tf.concat([in_batch, uniform], axis=0))
        return negatives

    def loss(self, queries: tf.Tensor, positives: tf.Tensor, catalog_embeddings: tf.Tensor,
             logit_bonus: LogitBonus | None = None, negatives: tf.Tensor | None = None,
             excluded: tf.Tensor | None = None) -> tf.Tensor:
        """Mean cross-entropy over the P rows.

        Args:
          queries: [P, dim] one query per target.
          positives: [P] int64 catalog indices (1..N) of the targets.
          catalog_embeddings: [N + 1, dim]; row 0 (unknown item) never competes. With sampled
            negatives only the rows of the positives, the negatives and the logit bonus's items are read.
          logit_bonus: added to the logits of the items it names, row by row.
          negatives: ``draw_negatives(positives)`` when the caller needed them first (to embed only
            the rows it reads); drawn here when None.
          excluded: [K, 2] (row, catalog index) pairs left out of the softmax: that item does not compete
            for that row (never a row's own positive).
        """
        if self.num_negatives is None:
            bonus = None
            if logit_bonus is not None:
                bonus = logit_bonus.for_candidates(tf.range(1, self._num_items + 1, dtype=positives.dtype),
                                                   self._num_items)
            if excluded is not None:
                excluded -= tf.constant([0, 1], excluded.dtype)  # the columns of catalog_embeddings[1:]
            return full_softmax_cross_entropy(queries, catalog_embeddings[1:], positives - 1, bonus, excluded)
        if negatives is None:
            negatives = self.draw_negatives(positives)
        logits, labels = self.sampled_logits(queries, positives, catalog_embeddings, logit_bonus, negatives)
        if excluded is not None:
            logits = _without_excluded_negatives(logits, negatives, excluded, self._num_items)
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))

    def sampled_logits(self, queries: tf.Tensor, positives: tf.Tensor, catalog_embeddings: tf.Tensor,
                       logit_bonus: LogitBonus | None = None,
                       negatives: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
        """Logits [P, 1 + S] with the positive in column 0, all corrected by log P(drawn); labels [P] (zeros)."""
        num_in_batch = self.num_negatives // 2
        num_uniform = self.num_negatives - num_in_batch
        if negatives is None:
            negatives = self.draw_negatives(positives)
        log_missed_by_uniform = num_uniform * float(np.log1p(-1.0 / self._num_items))

        def log_draw_probability(indices: tf.Tensor) -> tf.Tensor:
            log_missed = num_in_batch * tf.gather(self._log_one_minus_frequency, indices) + log_missed_by_uniform
            return tf.math.log(-tf.math.expm1(log_missed) + 1e-10)

        positive_logits = tf.reduce_sum(queries * tf.gather(catalog_embeddings, positives), axis=-1)
        negative_logits = tf.matmul(queries, tf.gather(catalog_embeddings, negatives), transpose_b=True)
        negative_logits -= log_draw_probability(negatives)[tf.newaxis, :]
        accidental_hit = tf.equal(positives[:, tf.newaxis], negatives[tf.newaxis, :])
        negative_logits = tf.where(accidental_hit, tf.float32.min, negative_logits)
        if logit_bonus is None:
            logits = [(positive_logits - log_draw_probability(positives))[:, tf.newaxis], negative_logits]
        else:
            row_items, row_bonus, real = logit_bonus.row_items()
            is_positive = tf.equal(row_items, positives[:, tf.newaxis])
            # A positive that is one of the row's items is always scored, like them: no sampling correction.
            positive_is_row_item = tf.reduce_any(tf.logical_and(real, is_positive), axis=1)
            correction = tf.where(positive_is_row_item, 0.0, log_draw_probability(positives))
            positive_logits += logit_bonus.for_items(positives) - correction
            drawn_row_item = logit_bonus.contains(negatives, self._num_items)
            row_logits = tf.einsum("pd,prd->pr", queries, tf.gather(catalog_embeddings, row_items)) + row_bonus
            competes = tf.logical_and(real, tf.logical_not(is_positive))
            logits = [positive_logits[:, tf.newaxis], tf.where(drawn_row_item, tf.float32.min, negative_logits),
                      tf.where(competes, row_logits, tf.float32.min)]
        return tf.concat(logits, axis=1), tf.zeros_like(positives)


def _without_excluded_negatives(logits: tf.Tensor, negatives: tf.Tensor, excluded: tf.Tensor,
                                num_items: int) -> tf.Tensor:
    """``logits`` [P, 1 + S + ...] (negatives [S] in columns 1..S) with each excluded (row, item) pair that was
    drawn as a negative at ``float32.min``."""
    column_of_item = tf.scatter_nd(negatives[:, tf.newaxis], tf.range(1, tf.size(negatives, tf.int64) + 1),
                                   [num_items + 1])  # 0: not drawn
    columns = tf.gather(column_of_item, excluded[:, 1])
    drawn = columns > 0
    pairs = tf.stack([tf.boolean_mask(excluded[:, 0], drawn), tf.boolean_mask(columns, drawn)], axis=1)
    return tf.tensor_scatter_nd_update(logits, pairs, tf.fill(tf.shape(pairs)[:1], logits.dtype.min))


def full_softmax_cross_entropy(queries: tf.Tensor, items: tf.Tensor, labels: tf.Tensor,
                               bonus: tf.Tensor | None = None, excluded: tf.Tensor | None = None) -> tf.Tensor:
    """Mean softmax cross-entropy of ``queries @ items.T (+ bonus)`` against ``labels``, fused by hand.

    The whole-catalog softmax is most of a MovieLens training step (a batch scores some 25,000
    positions against every movie). ``tf.nn.sparse_softmax_cross_entropy_with_logits`` makes several
    passes over that [P, N] matrix on the CPU; here the forward pass keeps the exponentials and the
    gradient reuses them: 1.5x faster for the loss and its gradient together, and 0.85x the time of
    a MovieLens epoch (bench/softmax_benchmark.py; docs/benchmarks.md). Loss and gradients equal
    the library op's.

    Args:
      queries: [P, dim].
      items: [N, dim] the candidates, every one competing for every query.
      labels: [P] integer column of each query's positive in ``items``.
      bonus: optional [P, N] logits added before the softmax (they get gradients too).
      excluded: optional [K, 2] (row, column) pairs that do not compete: they add nothing to the loss and get
        no gradient. Never a row's label.
    """
    extra = [] if bonus is None else [bonus]

    @tf.custom_gradient
    def loss_and_gradient(queries: tf.Tensor, items: tf.Tensor, *bonus: tf.Tensor):
        logits = tf.matmul(queries, items, transpose_b=True)
        if bonus:
            logits += bonus[0]
        if excluded is not None:  # before the row maximum, which must be a competing logit
            logits = tf.tensor_scatter_nd_update(logits, excluded, tf.fill(tf.shape(excluded)[:1], logits.dtype.min))
        row_max = tf.stop_gradient(tf.reduce_max(logits, axis=1, keepdims=True))
        exponentials = tf.exp(logits - row_max)
        sums = tf.reduce_sum(exponentials, axis=1, keepdims=True)
        one_hot_rows = tf.stack([tf.range(tf.shape(labels, out_type=labels.dtype)[0]), labels], axis=1)
        positive_logits = tf.gather_nd(logits, one_hot_rows)
        loss = tf.reduce_mean(tf.squeeze(tf.math.log(sums) + row_max, 1) - positive_logits)

        def gradient(upstream: tf.Tensor):
            scale = upstream / tf.cast(tf.shape(queries)[0], queries.dtype)
            # d loss / d logits = (softmax - one-hot) * scale, never materialised with the one-hot.
            logit_gradient = exponentials * (scale / sums)
            logit_gradient = tf.tensor_scatter_nd_sub(logit_gradient, one_hot_rows,
                                                      tf.fill(tf.shape(labels), scale))
            query_gradient = tf.matmul(logit_gradient, items)
            item_gradient = tf.matmul(logit_gradient, queries, transpose_a=True)
            return (query_gradient, item_gradient, *([logit_gradient] if bonus else []))

        return loss, gradient

    return loss_and_gradient(queries, items, *extra)
