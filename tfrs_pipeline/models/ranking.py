"""Ranking: re-scores the candidates retrieval found, with features a factorized model cannot use.

Retrieval must score the whole catalog with one dot product; ranking sees only a few hundred
candidates per user and can afford crossing features: the retrieval score itself and the
candidate's rank and share within its list, the elementwise product of query and candidate, how the
candidate's categories match the user's history, how popular it is, how close it is to the last
item the user chose and to the others of their recent history (the largest and the mean dot product:
the query is one point, and a candidate close to one of several tastes can sit far from it), how
long the history is, and, the strongest of them, item-to-item rules: how often people who chose one
of the user's recent items chose the candidate soon after (or before), counted in the training
histories (``ItemRules``). A deep & cross network (Wang et al. 2020) learns
those crosses explicitly. Every feature comes from the interactions and the declared schema.

It is trained for what the two-stage pipeline needs: each training list is the candidates retrieval
returned for a held-out next item, and a listwise softmax puts the true item at the top. The network
learns a correction on top of the retrieval score rather than a score from scratch: untrained, the
ranker keeps retrieval's order, so a few thousand lists can only move it where they have evidence.

What it answers with is that learned score less a popularity penalty (``popularity_penalty``). A
listwise softmax rewards whatever the held-out items tend to be, and they tend to be popular, so the
lists narrow towards the head of the catalog. The penalty is applied after training and trades that
back; the pipeline's default size was chosen on validation lists (``ranking_popularity_penalty``). Its
unit is the candidate's normalized log-popularity raised to ``popularity_penalty_exponent``: below 1
the unit rises steeply over the least popular items and flattens over the rest, so the penalty lifts
items from the tail into the lists (breadth) more than it pushes the head down (what costs accuracy).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfrs_pipeline.contracts import HISTORY_INPUT
from tfrs_pipeline.models.query_tower import QueryTower

CANDIDATE_FEATURE = "candidate_item_ids"  # training and evaluation lists: [batch, N] item ids
DEFAULT_RECENT_ITEMS = 10  # history items whose rules each candidate is looked up in
MAX_RULES_PER_ITEM = 1_000  # the most rules per item the ranker was validated with (docs/benchmarks.md)
RULES_PER_TABLE = 5_000_000  # bounds a table's [N + 1, M] arrays and the sorted keys of its pairs
NO_PAIR = np.iinfo(np.int64).max  # closes the sorted keys: a binary search for any pair lands at or before it
DIRECT_INDEX_MAX_BYTES = 128 * 2**20  # the largest [(N + 1)^2] pair index kept beside the rules (about 5,800 items)


def default_rules_per_item(num_items: int) -> int:
    """How many of each item's strongest rules the ranker keeps when the user does not say.

    More rules per item ranked better on validation lists up to the most tried, but each table is
    built as [N + 1, M] arrays and every pair becomes a key the exports hold, so M
    shrinks as the catalog grows: a large catalog keeps what a MovieLens-sized one keeps in total.
    """
    return max(1, min(MAX_RULES_PER_ITEM, RULES_PER_TABLE // (num_items + 1)))


class ItemRules(tf.Module):
    """Item-to-item rule weights between each candidate and the user's most recent items.

    A factorized score says how well a candidate fits the user's taste as a whole; a rule says that
    people who chose this recent item chose that one soon after, which a dot product blurs. Each
    table holds every item's strongest rules (``SequentialRules.strongest_rules``): [N + 1, M]
    target indices and weights.

    Every (source, target) pair of every table has a row of weights, one column per table, and a
    key, source * (N + 1) + target. A request looks up every (recent item, candidate) pair, so the
    lookup is the ranker's hottest step. Where the catalog is small enough (``direct_index_max_bytes``)
    the key indexes an array of [(N + 1)^2] rows outright: one gather per pair, whatever the density
    of rules. Beyond that the keys are one sorted array, searched: a user's pairs with one recent item
    share a narrow range of keys, so the search stays in the CPU's cache after its first steps. A
    hash table of the pairs answered the same, but its probes missed the cache once it held hundreds
    of rules per item, and comparing each candidate with every rule of every recent item costs
    candidates x recent x M comparisons per table. Both forms are saved with the model's variables,
    not in its graph, so a large catalog's rules do not meet the graph's 2 GB limit.

    Args:
      tables: (targets, weights) pairs, each [N + 1, M]; e.g. the forward rules (history item ->
        candidate) and the backward ones (candidate -> history item).
      recent_items: how many of the most recent history items are looked up, each a feature of its own.
      direct_index_max_bytes: the largest direct index of pairs to keep (4 (N + 1)^2 bytes, held by
        every model that ranks); a larger catalog's pairs are found by binary search.
    """

    def __init__(self, tables: Sequence[tuple[np.ndarray, np.ndarray]], recent_items: int = DEFAULT_RECENT_ITEMS,
                 direct_index_max_bytes: int = DIRECT_INDEX_MAX_BYTES):
        super().__init__()
        self.recent_items = recent_items
        # M as this run resolved it (the config may leave it to ``default_rules_per_item``): metrics.json says it.
        self.rules_per_item = max(targets.shape[1] for targets, _ in tables)
        self._num_tables = len(tables)
        self._key_base = max(targets.shape[0] for targets, _ in tables)  # N + 1: key = source * (N + 1) + target
        keys, pair_weights = _pairs(tables, self._key_base)
        self._no_pair_row = len(keys) - 1  # NO_PAIR's row of weights: all zeros
        self._pair_weights = tf.Variable(pair_weights, trainable=False)
        # Pairs are found by a direct index of every key where it fits, else by binary search in the sorted keys.
        self.direct = 4 * self._key_base**2 <= direct_index_max_bytes
        if self.direct:
            self._pair_rows = tf.Variable(_direct_index(keys[:-1], self._key_base**2, self._no_pair_row),
                                          trainable=False)
        else:
            self._pair_keys = tf.Variable(keys, trainable=False)

    @property
    def num_features(self) -> int:
        return self._num_tables * self.recent_items

    def __call__(self, recent: tf.Tensor, candidates: tf.Tensor) -> tf.Tensor:
        """[B, N, tables * recent_items] log(1 + weight) of the rule (recent item k, candidate), 0 where none.

        Features are ordered table by table, recent item by recent item within a table.

        Args:
          recent: [B, recent_items] catalog indices of the most recent history items (0: none).
          candidates: [B, N] catalog indices.
        """
        # [B, K, N]: the keys of one recent item's pairs lie in one narrow range, looked up one after the other.
        keys = recent[:, :, tf.newaxis] * self._key_base + candidates[:, tf.newaxis, :]
        rows = tf.reshape(self._rows(tf.reshape(keys, [-1])), tf.shape(keys))
        weights = tf.transpose(tf.gather(self._pair_weights, rows), [0, 2, 3, 1])  # [B, N, tables, K]
        return tf.reshape(weights, tf.concat([tf.shape(candidates), [self.num_features]], axis=0))

    def _rows(self, sought: tf.Tensor) -> tf.Tensor:
        """The row of weights of each sought key ([P] int64), NO_PAIR's where the pair has no rule."""
        if self.direct:
            return tf.gather(self._pair_rows, sought)
        # One dense read: a gather straight from the variable would make every later read of it a copy.
        pair_keys = self._pair_keys.read_value()
        rows = tf.searchsorted(pair_keys, sought, out_type=tf.int64)  # NO_PAIR closes the keys
        return tf.where(tf.equal(tf.gather(pair_keys, rows), sought), rows, self._no_pair_row)


def _pairs(tables: Sequence[tuple[np.ndarray, np.ndarray]], key_base: int) -> tuple[np.ndarray, np.ndarray]:
    """The tables' (source, target) pairs as sorted keys, and each key's log(1 + weight) per table.

    Returns:
      ([P + 1] keys, ascending, [P + 1, tables] weights): the last key, ``NO_PAIR``, is above every
      pair's and its row is all zeros, what a pair without a rule reads; padding (target 0, weight 0)
      is no pair.
    """
    sources, targets, weights, columns = [], [], [], []
    for column, (table_targets, table_weights) in enumerate(tables):
        has_rule = (table_targets > 0) & (table_weights > 0)
        sources.append(np.nonzero(has_rule)[0])
        targets.append(table_targets[has_rule])
        weights.append(np.log1p(table_weights[has_rule]))
        columns.append(np.full(has_rule.sum(), column))
    keys, pair_of_rule = np.unique(np.concatenate(sources).astype(np.int64) * key_base + np.concatenate(targets),
                                   return_inverse=True)
    pair_weights = np.zeros((len(keys) + 1, len(tables)), np.float32)
    np.add.at(pair_weights, (pair_of_rule, np.concatenate(columns)), np.concatenate(weights).astype(np.float32))
    return np.append(keys, NO_PAIR), pair_weights


def _direct_index(pair_keys: np.ndarray, num_keys: int, no_pair_row: int) -> np.ndarray:
    """[num_keys] int32: the row of weights of each key, ``no_pair_row`` where no pair has that key.

    ``pair_keys`` are the pairs' sorted keys (without NO_PAIR); the i-th pair's weights are row i.
    """
    index = np.full(num_keys, no_pair_row, np.int32)
    index[pair_keys] = np.arange(len(pair_keys), dtype=np.int32)
    return index


class RankingModel(tfrs.models.Model):
    """Deep & cross scorer over (user, history, candidate) features, on frozen retrieval towers.

    Args:
      query_tower: the trained retrieval query tower (frozen: ranking adds to it, never moves it).
      item_popularity: [N + 1] training interactions per catalog index.
      item_categories: [N + 1, C] multi-hot categories per catalog index (``features.arrays.category_matrix``;
        C may be 0).
      rules: item-to-item rules between the candidates and the user's recent items (None: none).
      hidden_units: widths of the deep part.
      popularity_penalty: subtracted from the answered scores per unit of the candidate's normalized
        log-popularity (0 for the least popular item, 1 for the most) raised to ``popularity_penalty_exponent``;
        training never sees either.
      num_compared_items: how many of the user's most recent items each candidate is compared with (0: none).
    """

    def __init__(self, query_tower: QueryTower, item_popularity: np.ndarray, item_categories: np.ndarray,
                 rules: ItemRules | None = None, hidden_units: tuple[int, ...] = (128, 64), dropout: float = 0.1,
                 popularity_penalty: float = 0.0, num_compared_items: int = 0,
                 popularity_penalty_exponent: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.query_tower = query_tower
        self.num_compared_items = num_compared_items
        self.rules = rules
        self.query_tower.trainable = False
        self._log_popularity = tf.constant(normalized_log_popularity(item_popularity))
        self._categories = tf.constant(item_categories.astype(np.float32))
        # Variables, so that one trained ranker can be answered with several penalties (bench/ranking_features.py).
        self.popularity_penalty = tf.Variable(popularity_penalty, trainable=False, dtype=tf.float32)
        self.popularity_penalty_exponent = tf.Variable(popularity_penalty_exponent, trainable=False, dtype=tf.float32)
        self._cross = tfrs.layers.dcn.Cross(projection_dim=32)
        self._deep = tf.keras.Sequential(
            [layer for units in hidden_units
             for layer in (tf.keras.layers.Dense(units, activation="relu"), tf.keras.layers.Dropout(dropout))]
            + [tf.keras.layers.Dense(1)]
        )
        self.task = tfrs.tasks.Ranking(
            loss=tf.keras.losses.CategoricalCrossentropy(from_logits=True),
            metrics=[tf.keras.metrics.TopKCategoricalAccuracy(k=10, name="hit_rate_at_10")],
        )

    def call(self, features: dict, training: bool = False) -> tf.Tensor:
        """Scores [batch, N] for ``candidate_item_ids`` [batch, N] given user features and history."""
        catalog_embeddings = self.query_tower.item_tower.embed_catalog()
        context = self.user_context(features, catalog_embeddings)
        return self.score(context, features[CANDIDATE_FEATURE], catalog_embeddings, training)

    def user_context(self, features: dict, catalog_embeddings: tf.Tensor) -> dict:
        """What ranking needs of the user, independent of the candidates (and so computable ahead of time).

        Returns ``query`` [B, d] (the retrieval query), ``last_item`` [B, d] (the most recent item's
        embedding), ``history_categories`` [B, C] (the category mix of the history), ``history_length`` and,
        with rules or compared items, ``recent_items`` [B, W] (the most recent W item indices, 0 for none).
        The towers are frozen, so an export can compute this once per known user instead of once per request.
        """
        history = self.query_tower.item_tower.indices(features[HISTORY_INPUT])  # [B, L]
        context = {
            "query": self.query_tower.query(features, False, catalog_embeddings),
            "last_item": tf.gather(catalog_embeddings, history[:, -1]),
            "history_categories": _mean_over_real_items(tf.gather(self._categories, history), history),
            # log(1 + items in the history window): how much the query and the rules rest on.
            "history_length": tf.math.log1p(tf.reduce_sum(tf.cast(history > 0, tf.float32), axis=1, keepdims=True)),
        }
        # One window of the most recent items serves the rules and the similarities: each reads its own tail.
        window = max(self.rules.recent_items if self.rules is not None else 0, self.num_compared_items)
        if window:
            recent = history[:, -window:]
            missing = window - tf.shape(recent)[1]  # a history shorter than the window
            context["recent_items"] = tf.pad(recent, [[0, 0], [missing, 0]])
        return context

    def score(self, context: dict, candidate_item_ids: tf.Tensor, catalog_embeddings: tf.Tensor,
              training: bool = False) -> tf.Tensor:
        """Scores [batch, N] of ``candidate_item_ids`` [batch, N] for users described by ``user_context``."""
        return self.score_indices(context, self.query_tower.item_tower.indices(candidate_item_ids),
                                  catalog_embeddings, training)

    def score_indices(self, context: dict, candidates: tf.Tensor, catalog_embeddings: tf.Tensor,
                      training: bool = False) -> tf.Tensor:
        """``score`` of candidates given as catalog indices [batch, N] (what an index over the catalog returns)."""
        learned = self.learned_scores(context, candidates, catalog_embeddings, training)
        return learned - self.popularity_penalties(candidates)

    def popularity_penalties(self, candidates: tf.Tensor) -> tf.Tensor:
        """What ``score_indices`` subtracts from the learned scores of ``candidates`` (catalog indices)."""
        return self.popularity_penalty * tf.gather(self._log_popularity, candidates) ** self.popularity_penalty_exponent

    def learned_scores(self, context: dict, candidates: tf.Tensor, catalog_embeddings: tf.Tensor,
                       training: bool = False) -> tf.Tensor:
        """What training fits, [batch, N]: retrieval's score plus the network's correction, no penalty.

        The user's own vectors (the query, the history's category mix) reach the network through their
        products with each candidate, not as copies beside it. A copy is the same row for every candidate
        of a list, which a listwise loss can use only through its crosses with the candidate. Validation
        lists ranked as well without the copies. Their columns were a third of the width that the cross
        and deep layers multiply for every candidate of every request.
        """
        query, history_categories = context["query"], context["history_categories"]
        candidate_embeddings = tf.gather(catalog_embeddings, candidates)  # [B, N, d]
        candidate_categories = tf.gather(self._categories, candidates)  # [B, N, C]

        retrieval_scores = tf.einsum("bd,bnd->bn", query, candidate_embeddings)
        # Where the candidate stands in this list: its retrieval rank and log-share of the list's softmax.
        retrieval_ranks = tf.argsort(tf.argsort(-retrieval_scores, axis=1, stable=True), axis=1, stable=True)
        list_log_shares = retrieval_scores - tf.reduce_logsumexp(retrieval_scores, axis=1, keepdims=True)
        extra = []
        if self.rules is not None:
            extra.append(self.rules(context["recent_items"][:, -self.rules.recent_items:], candidates))
        if self.num_compared_items:
            compared = context["recent_items"][:, -self.num_compared_items:]
            extra.append(history_similarities(candidate_embeddings, compared, catalog_embeddings))
        crossed = tf.concat(
            [
                retrieval_scores[..., tf.newaxis],
                tf.math.log1p(tf.cast(retrieval_ranks, tf.float32))[..., tf.newaxis],
                tf.maximum(list_log_shares, -20.0)[..., tf.newaxis],
                tf.repeat(context["history_length"][:, tf.newaxis, :], tf.shape(candidates)[1], axis=1),
                *extra,
                tf.einsum("bd,bnd->bn", context["last_item"], candidate_embeddings)[..., tf.newaxis],
                tf.einsum("bc,bnc->bn", history_categories, candidate_categories)[..., tf.newaxis],
                tf.gather(self._log_popularity, candidates)[..., tf.newaxis],
                query[:, tf.newaxis, :] * candidate_embeddings,
                candidate_embeddings,
                candidate_categories,
            ],
            axis=-1,
        )
        return retrieval_scores + tf.squeeze(self._deep(self._cross(crossed), training=training), -1)

    def contexts(self, features: dict, batch_size: int = 512) -> dict:
        """``user_context`` of every row of ``features``, in batches: what ``compute_loss`` reads.

        The towers are frozen, so each list's context is computed once for the whole training run
        instead of once per step and epoch (a transformer pass over the history each time).
        """
        catalog_embeddings = self.query_tower.item_tower.embed_catalog()
        rows = int(tf.shape(features[HISTORY_INPUT])[0])
        chunks = [self.user_context({name: values[start:start + batch_size] for name, values in features.items()},
                                    catalog_embeddings) for start in range(0, rows, batch_size)]
        return {name: tf.concat([chunk[name] for chunk in chunks], axis=0) for name in chunks[0]}

    def compute_loss(self, features: dict, training: bool = False) -> tf.Tensor:
        """Listwise softmax: ``labels`` [batch, N] is one-hot on the true next item among ``candidate_item_ids``.

        ``features["context"]`` is each list's user context (``contexts``).
        """
        item_tower = self.query_tower.item_tower
        scores = self.learned_scores(features["context"], item_tower.indices(features[CANDIDATE_FEATURE]),
                                     item_tower.embed_catalog(), training)
        return self.task(labels=features["labels"], predictions=scores)


def history_similarities(candidate_embeddings: tf.Tensor, history: tf.Tensor,
                         catalog_embeddings: tf.Tensor) -> tf.Tensor:
    """[B, N, 2]: each candidate's largest and mean dot product with the items of ``history``.

    ``candidate_embeddings`` [B, N, d]; ``history`` [B, H] catalog indices, 0 for padding (ignored); a
    history with no items gives 0 for both.
    """
    # Summed along the last axis: ``_mean_over_real_items`` sums along the first, a float order that gives the
    # ranker other bits to train from, and its figures (docs/benchmarks.md) would no longer reproduce.
    similarities = tf.einsum("bnd,bhd->bnh", candidate_embeddings, tf.gather(catalog_embeddings, history))
    real = tf.cast(history > 0, tf.float32)[:, tf.newaxis, :]  # [B, 1, H]
    count = tf.reduce_sum(real, axis=-1)  # [B, 1]
    largest = tf.reduce_max(tf.where(real > 0, similarities, -np.inf), axis=-1)
    return tf.stack([tf.where(count > 0, largest, 0.0),
                     tf.reduce_sum(similarities * real, axis=-1) / tf.maximum(count, 1.0)], axis=-1)


def normalized_log_popularity(item_popularity: np.ndarray) -> np.ndarray:
    """[N + 1] log(1 + interactions) scaled to 0..1 over the catalog: the popularity feature, and the unit
    of the popularity penalty (0 for the least popular item, 1 for the most)."""
    log_popularity = np.log1p(item_popularity.astype(np.float32))
    return log_popularity / max(1.0, float(log_popularity.max()))


def _mean_over_real_items(values: tf.Tensor, indices: tf.Tensor) -> tf.Tensor:
    real = tf.cast(indices > 0, tf.float32)[..., tf.newaxis]
    return tf.reduce_sum(values * real, axis=1) / tf.maximum(tf.reduce_sum(real, axis=1), 1.0)
