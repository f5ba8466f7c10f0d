"""Trained towers applied to many users at once: queries, whole-catalog scores, candidate lists, re-ranking.

Evaluation, the training callback that watches validation quality, index checks and benchmarks
all score users the same way: the query after each user's full history (the last slot of the
causal encoder), against every catalog item, with the user's own items excluded. One module does
it, in batches of similar history length so the transformer spends little on padding, and scores
the catalog for a block of users at a time: the whole [users, items] matrix is never held (at 100K
users and 10K items it would be 4 GB, at 1M users and 100K items 400 GB).
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from tfrs_pipeline import evaluation
from tfrs_pipeline.catalog import Catalog
from tfrs_pipeline.contracts import USER_ID_INPUT
from tfrs_pipeline.data.sequence_examples import length_sorted_batches, next_item_examples
from tfrs_pipeline.data.split import UserSequences
from tfrs_pipeline.features.arrays import FeatureRows, examples_as_tensors
from tfrs_pipeline.models.item_tower import ItemTower
from tfrs_pipeline.models.query_tower import QueryTower
from tfrs_pipeline.models.ranking import CANDIDATE_FEATURE, RankingModel

BATCH = 512
BLOCK_SCORES = 1 << 25  # scores per block of users (128 MB as float32): 3,355 users at 10K items, 335 at 100K


def history_timestamps(query_tower: QueryTower, sequences: UserSequences) -> list[np.ndarray] | None:
    """The sequences' timestamps where the query tower reads time, else None: what every example built
    for the tower (training windows, scored users, the export's snapshot) holds beside the items."""
    return sequences.timestamps if query_tower.uses_time else None


def user_examples(users: FeatureRows, sequences: UserSequences, query_tower: QueryTower) -> dict:
    """One example per user as ``query_tower`` reads it: id, features, the most recent items (left-padded)
    and, where the tower reads time, their timestamps; no target."""
    empty = np.full(len(sequences), "", dtype=object)
    examples = next_item_examples(sequences.user_ids, sequences.item_ids, empty, query_tower.max_length,
                                  history_timestamps(query_tower, sequences))
    examples.pop("target_item_ids")
    return {**examples, **users.lookup(examples[USER_ID_INPUT])}


def query_embeddings(query_tower: QueryTower, users: FeatureRows, sequences: UserSequences) -> np.ndarray:
    """[U, dim] queries after each user's full history in ``sequences``."""
    examples = examples_as_tensors(user_examples(users, sequences, query_tower))
    batches = [(rows, query_tower(batch).numpy()) for rows, batch in length_sorted_batches(examples, BATCH)]
    queries = np.empty((len(sequences), batches[0][1].shape[1]), np.float32)
    for rows, values in batches:
        queries[rows] = values
    return queries


def score_blocks(queries: np.ndarray, item_tower: ItemTower) -> Iterator[tuple[slice, np.ndarray]]:
    """(rows, [rows, N + 1] scores) for consecutive blocks of ``queries`` [U, dim] against every catalog
    index, a block's size set by ``BLOCK_SCORES``; the unknown item (0) scores -inf."""
    catalog_embeddings = item_tower.embed_catalog().numpy().T
    block_users = max(1, BLOCK_SCORES // catalog_embeddings.shape[1])
    for start in range(0, len(queries), block_users):
        rows = slice(start, start + block_users)
        scores = queries[rows] @ catalog_embeddings
        scores[:, 0] = -np.inf
        yield rows, scores


def rated_indices(catalog: Catalog, sequences: UserSequences) -> list[np.ndarray]:
    """Per user, the catalog indices of their items: what their lists must leave out."""
    return [catalog.indices(items) for items in sequences.item_ids]


def candidate_lists(catalog: Catalog, queries: np.ndarray, item_tower: ItemTower, sequences: UserSequences,
                    size: int) -> np.ndarray:
    """[U, C] catalog indices of each user's best-scored items for ``queries`` [U, dim], their own items removed."""
    rated = rated_indices(catalog, sequences)
    size = min(size, len(catalog) - 1)
    return np.concatenate([evaluation.top_k_excluding(scores, rated[rows], size)
                           for rows, scores in score_blocks(queries, item_tower)])


def ranking_features(catalog: Catalog, users: FeatureRows, sequences: UserSequences, candidates: np.ndarray,
                     query_tower: QueryTower) -> dict:
    """What the ranker on ``query_tower`` reads for each user's candidate list [U, C] of catalog indices."""
    examples = user_examples(users, sequences, query_tower)
    examples[CANDIDATE_FEATURE] = catalog.item_ids[candidates - 1]
    return examples_as_tensors(examples)


def ranking_scores(ranking_model: RankingModel, features: dict) -> np.ndarray:
    """The ranking model's scores [U, C] of the candidate lists in ``features``, computed in batches."""
    rows = len(features[CANDIDATE_FEATURE])
    return np.concatenate([
        ranking_model({name: values[start:start + BATCH] for name, values in features.items()}).numpy()
        for start in range(0, rows, BATCH)
    ])


def rerank(ranking_model: RankingModel, features: dict, candidates: np.ndarray) -> np.ndarray:
    """The candidate lists in the ranking model's order."""
    return in_order(candidates, ranking_scores(ranking_model, features))


def in_order(candidates: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Each row of ``candidates`` from its best ``scores`` to its worst (ties in list order)."""
    return np.take_along_axis(candidates, np.argsort(-scores, axis=1, kind="stable"), axis=1)


class ValidationRanking(tf.keras.callbacks.Callback):
    """Adds ``val_loss``, ``val_hr@10`` and ``val_ndcg@10`` of the validation items to some epochs' logs.

    HR and NDCG on the full catalog are what the run is judged by, so progress bars, TensorBoard and
    the report show them. ``val_loss`` is the full-catalog softmax cross-entropy, taken from the same
    scores: exact even when training samples its negatives, and with no second pass over the
    validation users. It runs after every ``every``-th epoch and after the last (``validated_epochs``
    lists them, 1-based): it chooses nothing, so watching the curve every few epochs costs nothing
    in quality, while a pass over every user and the whole catalog after each epoch is a sizeable
    share of a short run.

    Args:
      every: validate after epochs ``every``, ``2 * every``, ... (1: after each).
      epochs: the run's epochs, so that the last is validated too; None: only the multiples of ``every``.
    """

    def __init__(self, catalog: Catalog, users: FeatureRows, query_tower: QueryTower, history: UserSequences,
                 targets: np.ndarray, every: int = 1, epochs: int | None = None):
        super().__init__()
        self._users, self._query_tower, self._history = users, query_tower, history
        self._rated = rated_indices(catalog, history)
        self._target_indices = catalog.indices(targets)
        self._every, self._epochs = every, epochs
        self.validated_epochs: list[int] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if (epoch + 1) % self._every and epoch + 1 != self._epochs:
            return
        self.validated_epochs.append(epoch + 1)
        queries = query_embeddings(self._query_tower, self._users, self._history)
        ranks, loss_sum = np.empty(len(queries), np.int64), 0.0
        for rows, scores in score_blocks(queries, self._query_tower.item_tower):
            targets = self._target_indices[rows]
            loss_sum += evaluation.softmax_cross_entropy(scores[:, 1:], targets - 1) * len(targets)
            ranks[rows] = evaluation.rank_of_targets(scores, targets, self._rated[rows])
        metrics = evaluation.accuracy_metrics(ranks, cutoffs=(10,))
        if logs is not None:
            logs["val_loss"], logs["val_hr@10"], logs["val_ndcg@10"] = (loss_sum / len(queries), metrics["hr@10"],
                                                                        metrics["ndcg@10"])
