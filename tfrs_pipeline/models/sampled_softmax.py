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


class ReadHistory:
    """The items each query row's position has read: slots ``0..t`` of its window, for the row of slot ``t``.

    Evaluation and serving never recommend a user's own items, so they need not compete in that row's
    softmax. The mask is built per softmax from each window's first slot holding each competing item,
    a [windows, columns] table, compared with each row's slot: one pass over the logits' shape.

    Args:
      history: [B, L] catalog indices of the windows (0: padding).
      has_target: [B, L] the slots with a query row; rows number them in row-major order, as
        ``tf.boolean_mask`` lists the queries.
    """

    def __init__(self, history: tf.Tensor, has_target: tf.Tensor):
        self._history = history
        rows = tf.where(has_target)
        self._window_of_row, self._slot_of_row = rows[:, 0], rows[:, 1]

    def mask(self, column_of_item: tf.Tensor, num_columns: int | tf.Tensor) -> tf.Tensor:
        """[P, C] bool: whether row p's position read the item of column c.

        ``column_of_item`` [N + 1]: each catalog index's column in the softmax, -1 where it has none.
        """
        windows, length = tf.unstack(tf.shape(self._history, out_type=tf.int64))
        columns = tf.gather(column_of_item, self._history)  # [B, L]
        competes = columns >= 0
        slots = tf.broadcast_to(tf.range(length)[tf.newaxis, :], [windows, length])
        window_and_column = tf.stack([tf.broadcast_to(tf.range(windows)[:, tf.newaxis], [windows, length]),
                                      columns], axis=-1)
        first_slot = tf.tensor_scatter_nd_min(tf.fill(tf.stack([windows, tf.cast(num_columns, tf.int64)]), length),
                                              tf.boolean_mask(window_and_column, competes),
                                              tf.boolean_mask(slots, competes))  # [B, C]; length: never read
        return tf.gather(first_slot, self._window_of_row) <= self._slot_of_row[:, tf.newaxis]


class MixedNegativeSoftmax:
    """Softmax cross-entropy of each query's positive item against sampled (or all) catalog items.

    Args:
      target_counts: [N + 1] how often each catalog index is a training target (index 0, the
        unknown item, is never a target); sets the in-batch draw probabilities of the logQ term.
      num_negatives: negatives per batch, half in-batch and half uniform; None for the full catalog.
      popularity_adjustment: the whole catalog's logits get this times log(1 + the item's target count)
        added in training (logit adjustment): the towers' own scores, which evaluation and serving
        rank by, then carry that much less of the items' popularity.
    """

    def __init__(self, target_counts: np.ndarray, num_negatives: int | None = 1024,
                 popularity_adjustment: float = 0.0):
        if popularity_adjustment and num_negatives is not None:
            # The sampled loss never reads the item bias: an adjustment asked for would silently do nothing.
            raise ValueError("popularity_adjustment adjusts the whole-catalog softmax: it needs num_negatives=None, "
                             f"got {num_negatives}")
        self.num_negatives = num_negatives
        self._item_bias = (tf.constant(popularity_adjustment * np.log1p(target_counts[1:]), tf.float32)
                           if popularity_adjustment else None)
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
             read: ReadHistory | None = None) -> tf.Tensor:
        """Mean cross-entropy over the P rows.

        Args:
          queries: [P, dim] one query per target.
          positives: [P] int64 catalog indices (1..N) of the targets.
          catalog_embeddings: [N + 1, dim]; row 0 (unknown item) never competes. With sampled
            negatives only the rows of the positives, the negatives and the logit bonus's items are read.
          logit_bonus: added to the logits of the items it names, row by row.
          negatives: ``draw_negatives(positives)`` when the caller needed them first (to embed only
            the rows it reads); drawn here when None.
          read: the items each row has read, which do not compete for it (a row's own positive still does).
        """
        if self.num_negatives is None:
            bonus = None
            if logit_bonus is not None:
                bonus = logit_bonus.for_candidates(tf.range(1, self._num_items + 1, dtype=positives.dtype),
                                                   self._num_items)
            excluded = None
            if read is not None:  # catalog index i is column i - 1 of catalog_embeddings[1:]
                excluded = read.mask(tf.range(-1, self._num_items, dtype=tf.int64), self._num_items)
            return full_softmax_cross_entropy(queries, catalog_embeddings[1:], positives - 1, bonus, excluded,
                                              self._item_bias)
        logits, labels = self.sampled_logits(queries, positives, catalog_embeddings, logit_bonus, negatives, read)
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))

    def sampled_logits(self, queries: tf.Tensor, positives: tf.Tensor, catalog_embeddings: tf.Tensor,
                       logit_bonus: LogitBonus | None = None, negatives: tf.Tensor | None = None,
                       read: ReadHistory | None = None) -> tuple[tf.Tensor, tf.Tensor]:
        """Logits [P, 1 + S] with the positive in column 0, all corrected by log P(drawn); labels [P] (zeros).

        A negative that is the row's positive (an accidental hit) or, given ``read``, an item the row has read
        does not compete.
        """
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
        excluded = tf.equal(positives[:, tf.newaxis], negatives[tf.newaxis, :])  # accidental hits
        if read is not None:
            num_negatives = tf.size(negatives, tf.int64)
            column_of_item = tf.tensor_scatter_nd_update(tf.fill([self._num_items + 1], tf.constant(-1, tf.int64)),
                                                         negatives[:, tf.newaxis], tf.range(num_negatives))
            excluded = tf.logical_or(excluded, read.mask(column_of_item, num_negatives))
        negative_logits = tf.where(excluded, tf.float32.min, negative_logits)
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


def full_softmax_cross_entropy(queries: tf.Tensor, items: tf.Tensor, labels: tf.Tensor,
                               bonus: tf.Tensor | None = None, excluded: tf.Tensor | None = None,
                               item_bias: tf.Tensor | None = None) -> tf.Tensor:
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
      excluded: optional [P, N] which items do not compete for each row: they add nothing to the loss and get
        no gradient. A row's own label competes even where it is marked.
      item_bias: optional [N] constants added to every row's logits.
    """
    extra = [] if bonus is None else [bonus]

    @tf.custom_gradient
    def loss_and_gradient(queries: tf.Tensor, items: tf.Tensor, *bonus: tf.Tensor):
        logits = tf.matmul(queries, items, transpose_b=True)
        if bonus:
            logits += bonus[0]
        if item_bias is not None:
            logits += item_bias[tf.newaxis, :]
        one_hot_rows = tf.stack([tf.range(tf.shape(labels, out_type=labels.dtype)[0]), labels], axis=1)
        if excluded is not None:  # before the row maximum, which must be a competing logit
            excluded_but_labels = tf.tensor_scatter_nd_update(excluded, one_hot_rows,
                                                              tf.zeros(tf.shape(labels), tf.bool))
            logits = tf.where(excluded_but_labels, logits.dtype.min, logits)
        positive_logits = tf.gather_nd(logits, one_hot_rows)
        row_max = tf.stop_gradient(tf.reduce_max(logits, axis=1, keepdims=True))
        exponentials = tf.exp(logits - row_max)
        sums = tf.reduce_sum(exponentials, axis=1, keepdims=True)
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
