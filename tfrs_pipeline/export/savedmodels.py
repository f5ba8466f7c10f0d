"""The serving signatures of the exported models: the contract TF Serving clients rely on.

A client of the retrieval or ranking model sends only user ids: each export carries a snapshot of
every user's features, recent history and rated items, taken at export time, and looks them up
inside the graph. A second signature of both models, ``query_features``, takes the user's features
(the data set's declared user features, each named as its column) and history explicitly, for
callers with fresher data (a feature store, a user who just did something, a user the snapshot does
not hold): retrieval and ranking then give a two-stage answer from features and history alone.

The towers are frozen at export, so everything that depends only on the snapshot (each known user's
query embedding and ranking context, the catalog's embeddings) is computed once at export time and
stored, not recomputed on every request: a user-id request costs a lookup, the top-k search and the
ranker's crossing of the candidates, not a transformer pass over 200 history slots. Only the
explicit-features signature runs the query tower per request, as it must. The exporter computes
those tables once (``UserSnapshot.precompute``) and hands the same ones to every export.

The session model's export takes the session's item ids instead of a user id: sessions are
anonymous, so there is no snapshot to look up, only the catalog.
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf
from tf_keras.src.saving.legacy.saved_model.utils import keras_option_scope

from tfrs_pipeline.contracts import (
    CANDIDATES_INPUT,
    HISTORY_INPUT,
    HISTORY_TIMESTAMPS_INPUT,
    ITEM_ID_INPUT,
    ITEM_IDS_OUTPUT,
    KNOWN_USER_OUTPUT,
    QUERY_FEATURES_SIGNATURE,
    SCORES_OUTPUT,
    SERVING_SIGNATURE,
    SESSION_INPUT,
    USER_ID_INPUT,
    FeatureSpec,
)
from tfrs_pipeline.data.sequence_examples import trimmed_left_padded
from tfrs_pipeline.features.arrays import FeatureRows, examples_as_tensors, input_spec
from tfrs_pipeline.index import SCANN_SAVE_OPTIONS
from tfrs_pipeline.models.encoders import most_recent_left_padded, most_recent_timestamps
from tfrs_pipeline.models.query_tower import QueryTower
from tfrs_pipeline.models.ranking import RankingModel
from tfrs_pipeline.models.session import SessionModel
from tfrs_pipeline.models.session_knn import SessionNeighbours, sum_by_row

_USER_ID_SPEC = tf.TensorSpec([None], tf.string, name=USER_ID_INPUT)
_HISTORY_SPEC = tf.TensorSpec([None, None], tf.string, name=HISTORY_INPUT)
_HISTORY_TIMESTAMPS_SPEC = tf.TensorSpec([None, None], tf.int64, name=HISTORY_TIMESTAMPS_INPUT)
_CANDIDATES_SPEC = tf.TensorSpec([None, None], tf.string, name=CANDIDATES_INPUT)
_LAST_ITEM_INDEX = "last_item_index"  # what a stored user context holds instead of the last item's embedding
NO_POSITION = np.iinfo(np.int64).max  # pads rows of sorted catalog positions, after every real one


def fresh_feature_specs(user_specs: Sequence[FeatureSpec], history_timestamps: bool) -> dict[str, tf.TensorSpec]:
    """The inputs of a ``query_features`` signature: each user feature, named as its column, the history,
    and for towers that read time (``history_timestamps``) the history's timestamps."""
    specs = {**{spec.name: input_spec(spec) for spec in user_specs}, HISTORY_INPUT: _HISTORY_SPEC}
    if history_timestamps:
        specs[HISTORY_TIMESTAMPS_INPUT] = _HISTORY_TIMESTAMPS_SPEC
    return specs


class UserSnapshot(tf.Module):
    """Users' features, recent histories and rated items at export time, looked up by user id.

    Unknown user ids get row 0: no history, nothing excluded and no features, so the model answers
    with what it knows for a new user rather than failing the whole batch.

    Args:
      users: the users' features (``features.arrays.FeatureRows``); rows of ``user_ids`` are looked up.
      user_ids: [U] ids of the users the snapshot holds.
      histories: per user, all their item ids in chronological order.
      timestamps: per user, the Unix seconds of those items, for towers that read time; else None.
      max_length: history slots of the query tower.
      catalog_item_ids: [N] the catalog in index order (``CatalogSearch`` positions 1..N): the rated items
        are held as sorted positions, which exclude at the cost of a binary search and no string lookup.
    """

    def __init__(self, users: FeatureRows, user_ids: Sequence[str], histories: Sequence[np.ndarray],
                 timestamps: Sequence[np.ndarray] | None, max_length: int, catalog_item_ids: Sequence[str]):
        super().__init__()
        self.specs = users.specs
        self._max_length = max_length
        self._lookup = tf.keras.layers.StringLookup(vocabulary=list(user_ids), mask_token=None)
        self._user_ids = tf.constant(["", *map(str, user_ids)])  # row 0 is the unknown user
        self._features = {name: tf.constant(values)
                          for name, values in examples_as_tensors(users.lookup(["", *user_ids])).items()}
        # Kept as lists for `precompute` only, never a [users, max_length] array: at 1M users of 200 slots
        # that tensor and its numpy source would hold 8.8 GB (24 + 20 bytes a slot, arithmetic) while
        # exporting, and the query tower would run over every padded slot.
        self._recent = [np.asarray([], dtype=object)] + [np.asarray(items[-max_length:], dtype=object)
                                                          for items in histories]
        self._recent_times = None if timestamps is None else [np.zeros(0, np.int64)] + [
            np.asarray(times[-max_length:], np.int64) for times in timestamps]
        # Variables, not a constant: a graph constant is copied as the graph is loaded and optimized, and at
        # millions of users it nears the graph's 2 GB limit; variables are restored once from the checkpoint.
        positions, row_splits = rated_positions(np.asarray(catalog_item_ids).astype(str),
                                                [np.zeros(0, dtype=str), *histories])
        self._rated = tf.Variable(positions, trainable=False, name="rated_positions")
        self._rated_row_splits = tf.Variable(row_splits, trainable=False, name="rated_row_splits")

    def rows(self, user_id: tf.Tensor) -> tf.Tensor:
        """Snapshot rows of ``user_id`` [batch]; 0 for users the snapshot does not know."""
        return self._lookup(user_id)

    def known(self, user_id: tf.Tensor) -> tf.Tensor:
        """[batch] whether the snapshot holds each user (the others are answered as a new user)."""
        return self._lookup(user_id) > 0

    def _features_of_rows(self, rows: np.ndarray) -> dict:
        """The features and history of ``rows``, the history left-padded to the longest of them only."""
        looked_up = {name: tf.gather(values, rows) for name, values in self._features.items()}
        features = {**looked_up, USER_ID_INPUT: tf.gather(self._user_ids, rows),
                    HISTORY_INPUT: tf.constant(trimmed_left_padded([self._recent[row] for row in rows],
                                                                   self._max_length).astype(str))}
        if self._recent_times is not None:
            features[HISTORY_TIMESTAMPS_INPUT] = tf.constant(trimmed_left_padded(
                [self._recent_times[row] for row in rows], self._max_length, padding=0))
        return features

    def precompute(self, compute: Callable[[dict], dict], batch_size: int = 512) -> dict[str, tf.Variable]:
        """``compute``(features) for every snapshot row, as per-row tables to ``tf.gather`` with ``rows``.

        Row 0 holds what an unknown user gets, so a lookup of any id is defined. The tables are
        non-trainable variables: they are saved with the model's other weights, not in its graph.
        Rows are computed in batches of similar history length, each trimmed of the slots all its
        rows pad (as evaluation computes them): most users' histories fill a small part of the window.
        """
        lengths = np.array([len(items) for items in self._recent])
        order = np.argsort(lengths, kind="stable")
        chunks = [compute(self._features_of_rows(order[start:start + batch_size]))
                  for start in range(0, len(order), batch_size)]
        in_row_order = np.argsort(order)
        return {name: tf.Variable(tf.gather(tf.concat([chunk[name] for chunk in chunks], axis=0), in_row_order),
                                  trainable=False, name=name)
                for name in chunks[0]}

    def rated_positions(self, user_id: tf.Tensor) -> tf.Tensor:
        """[batch, most rated in batch] catalog positions each user rated, ascending, ``NO_POSITION`` padded.

        Gathers from the variables directly: reading a variable whole copies it (every rated item of
        every user, per request), a gather copies only the requested users' rows.
        """
        rows = self._lookup(user_id)
        starts = tf.gather(self._rated_row_splits, rows)
        positions = tf.ragged.range(starts, tf.gather(self._rated_row_splits, rows + 1))
        return positions.with_flat_values(tf.gather(self._rated, positions.flat_values)).to_tensor(NO_POSITION)


def rated_positions(catalog_item_ids: np.ndarray, histories: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Each history's distinct catalog positions (1..N), ascending, as flat values and [len(histories) + 1]
    row splits; items outside the catalog are left out (no search returns them: nothing to exclude)."""
    order = np.argsort(catalog_item_ids)
    sorted_ids = catalog_item_ids[order]
    lengths = np.array([len(items) for items in histories], dtype=np.int64)
    items = np.concatenate([np.zeros(0, dtype=str), *histories]).astype(str)
    found = np.minimum(np.searchsorted(sorted_ids, items), max(len(sorted_ids) - 1, 0))
    in_catalog = sorted_ids[found] == items
    base = len(catalog_item_ids) + 1
    owners = np.repeat(np.arange(len(histories), dtype=np.int64), lengths)[in_catalog]
    keys = np.unique(owners * base + order[found[in_catalog]] + 1)
    row_splits = np.concatenate([[0], np.cumsum(np.bincount(keys // base, minlength=len(histories)))])
    return (keys % base).astype(np.int64), row_splits.astype(np.int64)


def _fresh_query_features(features: dict, max_length: int) -> dict:
    """A ``query_features`` request as the query tower reads it: the most recent items (and their
    timestamps, where the signature takes them), no user id."""
    history = features[HISTORY_INPUT]
    query_features = {**features, HISTORY_INPUT: most_recent_left_padded(history, max_length),
                      USER_ID_INPUT: tf.fill([tf.shape(history)[0]], "")}
    if HISTORY_TIMESTAMPS_INPUT in features:
        timestamps = features[HISTORY_TIMESTAMPS_INPUT]
        with tf.control_dependencies([tf.debugging.assert_equal(
                tf.shape(timestamps), tf.shape(history),
                message=f"{HISTORY_TIMESTAMPS_INPUT} must have the shape of {HISTORY_INPUT}: a time per item")]):
            query_features[HISTORY_TIMESTAMPS_INPUT] = most_recent_timestamps(history, timestamps, max_length)
    return query_features


class RetrievalQueries(tf.Module):
    """The query side of retrieval: each request's query embedding and the items it has already seen.

    Kept apart from the catalog search (``CatalogSearch``) so that a catalog refresh can pair these
    same frozen towers and snapshot with a larger index, without retraining: the refreshed export
    loads this module from the previous version and saves it again beside the new search.

    Args:
      query_tower: the trained query tower (its item tower embeds items added after export).
      users: the user snapshot.
      user_queries: [snapshot rows, dim] each row's query, from ``UserSnapshot.precompute``; also the
        sample of real queries a refreshed index is checked with.
      catalog_embeddings: [N + 1, dim] the item tower's output for the catalog.
    """

    def __init__(self, query_tower: QueryTower, users: UserSnapshot, user_queries: tf.Variable,
                 catalog_embeddings: tf.Variable):
        super().__init__()
        self.query_tower = query_tower
        self.users = users
        self.user_queries = user_queries
        self._catalog_embeddings = catalog_embeddings
        item_specs = query_tower.item_tower.specs
        self.for_users = tf.function(self._for_users, input_signature=[_USER_ID_SPEC])
        self.rated_positions = tf.function(users.rated_positions, input_signature=[_USER_ID_SPEC])
        self.known_users = tf.function(users.known, input_signature=[_USER_ID_SPEC])
        self.for_features = tf.function(self._for_features, input_signature=[
            fresh_feature_specs(users.specs, query_tower.uses_time)])
        self.embed_items = tf.function(query_tower.item_tower.call, input_signature=[item_feature_specs(item_specs)])

    def _for_users(self, user_id: tf.Tensor) -> tf.Tensor:
        return tf.gather(self.user_queries, self.users.rows(user_id))

    def _for_features(self, features: dict) -> tf.Tensor:
        query_features = _fresh_query_features(features, self.query_tower.max_length)
        return self.query_tower.query(query_features, False, self._catalog_embeddings)


def item_feature_specs(specs: Sequence[FeatureSpec]) -> dict[str, tf.TensorSpec]:
    """The inputs of ``embed_items``: the item ids and each item feature, named as its column."""
    return {ITEM_ID_INPUT: tf.TensorSpec([None], tf.string, name=ITEM_ID_INPUT),
            **{spec.name: input_spec(spec) for spec in specs}}


class CatalogSearch(tf.Module):
    """Top-k over an indexed catalog, without the items a request excludes.

    The index returns catalog positions (1..N, ``index.catalog_positions``), not ids: exclusions and the
    ranker work on positions, and only the final answer's ids are strings.

    Args:
      top_k: an indexed TFRS top-k layer over the catalog (ScaNN or brute force, from ``index.py``) whose
        identifiers are the catalog positions.
      item_ids: [N] the indexed items' ids, in position order.
      candidate_embeddings: [N, dim] their embeddings, kept so that a refresh can extend the catalog.
      k: items returned per request (at most N).
    """

    def __init__(self, top_k: tf.keras.Model, item_ids: Sequence[str], candidate_embeddings: tf.Tensor, k: int):
        super().__init__()
        self.top_k = top_k
        self.item_ids = tf.Variable(np.asarray(item_ids).astype(str), trainable=False, name="item_ids")
        self.candidate_embeddings = tf.Variable(candidate_embeddings, trainable=False, name="candidate_embeddings")
        self._index_of = tf.keras.layers.StringLookup(vocabulary=list(np.asarray(item_ids).astype(str)),
                                                      mask_token=None)
        self.k = min(k, len(item_ids))

    def __call__(self, queries: tf.Tensor, excluded_item_ids: tf.Tensor) -> dict:
        """Top-k ids and scores without ``excluded_item_ids`` [batch, any] ("" padded)."""
        scores, positions = self.positions(queries, self.sorted_positions(excluded_item_ids))
        return {ITEM_IDS_OUTPUT: self.ids_of(positions), SCORES_OUTPUT: scores}

    def sorted_positions(self, item_ids: tf.Tensor) -> tf.Tensor:
        """[batch, width] catalog positions of ``item_ids`` [batch, width], ascending (0 for "" and unknown ids)."""
        return tf.sort(self._index_of(item_ids), axis=1)

    def positions(self, queries: tf.Tensor, excluded: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Top-k (scores, positions) without the ``excluded`` positions [batch, width], ascending per row.

        Over-fetches by the widest exclusion list, then drops the excluded by a binary search of each
        fetched position in its row: the cost grows with the fetched and excluded counts, not with the
        catalog (a heavy user rated 2,314 movies). The over-fetch stops at the catalog; where the
        exclusions leave fewer than k items, the list ends in position 0 with score -inf, so its shape
        stays [batch, k].
        """
        fetched = tf.minimum(self.k + tf.shape(excluded)[1], tf.shape(self.item_ids)[0])
        scores, positions = self.top_k(queries, k=fetched)
        bounded = tf.concat([excluded, tf.fill([tf.shape(excluded)[0], 1], tf.constant(NO_POSITION, tf.int64))], 1)
        slots = tf.searchsorted(bounded, positions)  # every position is below the bound: a slot of its row
        is_excluded = tf.equal(tf.gather(bounded, slots, batch_dims=1), positions)
        kept_scores, kept = tf.math.top_k(tf.where(is_excluded, -np.inf, scores), k=self.k)
        kept_positions = tf.where(tf.math.is_inf(kept_scores), tf.zeros_like(kept, tf.int64),
                                  tf.gather(positions, kept, batch_dims=1))
        return kept_scores, kept_positions

    def ids_of(self, positions: tf.Tensor) -> tf.Tensor:
        """The item ids at catalog ``positions`` ("" at position 0)."""
        return tf.where(positions > 0, tf.gather(self.item_ids, tf.maximum(positions - 1, 0)), "")


class RetrievalExport(tf.Module):
    """Retrieval for serving: user id (or fresh features and history) -> top-K item ids and scores.

    Args:
      queries: the query side (``RetrievalQueries``, or one loaded from a previous version).
      search: the catalog search.
      user_specs: the user features of the ``query_features`` signature.
      history_timestamps: whether that signature takes the history's timestamps (the towers read time).
    """

    def __init__(self, queries: RetrievalQueries, search: CatalogSearch, user_specs: Sequence[FeatureSpec],
                 history_timestamps: bool):
        super().__init__()
        self.queries = queries
        self.search = search
        self.serve = tf.function(self._serve, input_signature=[_USER_ID_SPEC])
        self.serve_features = tf.function(self._serve_features, input_signature=[
            fresh_feature_specs(user_specs, history_timestamps)])

    def _serve(self, user_id: tf.Tensor) -> dict:
        scores, positions = self.search.positions(self.queries.for_users(user_id), self._rated_positions(user_id))
        return {ITEM_IDS_OUTPUT: self.search.ids_of(positions), SCORES_OUTPUT: scores,
                KNOWN_USER_OUTPUT: self.queries.known_users(user_id)}

    def _rated_positions(self, user_id: tf.Tensor) -> tf.Tensor:
        """The users' rated positions; a query side loaded from an export written before the snapshot held
        positions (a catalog refresh of it) has the rated ids, looked up here instead."""
        if hasattr(self.queries, "rated_positions"):
            return self.queries.rated_positions(user_id)
        return self.search.sorted_positions(self.queries.rated_items(user_id))

    def _serve_features(self, features: dict) -> dict:
        """Fresh features; ``history_item_ids`` any length, "" padded; its items are excluded."""
        return self.search(self.queries.for_features(features), features[HISTORY_INPUT])


def stored_user_context(ranking_model: RankingModel, features: dict, catalog_embeddings: tf.Tensor) -> dict:
    """``RankingModel.user_context`` in the form an export keeps for every known user.

    Each known user's row sits in the export and in the server's memory, a cost that grows with the
    users, so what a request derives cheaply is not stored: the last item's embedding becomes its
    catalog index (a gather from the catalog embeddings the export holds anyway) and item indices are
    held as int32. ``restored_user_context`` gives back what ``user_context`` gave, to the bit.
    """
    if catalog_embeddings.shape[0] > np.iinfo(np.int32).max:
        raise ValueError(f"a catalog of {catalog_embeddings.shape[0] - 1} items does not fit int32 item indices")
    context = ranking_model.user_context(features, catalog_embeddings)
    del context["last_item"]
    last_item = ranking_model.query_tower.item_tower.indices(features[HISTORY_INPUT])[:, -1]
    return {**context, **{name: tf.cast(indices, tf.int32) for name, indices in context.items()
                          if indices.dtype == tf.int64}, _LAST_ITEM_INDEX: tf.cast(last_item, tf.int32)}


def restored_user_context(stored: dict, catalog_embeddings: tf.Tensor) -> dict:
    """The rows of ``stored_user_context`` as ``RankingModel.user_context`` gives them."""
    context = {name: tf.cast(values, tf.int64) if values.dtype == tf.int32 else values
               for name, values in stored.items() if name != _LAST_ITEM_INDEX}
    return {**context, "last_item": tf.gather(catalog_embeddings, stored[_LAST_ITEM_INDEX])}


class RankingExport(tf.Module):
    """Ranking for serving: user id (or fresh features and history) + candidate item ids [batch, N] -> scores.

    Args:
      ranking_model: the trained ranker.
      users: the user snapshot.
      user_context: ``stored_user_context`` of every snapshot row, from ``UserSnapshot.precompute``.
      catalog_embeddings: [N + 1, dim] the item tower's output for the catalog.
    """

    def __init__(self, ranking_model: RankingModel, users: UserSnapshot, user_context: dict[str, tf.Variable],
                 catalog_embeddings: tf.Variable):
        super().__init__()
        self.ranking_model = ranking_model
        self.users = users
        self._user_context = user_context
        self._catalog_embeddings = catalog_embeddings
        self.serve = tf.function(self._serve, input_signature=[_USER_ID_SPEC, _CANDIDATES_SPEC])
        self.serve_features = tf.function(self._serve_features, input_signature=[
            {**fresh_feature_specs(users.specs, ranking_model.query_tower.uses_time),
             CANDIDATES_INPUT: _CANDIDATES_SPEC}])

    def _serve(self, user_id: tf.Tensor, item_ids: tf.Tensor) -> dict:
        return {SCORES_OUTPUT: self.score(self.context_of_users(user_id), item_ids)}

    def _serve_features(self, features: dict) -> dict:
        """Fresh features and history, as retrieval's ``query_features`` takes them, plus the candidates."""
        return {SCORES_OUTPUT: self.score(self.context_of_features(features), features[CANDIDATES_INPUT])}

    def context_of_users(self, user_id: tf.Tensor) -> dict:
        """The snapshot's precomputed ranking context of each user (its ``query`` is retrieval's query)."""
        rows = self.users.rows(user_id)
        return restored_user_context({name: tf.gather(table, rows) for name, table in self._user_context.items()},
                                     self._catalog_embeddings)

    def context_of_features(self, features: dict) -> dict:
        """The ranking context of fresh features and history: one pass of the query tower."""
        query_features = _fresh_query_features(features, self.ranking_model.query_tower.max_length)
        return self.ranking_model.user_context(query_features, self._catalog_embeddings)

    def score(self, context: dict, item_ids: tf.Tensor) -> tf.Tensor:
        return self.score_positions(context, self.ranking_model.query_tower.item_tower.indices(item_ids))

    def score_positions(self, context: dict, candidates: tf.Tensor) -> tf.Tensor:
        """Scores of catalog positions [batch, N] (the ranker's catalog indices)."""
        return self.ranking_model.score_indices(context, candidates, self._catalog_embeddings)


class RecommenderExport(tf.Module):
    """Both stages in one graph: a user id (or fresh features and history) -> the ranked top-K, in one call.

    Two Predict calls per recommendation cost two round trips through gRPC and the server, and the
    fresh-feature path ran the query tower twice (retrieval's query, then ranking's context, which
    holds the same query). Here the ranking context is computed once, its query retrieves the
    candidates, the ranker scores them and the best ``k`` come back, best first: what the pipeline
    evaluates as two-stage, retrieving ``ranking_candidates`` items for the ranker.

    Args:
      ranking: the ranking export (its snapshot, contexts and scorer).
      search: the catalog search, asked for the ranker's candidate list (its k is the list's length).
      k: items returned per request, best first (at most the candidate list's length).
    """

    def __init__(self, ranking: RankingExport, search: CatalogSearch, k: int):
        super().__init__()
        ranked_catalog = ranking.ranking_model.query_tower.item_tower.id_lookup.get_vocabulary()[1:]
        if list(search.item_ids.numpy().astype(str)) != list(ranked_catalog):
            raise ValueError("the search and the ranker must index the same catalog in the same order: the ranker "
                             "scores the search's positions")
        self.ranking = ranking
        self.search = search
        self.k = min(k, search.k)
        self.serve = tf.function(self._serve, input_signature=[_USER_ID_SPEC])
        self.serve_features = tf.function(self._serve_features, input_signature=[
            fresh_feature_specs(ranking.users.specs, ranking.ranking_model.query_tower.uses_time)])

    def _serve(self, user_id: tf.Tensor) -> dict:
        users = self.ranking.users
        return {**self._recommend(self.ranking.context_of_users(user_id), users.rated_positions(user_id)),
                KNOWN_USER_OUTPUT: users.known(user_id)}

    def _serve_features(self, features: dict) -> dict:
        """Fresh features; ``history_item_ids`` any length, "" padded; its items are excluded."""
        return self._recommend(self.ranking.context_of_features(features),
                               self.search.sorted_positions(features[HISTORY_INPUT]))

    def _recommend(self, context: dict, excluded: tf.Tensor) -> dict:
        """Candidates for the context's query, ranked; empty slots (exclusions left too few) stay last."""
        _, candidates = self.search.positions(context["query"], excluded)
        scores = tf.where(candidates > 0, self.ranking.score_positions(context, candidates), -np.inf)
        best_scores, best = tf.math.top_k(scores, k=self.k)
        best_positions = tf.where(tf.math.is_inf(best_scores), tf.zeros_like(best, tf.int64),
                                  tf.gather(candidates, best, batch_dims=1))
        return {ITEM_IDS_OUTPUT: self.search.ids_of(best_positions), SCORES_OUTPUT: best_scores}


class SessionExport(tf.Module):
    """Sessions for serving: ``session_item_ids`` (string [batch, length], "" padded at the end) -> top-K.

    Unknown ids are dropped before encoding, as if never clicked; a session left with no known
    item gets the most popular items (scores: their share of training clicks). Sessions longer than
    the model's slots keep their most recent items. Items of the session carry the model's repeat
    bonus, and the items of the session's nearest training sessions the neighbours' bonus. The
    unit-length item table the encoder reads is stored once at export rather than normalised again
    on every request.

    Args:
      model: the trained session model.
      top_k: an indexed TFRS top-k layer over the catalog (ScaNN or brute force, from ``index.py``).
      popular_item_ids, popular_scores: [k] the fallback list, most popular first.
      k: items returned per session.
      neighbours: session kNN over the training sessions, with its weight; None (or weight 0): none.
    """

    def __init__(self, model: SessionModel, top_k: tf.keras.Model, popular_item_ids: np.ndarray,
                 popular_scores: np.ndarray, k: int, neighbours: SessionNeighbours | None = None):
        super().__init__()
        self.model = model
        self.top_k = top_k
        self.k = k
        self.neighbours = neighbours if neighbours is not None and neighbours.weight else None
        self._catalog_embeddings = tf.Variable(model.catalog_embeddings(), trainable=False)
        self._item_ids = tf.constant(["", *model.item_lookup.get_vocabulary()[1:]])  # by catalog index
        self._popular_item_ids = tf.constant(np.asarray(popular_item_ids[:k]).astype(str))
        self._popular_scores = tf.constant(np.asarray(popular_scores[:k]), tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string, name=SESSION_INPUT)])
    def serve(self, session_item_ids: tf.Tensor) -> dict:
        known = tf.where(self.model.item_lookup(session_item_ids) > 0, session_item_ids, "")
        recent = most_recent_left_padded(known, self.model.max_length)
        queries = self.model.query(recent, False, self._catalog_embeddings)
        scores, item_ids = self._with_bonuses(queries, recent, *self.top_k(queries, k=self.k))
        has_items = tf.reduce_any(tf.not_equal(recent, ""), axis=1, keepdims=True)
        return {
            ITEM_IDS_OUTPUT: tf.where(has_items, item_ids, self._popular_item_ids[tf.newaxis]),
            SCORES_OUTPUT: tf.where(has_items, scores, self._popular_scores[tf.newaxis]),
        }

    def _with_bonuses(self, queries: tf.Tensor, recent: tf.Tensor, index_scores: tf.Tensor,
                      index_item_ids: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """The top k once the session's own items carry their repeat bonus and the neighbours' items theirs.

        The index scores items by the dot product alone, so it may miss an item a bonus lifts.
        Every item with a bonus is therefore scored exactly (dot product plus all its bonuses: each
        click's repeat bonus, the neighbours' bonus) and competes with the index's list, from which
        those items are removed.
        """
        indices = self.model.item_lookup(recent)
        rows, items, bonuses = self._repeat_bonuses(indices)
        if self.neighbours is not None:
            neighbour_rows, neighbour_items, neighbour_bonuses = self.neighbours.bonus(indices)
            rows, items, bonuses = (tf.concat(pair, 0) for pair in ((rows, neighbour_rows), (items, neighbour_items),
                                                                   (bonuses, neighbour_bonuses)))
        num_keys = tf.cast(tf.shape(self._item_ids)[0], tf.int64)
        rows, items, bonuses = sum_by_row(rows, items, bonuses, num_keys)
        exact = tf.reduce_sum(tf.gather(queries, rows) * tf.gather(self._catalog_embeddings, items), -1) + bonuses
        batch = tf.shape(queries, out_type=tf.int64)[0]
        bonus_scores = tf.RaggedTensor.from_value_rowids(exact, rows, nrows=batch).to_tensor(-np.inf)
        bonus_item_ids = tf.RaggedTensor.from_value_rowids(tf.gather(self._item_ids, items), rows,
                                                           nrows=batch).to_tensor("")
        # Index hits that also have a bonus are already scored exactly: drop them from the index's list.
        keys = rows * num_keys + items  # ascending
        index_keys = tf.range(batch)[:, tf.newaxis] * num_keys + self.model.item_lookup(index_item_ids)
        found = tf.searchsorted(keys, tf.reshape(index_keys, [-1]))
        has_bonus = tf.equal(tf.gather(tf.concat([keys, [-1]], 0), found), tf.reshape(index_keys, [-1]))
        index_scores = tf.where(tf.reshape(has_bonus, tf.shape(index_keys)), -np.inf, index_scores)
        scores = tf.concat([index_scores, bonus_scores], axis=1)
        best_scores, positions = tf.math.top_k(scores, k=self.k)
        return best_scores, tf.gather(tf.concat([index_item_ids, bonus_item_ids], axis=1), positions, batch_dims=1)

    def _repeat_bonuses(self, indices: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """(row, item, bonus) of each click of the sessions [B, W] of catalog indices (left-padded with 0)."""
        clicked = indices > 0
        slot_bonus = tf.broadcast_to(self.model.last_slot_bonus(tf.shape(indices)[1])[tf.newaxis], tf.shape(indices))
        return tf.where(clicked)[:, 0], tf.boolean_mask(indices, clicked), tf.boolean_mask(slot_bonus, clicked)


def _save(module: tf.Module, path: str | os.PathLike, signatures: dict,
          options: tf.saved_model.SaveOptions | None = None) -> None:
    """``tf.saved_model.save`` without Keras's per-layer traces.

    Keras traces every layer's call functions into the SavedModel so that ``load_model`` can revive
    the layers as Keras objects. These exports are read with ``tf.saved_model.load`` and their
    signatures alone, which never call those traces, and tracing them took most of an export's time.
    """
    with keras_option_scope(save_traces=False):
        tf.saved_model.save(module, os.fspath(path), signatures=signatures, options=options)


def save_retrieval(module: RetrievalExport | RecommenderExport, path: str | os.PathLike, uses_scann: bool) -> None:
    """Saves both signatures of a retrieval or recommender export; ScaNN ops must be allow-listed to be saved at all."""
    signatures = {SERVING_SIGNATURE: module.serve, QUERY_FEATURES_SIGNATURE: module.serve_features}
    _save(module, path, signatures, SCANN_SAVE_OPTIONS if uses_scann else None)


def save_ranking(module: RankingExport, path: str | os.PathLike) -> None:
    """Saves the user-id signature and the fresh-feature one (same inputs as retrieval's, plus the candidates)."""
    _save(module, path, {SERVING_SIGNATURE: module.serve, QUERY_FEATURES_SIGNATURE: module.serve_features})


def save_session(module: SessionExport, path: str | os.PathLike, uses_scann: bool) -> None:
    _save(module, path, {SERVING_SIGNATURE: module.serve}, SCANN_SAVE_OPTIONS if uses_scann else None)
