"""The MovieLens two-stage run: split, train retrieval, train ranking, evaluate, export.

Which interactions each stage may see (h = 1 with ``--holdout=test``, 0 with ``--holdout=none``):
  - the last h items of every user are held out for evaluation and never used anywhere else;
  - of what remains, the last item of every user trains the ranker (retrieval never sees it as a
    target, so the ranker learns from candidate lists like those it will meet in serving);
  - everything before trains retrieval, every position predicting the next item;
  - the export's user snapshot holds all but the held-out items.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import time

import numpy as np
import pandas as pd
import tensorflow as tf

from tfrs_pipeline import distribute, evaluation, index, report
from tfrs_pipeline.config import TwoStageConfig
from tfrs_pipeline.data import tfrecords
from tfrs_pipeline.data.movielens import GENRE_NAMES, MovieLens, load_movielens
from tfrs_pipeline.data.sequence_examples import (length_sorted_batches, next_item_examples, training_windows,
                                                  with_user_features)
from tfrs_pipeline.data.split import UserSequences, leave_last_out, user_sequences
from tfrs_pipeline.export import savedmodels, serving_config, versioning
from tfrs_pipeline.models.item_tower import ItemTower
from tfrs_pipeline.models.query_tower import QueryTower
from tfrs_pipeline.models.ranking import RankingModel
from tfrs_pipeline.models.retrieval import RetrievalModel
from tfrs_pipeline.pipelines.common import (examples_as_tensors, history, learning_rate, training_dataset,
                                            write_json_atomically)
from tfrs_pipeline.pipelines.progress import stage

EVALUATION_BATCH = 512
EVALUATION_DETAILS = "evaluation_details.npz"  # per-user ranks and lists, for the report's plots
INDEX_EMBEDDINGS = "index_embeddings.npz"  # the catalog and query vectors the index was built on
LATENCY_QUERIES = 200
RANKING_VALIDATION_SHARE = 0.1


class Catalog:
    """The items that can be recommended (every rated movie), indexed 1..N as the item tower indexes them."""

    def __init__(self, movielens: MovieLens):
        rated = set(movielens.ratings["movie_id"].to_numpy())
        movies = movielens.movies[movielens.movies["movie_id"].isin(rated)].reset_index(drop=True)
        self.movies = movies
        self.item_ids = movies["movie_id"].to_numpy(dtype=object)
        self.index_of = {item_id: position + 1 for position, item_id in enumerate(self.item_ids)}
        self.genres = np.zeros((len(movies) + 1, len(GENRE_NAMES)), np.float32)
        for row, item_genres in enumerate(movies["movie_genres"], start=1):
            self.genres[row, list(item_genres)] = 1.0

    def __len__(self) -> int:
        return len(self.item_ids)

    def indices(self, item_ids) -> np.ndarray:
        return np.fromiter((self.index_of[item_id] for item_id in item_ids), np.int64, len(item_ids))

    def popularity(self, sequences: UserSequences) -> np.ndarray:
        """[N + 1] interactions per catalog index in ``sequences``."""
        return np.bincount(self.indices(np.concatenate(sequences.item_ids)), minlength=len(self) + 1).astype(np.float64)


def run(config: TwoStageConfig) -> dict:
    """Runs the whole two-stage pipeline and returns its metrics (also written to metrics.json)."""
    tf.keras.utils.set_random_seed(config.seed)
    with stage("load data"):
        movielens = load_movielens(config.data_dir, max_users=config.max_users)
        catalog = Catalog(movielens)
        users = movielens.users
    with stage("split"):
        all_sequences = user_sequences(movielens.ratings)
        kept, test_targets = (leave_last_out(all_sequences) if config.holdout == "test" else (all_sequences, None))
        retrieval_train, ranking_targets = leave_last_out(kept)
    version = max(versioning.next_version(pathlib.Path(config.export_dir) / name)
                  for name in ("retrieval", "retrieval_brute_force", "ranking"))
    run_dir = pathlib.Path(config.export_dir) / "runs" / str(version)
    run_dir.mkdir(parents=True, exist_ok=True)
    config.write(run_dir / "config.json")

    # Retrieval is built (its variables made), compiled and trained on the strategy's replicas. Ranking
    # (a few thousand lists) trains on one device: its Keras loss reduction is one tf.distribute refuses.
    with distribute.strategy_for(config.distribution).scope():
        query_tower, retrieval_history = _train_retrieval(config, catalog, users, retrieval_train, ranking_targets,
                                                          run_dir)
    ranking_model, ranking_history = _train_ranking(config, catalog, users, query_tower, retrieval_train,
                                                    ranking_targets, run_dir)
    metrics = {"version": version, "training": {"retrieval": retrieval_history, "ranking": ranking_history}}
    if test_targets is not None:
        with stage("evaluate on the full catalog"):
            metrics["evaluation"], details = _evaluate(config, catalog, users, query_tower, ranking_model, kept,
                                                       test_targets, retrieval_train)
            np.savez_compressed(run_dir / EVALUATION_DETAILS, **details)
    with stage("build and check the ScaNN index"):
        top_k_layers, metrics["index"] = _build_indexes(config, catalog, users, query_tower, kept, run_dir)
    with stage(f"export version {version}"):
        _export(config, version, catalog, users, kept, query_tower, ranking_model, top_k_layers)
    write_json_atomically(run_dir / "metrics.json", metrics)
    write_json_atomically(pathlib.Path(config.export_dir) / "metrics.json", metrics)
    with stage("write report"):
        report.write_report(run_dir)
    if "evaluation" in metrics:
        print(format_metrics_table(metrics["evaluation"]))
    return metrics


def _train_retrieval(config: TwoStageConfig, catalog: Catalog, users: pd.DataFrame, train: UserSequences,
                     validation_targets: np.ndarray, run_dir: pathlib.Path) -> tuple[QueryTower, dict]:
    with stage("build retrieval model"):
        item_tower = ItemTower(list(catalog.item_ids), list(catalog.movies["movie_title"]),
                               list(catalog.movies["movie_genres"]), len(GENRE_NAMES), config.embedding_dim)
        query_tower = QueryTower(item_tower, config.max_length, config.embedding_dim,
                                 user_ids=list(train.user_ids) if config.user_id_embedding else None,
                                 num_blocks=config.num_blocks, num_heads=config.num_heads, dropout=config.dropout)
        model = RetrievalModel(query_tower, item_tower, catalog.popularity(train), config.num_negatives)
        if config.examples_dir:  # preprocessed by the Beam pipeline: the same windows, read from TFRecords
            examples = tfrecords.read_training_examples(
                config.examples_dir, {name: getattr(config, name) for name in tfrecords.SPLIT_SETTINGS})
        else:
            examples = with_user_features(training_windows(train.user_ids, train.item_ids, config.max_length), users)
        steps_per_epoch = -(-len(examples["user_id"]) // config.batch_size)
        model.compile(optimizer=tf.keras.optimizers.Adam(
            learning_rate(config.learning_rate, config.learning_rate_decay, config.epochs * steps_per_epoch)))
    with stage(f"train retrieval ({len(examples['user_id'])} windows, {config.epochs} epochs)"):
        fit_history = model.fit(
            training_dataset(examples, config.batch_size, config.seed), epochs=config.epochs, verbose=config.verbose,
            callbacks=[ValidationRanking(catalog, users, query_tower, train, validation_targets),
                       tf.keras.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard" / "retrieval"))],
        )
    return query_tower, history(fit_history)


class ValidationRanking(tf.keras.callbacks.Callback):
    """Adds ``val_loss``, ``val_hr@10`` and ``val_ndcg@10`` of the validation items to each epoch's logs.

    HR and NDCG on the full catalog are what the run is judged by, so progress bars, TensorBoard and
    the report show them per epoch. ``val_loss`` is the full-catalog softmax cross-entropy, taken from
    the same scores: exact even when training samples its negatives, and with no second pass over
    the validation users.
    """

    def __init__(self, catalog: Catalog, users: pd.DataFrame, query_tower: QueryTower, history: UserSequences,
                 targets: np.ndarray):
        super().__init__()
        self._catalog, self._users, self._query_tower, self._history = catalog, users, query_tower, history
        self._rated = [catalog.indices(items) for items in history.item_ids]
        self._target_indices = catalog.indices(targets)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        scores = _catalog_scores(self._query_tower, self._users, self._history)
        loss = evaluation.softmax_cross_entropy(scores[:, 1:], self._target_indices - 1)
        ranks = evaluation.rank_of_targets(scores, self._target_indices, self._rated)
        metrics = evaluation.accuracy_metrics(ranks, cutoffs=(10,))
        if logs is not None:
            logs["val_loss"], logs["val_hr@10"], logs["val_ndcg@10"] = loss, metrics["hr@10"], metrics["ndcg@10"]


def query_embeddings(query_tower: QueryTower, users: pd.DataFrame, sequences: UserSequences) -> np.ndarray:
    """[U, dim] queries after each user's full history in ``sequences``."""
    empty = np.full(len(sequences), "", dtype=object)
    examples = with_user_features(
        next_item_examples(sequences.user_ids, sequences.item_ids, empty, query_tower.max_length), users)
    examples.pop("target_item_ids")
    batches = [(rows, query_tower(batch).numpy())
               for rows, batch in length_sorted_batches(examples_as_tensors(examples), EVALUATION_BATCH)]
    queries = np.empty((len(sequences), batches[0][1].shape[1]), np.float32)
    for rows, values in batches:
        queries[rows] = values
    return queries


def _catalog_scores(query_tower: QueryTower, users: pd.DataFrame, sequences: UserSequences) -> np.ndarray:
    scores = query_embeddings(query_tower, users, sequences) @ query_tower.item_tower.embed_catalog().numpy().T
    scores[:, 0] = -np.inf  # the unknown item is never recommended
    return scores


def _candidate_lists(config: TwoStageConfig, catalog: Catalog, scores: np.ndarray, sequences: UserSequences) -> np.ndarray:
    """[U, C] catalog indices of each user's retrieved candidates (already-rated items removed)."""
    rated = [catalog.indices(items) for items in sequences.item_ids]
    return evaluation.top_k_excluding(scores, rated, min(config.ranking_candidates, len(catalog) - 1))


def _ranking_features(catalog: Catalog, users: pd.DataFrame, sequences: UserSequences, candidates: np.ndarray,
                      max_length: int) -> dict:
    empty = np.full(len(sequences), "", dtype=object)
    examples = with_user_features(next_item_examples(sequences.user_ids, sequences.item_ids, empty, max_length), users)
    examples.pop("target_item_ids")
    examples["candidate_item_ids"] = catalog.item_ids[candidates - 1]
    return examples_as_tensors(examples)


def _train_ranking(config: TwoStageConfig, catalog: Catalog, users: pd.DataFrame, query_tower: QueryTower,
                   train: UserSequences, targets: np.ndarray, run_dir: pathlib.Path) -> tuple[RankingModel, dict]:
    with stage("retrieve candidates for ranking"):
        candidates = _candidate_lists(config, catalog, _catalog_scores(query_tower, users, train), train)
        target_indices = catalog.indices(targets)
        # Only lists where retrieval found the next item teach the ranker anything it can use: at
        # serving time it never sees items retrieval missed, and planting them in the lists would
        # teach it to promote whatever retrieval scores low.
        found = (candidates == target_indices[:, np.newaxis]).any(axis=1)
        lists = train.select(found)
        candidates, target_indices = candidates[found], target_indices[found]
        features = _ranking_features(catalog, users, lists, candidates, config.max_length)
        features["labels"] = (candidates == target_indices[:, np.newaxis]).astype(np.float32)
    ranking_model = RankingModel(query_tower, catalog.popularity(train), catalog.genres)
    ranking_model.compile(optimizer=tf.keras.optimizers.Adam(config.learning_rate / 2))
    with stage(f"train ranking ({len(candidates)} lists of {candidates.shape[1]}, {config.ranking_epochs} epochs)"):
        # A tenth of the lists is held back to stop training before the correction overfits.
        is_validation = np.random.default_rng(config.seed).random(len(candidates)) < RANKING_VALIDATION_SHARE
        train_lists, validation_lists = ({name: values[keep] for name, values in features.items()}
                                         for keep in (~is_validation, is_validation))
        fit_history = ranking_model.fit(
            tf.data.Dataset.from_tensor_slices(train_lists).shuffle(len(candidates), seed=config.seed)
            .batch(config.ranking_batch_size),
            validation_data=tf.data.Dataset.from_tensor_slices(validation_lists).batch(EVALUATION_BATCH),
            epochs=config.ranking_epochs, verbose=config.verbose,
            callbacks=[tf.keras.callbacks.EarlyStopping(patience=1, restore_best_weights=True),
                       tf.keras.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard" / "ranking"))],
        )
    return ranking_model, history(fit_history)


def rerank(ranking_model: RankingModel, features: dict, candidates: np.ndarray) -> np.ndarray:
    """The candidate lists in the ranking model's order."""
    scores = np.concatenate([
        ranking_model({name: values[start:start + EVALUATION_BATCH] for name, values in features.items()}).numpy()
        for start in range(0, len(candidates), EVALUATION_BATCH)
    ])
    return np.take_along_axis(candidates, np.argsort(-scores, axis=1, kind="stable"), axis=1)


def _evaluate(config: TwoStageConfig, catalog: Catalog, users: pd.DataFrame, query_tower: QueryTower,
              ranking_model: RankingModel, history: UserSequences, targets: np.ndarray,
              retrieval_train: UserSequences) -> tuple[dict, dict]:
    """Retrieval alone, retrieve-then-rank, and popularity, on the held-out items, whole catalog.

    Returns the metrics and the per-user details behind them (ranks, lists, segments).
    """
    rated = [catalog.indices(items) for items in history.item_ids]
    target_indices = catalog.indices(targets)
    scores = _catalog_scores(query_tower, users, history)
    retrieval_ranks = evaluation.rank_of_targets(scores, target_indices, rated)
    candidates = _candidate_lists(config, catalog, scores, history)
    reranked = rerank(ranking_model, _ranking_features(catalog, users, history, candidates, config.max_length),
                      candidates)
    in_list = reranked == target_indices[:, np.newaxis]
    two_stage_ranks = np.where(in_list.any(axis=1), in_list.argmax(axis=1) + 1, retrieval_ranks)
    popularity = catalog.popularity(retrieval_train)
    popularity_scores = np.tile(popularity, (len(history), 1))
    popularity_scores[:, 0] = -np.inf
    popularity_ranks = evaluation.rank_of_targets(popularity_scores, target_indices, rated)

    def report(ranks: np.ndarray, top_lists: np.ndarray) -> dict:
        return {**evaluation.accuracy_metrics(ranks),
                **evaluation.beyond_accuracy_metrics(top_lists[:, :10], popularity, catalog.genres)}

    popularity_lists = evaluation.top_k_excluding(popularity_scores, rated, 10)
    details = {
        "retrieval_ranks": retrieval_ranks, "two_stage_ranks": two_stage_ranks, "popularity_ranks": popularity_ranks,
        "user_history_lengths": history.lengths(), "target_popularity": popularity[target_indices],
        "item_popularity": popularity, "retrieval_top10": candidates[:, :10], "two_stage_top10": reranked[:, :10],
        "popularity_top10": popularity_lists,
    }
    return {
        "users": len(targets),
        "catalog_items": len(catalog),
        "retrieval": report(retrieval_ranks, candidates),
        "two_stage": report(two_stage_ranks, reranked),
        "popularity": report(popularity_ranks, popularity_lists),
    }, details


def format_metrics_table(evaluation_metrics: dict) -> str:
    """The evaluation as a fixed-width table, one row per system."""
    columns = list(evaluation_metrics["retrieval"])
    widths = [max(12, len(name) + 1) for name in columns]
    lines = ["system      " + "".join(f"{name:>{width}}" for name, width in zip(columns, widths))]
    for system in ("retrieval", "two_stage", "popularity"):
        values = evaluation_metrics[system]
        lines.append(f"{system:<12}" + "".join(f"{values[name]:>{width}.4f}" for name, width in zip(columns, widths)))
    return "\n".join(lines)


def _build_indexes(config: TwoStageConfig, catalog: Catalog, users: pd.DataFrame, query_tower: QueryTower,
                   history: UserSequences, run_dir: pathlib.Path) -> tuple[dict, dict]:
    """Brute-force and ScaNN top-k layers over the catalog; ScaNN tuned to agree with exact top-10.

    The embeddings are kept in the run folder (``INDEX_EMBEDDINGS``) so the report can sweep ScaNN
    settings on exactly the vectors this index serves.
    """
    candidate_embeddings = query_tower.item_tower.embed_catalog()[1:]
    queries = tf.constant(query_embeddings(query_tower, users, history), tf.float32)
    np.savez_compressed(run_dir / INDEX_EMBEDDINGS, candidate_embeddings=candidate_embeddings.numpy(),
                        query_embeddings=queries.numpy())
    k = min(config.top_k, len(catalog))
    if config.scann_overrides:
        params = dataclasses.replace(index.scann_params_for(len(catalog), 10), **config.scann_overrides)
    else:
        params = index.tune_scann(candidate_embeddings, queries, k=min(10, len(catalog)),
                                  target_recall=config.scann_target_recall)
    layers = {kind: index.build_top_k(kind, tf.constant(catalog.item_ids.astype(str)), candidate_embeddings, k,
                                      params=params) for kind in index.TOP_K_KINDS}
    _, exact = layers["brute_force"](queries, k=10)
    _, approximate = layers["scann"](queries, k=10)
    sample = queries[:LATENCY_QUERIES]
    latency = {kind: _latency_ms(layer, sample) for kind, layer in layers.items()}
    return layers, {
        "scann_params": {name: int(value) for name, value in vars(params).items()},
        "top10_agreement": index.top_k_agreement(exact.numpy(), approximate.numpy()),
        "recall_at_10": index.recall_at_k(exact.numpy(), approximate.numpy()),
        "latency_ms": latency,
        "scann_speedup_single_query": latency["brute_force"]["single_query"] / latency["scann"]["single_query"],
    }


def _latency_ms(layer: tf.keras.Model, queries: tf.Tensor) -> dict:
    """Median milliseconds per single query and per batch of all ``queries`` (after a warm-up)."""
    layer(queries[:1], k=10)
    single = []
    for row in range(len(queries)):
        start = time.perf_counter()
        layer(queries[row:row + 1], k=10)
        single.append(time.perf_counter() - start)
    batch = []
    for _ in range(5):
        start = time.perf_counter()
        layer(queries, k=10)
        batch.append(time.perf_counter() - start)
    return {"single_query": 1e3 * float(np.median(single)), "batch": 1e3 * float(np.median(batch)),
            "batch_size": int(len(queries))}


def _export(config: TwoStageConfig, version: int, catalog: Catalog, users: pd.DataFrame, history: UserSequences,
            query_tower: QueryTower, ranking_model: RankingModel, top_k_layers: dict) -> None:
    """Writes every model as ``<export_dir>/<name>/<version>/`` atomically and registers it for serving."""
    user_features = with_user_features({"user_id": history.user_ids}, users)
    snapshot = savedmodels.UserSnapshot(history.user_ids, user_features, history.item_ids, config.max_length)
    catalog_embeddings = tf.Variable(query_tower.item_tower.embed_catalog(), trainable=False)
    # Ranking's user context holds the retrieval query too: one pass over the users serves all three exports.
    user_context = snapshot.precompute(lambda features: ranking_model.user_context(features, catalog_embeddings))

    def retrieval(kind: str) -> savedmodels.RetrievalExport:
        return savedmodels.RetrievalExport(query_tower, top_k_layers[kind], snapshot, user_context["query"],
                                           catalog_embeddings, config.top_k)

    export_dir = pathlib.Path(config.export_dir)
    writers = {
        "retrieval": lambda path: savedmodels.save_retrieval(retrieval("scann"), path, True),
        "retrieval_brute_force": lambda path: savedmodels.save_retrieval(retrieval("brute_force"), path, False),
        "ranking": lambda path: savedmodels.save_ranking(
            savedmodels.RankingExport(ranking_model, snapshot, user_context, catalog_embeddings), path),
    }
    for name, write in writers.items():
        versioning.write_version(export_dir / name, write, version)
        serving_config.upsert_model(config.serving_config_path, serving_config.ModelEntry(
            name=name, base_path=os.path.abspath(export_dir / name)))
    items = catalog.movies[["movie_id", "movie_title"]]
    temporary = export_dir / ".items.tsv.tmp"
    items.to_csv(temporary, sep="\t", index=False)
    os.replace(temporary, export_dir / "items.tsv")
