"""The two-stage run on any data set: load, split, train retrieval, train ranking, evaluate, index, export.

Which interactions each stage may see (``--holdout=test``; with ``--holdout=none`` nothing is held out):
  - each user's test item (the data set's split rule: their last item, or their first after a
    time cut) is held out for evaluation and never used anywhere else;
  - of what remains, the last item of every user trains the ranker, on the candidates of retrieval as
    it was before it trained on that item: lists like those it meets in serving, where the next item
    is unseen;
  - everything before trains retrieval, every position predicting the next item; its last
    ``refit_epochs`` epochs (none by default) train on the ranker's targets too, since a user's most
    recent item says the most about the next, and the exported towers are then the refit ones;
  - the export's user snapshot holds all but the held-out items.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import sys
from typing import Iterator

import numpy as np
import tensorflow as tf

from tfrs_pipeline import distribute, evaluation, index, report, run_layout, scoring
from tfrs_pipeline.atomic import write_json_atomically
from tfrs_pipeline.catalog import Catalog
from tfrs_pipeline.config import TwoStageConfig
from tfrs_pipeline.contracts import (
    DESCRIPTION_FILE,
    FEATURE_REPO_DIR,
    ITEMS_FILE,
    RANKING_MODEL,
    RECOMMENDER_MODEL,
    RETRIEVAL_BRUTE_FORCE_MODEL,
    RETRIEVAL_MODEL,
    TWO_STAGE_MODELS,
    ExportDescription,
)
from tfrs_pipeline.data import tfrecords
from tfrs_pipeline.data.dataset import load_dataset
from tfrs_pipeline.data.interactions import InteractionData
from tfrs_pipeline.data.sequence_examples import training_windows
from tfrs_pipeline.data.split import (
    HeldOutSplit,
    UserSequences,
    hold_out,
    leave_last_out,
    sample_rows,
    set_aside_users,
    user_sequences,
)
from tfrs_pipeline.export import savedmodels, serving_config, versioning
from tfrs_pipeline.features import events, store
from tfrs_pipeline.features.arrays import FeatureRows, category_matrix, feature_arrays
from tfrs_pipeline.models.cooccurrence import strongest_rules
from tfrs_pipeline.models.item_tower import ItemTower
from tfrs_pipeline.models.query_tower import QueryTower
from tfrs_pipeline.models.ranking import CANDIDATE_FEATURE, ItemRules, RankingModel, default_rules_per_item
from tfrs_pipeline.models.retrieval import RetrievalModel
from tfrs_pipeline.pipelines.common import history, training_dataset, training_optimizer, untuned
from tfrs_pipeline.pipelines.progress import stage

RANKING_VALIDATION_SHARE = 0.1
TowerValues = list[tuple[tf.Variable, np.ndarray]]  # the towers' variables, each with a copy of its value
INDEX_CHECK_QUERIES = 10_000  # all of MovieLens-1M's 6,040 users


@dataclasses.dataclass(frozen=True)
class TwoStageInputs:
    """A data set as the two-stage models read it: the catalog, its item features and the users'.

    Attributes:
      data: the tables and their schema.
      catalog: every item of the items table, indexed 1..N in its order.
      item_features: ``feature_arrays`` of the catalog's items, rows in catalog order.
      item_categories: [N + 1, C] the items' small categorical features, multi-hot (``category_matrix``).
      users: the users' features, looked up by user id.
    """

    data: InteractionData
    catalog: Catalog
    item_features: dict
    item_categories: np.ndarray
    users: FeatureRows

    @classmethod
    def from_data(cls, data: InteractionData) -> TwoStageInputs:
        schema = data.schema
        items = data.items
        titles = items[schema.title_feature].fillna("").astype(str) if schema.title_feature else None
        item_features = feature_arrays(items, schema.features.item_features)
        categories = category_matrix(item_features, schema.features.item_features, len(items))
        return cls(data, Catalog(items["item_id"].to_numpy(dtype=object), titles), item_features,
                   np.concatenate([np.zeros((1, categories.shape[1]), np.float32), categories]),
                   FeatureRows.from_table(data.users, "user_id", schema.features.user_features))


def run(config: TwoStageConfig) -> dict:
    """Runs the whole two-stage pipeline and returns its metrics (also written to metrics.json)."""
    tf.keras.utils.set_random_seed(config.seed)
    with stage("load data"):
        inputs = TwoStageInputs.from_data(load_dataset(config.data_dir, max_users=config.max_users))
    with stage("split"):
        split, new_users = _split(config, inputs.data)
        retrieval_train, ranking_targets = leave_last_out(split.history)
        # [N + 1] interactions per catalog index in what retrieval trains on: its logQ, the items with an
        # id row of their own, the ranker's popularity feature and the popularity baseline.
        popularity = inputs.catalog.counts(retrieval_train.item_ids)
    strategy = distribute.strategy_for(config.distribution)
    if not distribute.is_chief(strategy):
        return _train_retrieval_share(config, strategy, inputs, retrieval_train, ranking_targets, popularity,
                                      split.history)
    version = max(versioning.next_version(pathlib.Path(config.export_dir) / name) for name in TWO_STAGE_MODELS)
    run_dir = run_layout.start_run(config.export_dir, version, config)

    # Retrieval is built (its variables made), compiled and trained on the strategy's replicas. Ranking
    # (a few thousand lists) trains on one device: its Keras loss reduction is one tf.distribute refuses.
    with strategy.scope():
        query_tower, retrieval_history, unrefit_weights = _train_retrieval(
            config, inputs, retrieval_train, ranking_targets, popularity, run_dir, split.history)
    with _weights_set(query_tower, unrefit_weights):
        ranking_model, ranking_history = _train_ranking(config, inputs, query_tower, retrieval_train,
                                                        ranking_targets, popularity, run_dir)
    metrics = {"version": version, "data": {"source": inputs.data.source, **inputs.data.policy_counts},
               "training": {"retrieval": retrieval_history, "ranking": ranking_history},
               "ranking": {"rules_per_item": ranking_model.rules.rules_per_item if ranking_model.rules else 0}}
    evaluated = split.sample_tested(config.evaluation_users, config.seed)
    # Queries after the whole history of the evaluated users and of the first users, whom the index is
    # checked with (the first rows of ``queries``): never every user's, which at 1M users is hours of tower.
    query_rows = np.union1d(evaluated.test_rows, np.arange(min(INDEX_CHECK_QUERIES, len(split.history))))
    queries = scoring.query_embeddings(query_tower, inputs.users, split.history.select(query_rows))
    if len(evaluated.test_targets):
        with stage(f"evaluate {len(evaluated.test_targets)} of {len(split.test_targets)} users on the full catalog"):
            metrics["evaluation"], details = _evaluate(
                config, inputs, ranking_model, evaluated.tested_history(), evaluated.test_targets,
                queries[np.searchsorted(query_rows, evaluated.test_rows)], popularity)
            metrics["evaluation_sample"] = _sample_interval(details, len(split.test_targets), config.seed)
            np.savez_compressed(run_dir / run_layout.EVALUATION_DETAILS, **details)
            metrics["cold_start"] = _evaluate_cold_start(config, inputs, query_tower, ranking_model, evaluated,
                                                         details, new_users, popularity)
    with stage("build and check the ScaNN index"):
        candidate_embeddings = query_tower.item_tower.embed_catalog()[1:]
        # Tuned and checked on the first users' queries, which the report's sweep reads too: exact search
        # for more users would cost [users, N] scores at once (4 GB for 10,000 users at 100K items).
        check_queries = queries[:INDEX_CHECK_QUERIES]
        np.savez_compressed(run_dir / run_layout.INDEX_EMBEDDINGS, candidate_embeddings=candidate_embeddings.numpy(),
                            query_embeddings=check_queries)
        top_k_layers, metrics["index"] = index.build_checked_indexes(
            index.catalog_positions(len(inputs.catalog.item_ids)), candidate_embeddings, tf.constant(check_queries),
            config.top_k, config.scann_target_recall, config.scann_overrides)
    with stage(f"export version {version}"):
        _export(config, version, inputs, split.history, query_tower, ranking_model, top_k_layers)
    run_layout.write_metrics(config.export_dir, run_dir, metrics)
    with stage("write report"):
        report.write_report(run_dir)
    if "evaluation" in metrics:
        print(evaluation.format_metrics_table(metrics["evaluation"]))
    return metrics


def _train_retrieval_share(config: TwoStageConfig, strategy: tf.distribute.Strategy, inputs: TwoStageInputs,
                           train: UserSequences, validation_targets: np.ndarray, popularity: np.ndarray,
                           refit: UserSequences) -> dict:
    """A multi-worker non-chief's whole run: its share of every retrieval batch, and nothing written.

    The chief holds the same weights once training ends (the gradients are all-reduced), and alone
    evaluates, trains ranking and exports (`distribute.is_chief`). Returns this worker's training history.
    """
    resolver = strategy.cluster_resolver
    with strategy.scope():
        _, retrieval_history, _ = _train_retrieval(config, inputs, train, validation_targets, popularity,
                                                   run_dir=None, refit=refit)
    losses = ", ".join(f"{loss:.6g}" for loss in retrieval_history["loss"])
    print(f"[tfrs_pipeline] {resolver.task_type} {resolver.task_id} is not the chief: it trained its share of "
          f"retrieval (loss per epoch: {losses}); the chief evaluates and exports", file=sys.stderr, flush=True)
    return {"training": {"retrieval": retrieval_history}}


def _split(config: TwoStageConfig, data: InteractionData) -> tuple[HeldOutSplit, HeldOutSplit | None]:
    """The models' split, and the users set aside as newcomers (``new_users_share``; None without)."""
    sequences = user_sequences(data.interactions)
    if config.holdout != "test":
        return HeldOutSplit(sequences, np.array([], np.int64), np.array([], str)), None
    split = hold_out(sequences, data.schema.split)
    if not config.new_users_share:
        return split, None
    return set_aside_users(split, config.new_users_share, config.seed)


def build_towers(config: TwoStageConfig, inputs: TwoStageInputs, train: UserSequences,
                 popularity: np.ndarray) -> QueryTower:
    """The run's untrained query tower over its item tower (``query_tower.item_tower``), shaped by ``config``:
    what training builds and what a checkpoint of its towers is read back into."""
    schema = inputs.data.schema.features
    item_tower = ItemTower(list(inputs.catalog.item_ids), inputs.item_features, schema.item_features,
                           config.embedding_dim, has_interactions=popularity[1:] > 0)
    return QueryTower(item_tower, config.max_length, config.embedding_dim, schema.user_features,
                      inputs.users.lookup(train.user_ids),
                      user_ids=list(train.user_ids) if config.user_id_embedding else None,
                      num_blocks=config.num_blocks, num_heads=config.num_heads, dropout=config.dropout,
                      relative_attention_bias=config.relative_attention_bias,
                      time_attention_bias=config.time_attention_bias)


def build_retrieval(config: TwoStageConfig, inputs: TwoStageInputs, train: UserSequences,
                    popularity: np.ndarray) -> tuple[RetrievalModel, dict]:
    """The compiled retrieval model of a run and its training examples (windows of ``train``).

    The examples are the TFRecords of ``config.examples_dir`` when given, else built in memory: the
    same windows either way. Benchmarks that train a bounded number of steps at scale call this too.
    """
    query_tower = build_towers(config, inputs, train, popularity)
    model = RetrievalModel(query_tower, popularity, config.num_negatives, config.softmax_excludes_history,
                           popularity_adjustment=config.softmax_popularity_adjustment)
    if config.examples_dir:  # preprocessed by the Beam pipeline: the same windows, read from TFRecords
        examples = tfrecords.read_training_examples(
            config.examples_dir, {name: getattr(config, name) for name in tfrecords.SPLIT_SETTINGS},
            timestamps=query_tower.uses_time)
        # The users set aside as newcomers (new_users_share) are in the files; no model may see them.
        # A set: np.isin compares object arrays pairwise, which took minutes at 94K windows and 100K users.
        trained_users = set(train.user_ids)
        trained = np.fromiter((user_id in trained_users for user_id in examples["user_id"]), bool,
                              len(examples["user_id"]))
        if not trained.all():  # a copy of every column: only when there is something to drop
            examples = {name: values[trained] for name, values in examples.items()}
    else:
        examples = training_windows(train.user_ids, train.item_ids, query_tower.max_length,
                                    scoring.history_timestamps(query_tower, train))
    model.compile(optimizer=training_optimizer(config, len(examples["user_id"])))
    return model, examples


def _train_retrieval(config: TwoStageConfig, inputs: TwoStageInputs, train: UserSequences,
                     validation_targets: np.ndarray, popularity: np.ndarray, run_dir: pathlib.Path | None,
                     refit: UserSequences) -> tuple[QueryTower, dict, TowerValues | None]:
    """Builds, compiles and trains retrieval; ``run_dir`` None (a non-chief worker) keeps no logs or validation.

    Its first epochs train on ``train``, validated on ``validation_targets``; the last ``refit_epochs``
    on ``refit`` (``train`` with the validation targets: the most recent item of every user, worth more
    to the next prediction than any other), unvalidated, since they see the validation targets.

    Returns the query tower, the training history (one row per epoch, validation where it ran) and
    the towers' weights before the refit (None without one).
    """
    with stage("build retrieval model"):
        model, examples = build_retrieval(config, inputs, train, popularity)
        query_tower = model.query_tower
    validated_epochs = config.epochs - config.retrieval_refit_epochs
    validation, logs = None, []  # logs: the callbacks the refit's epochs keep too (not validation)
    if run_dir is not None:
        validated = sample_rows(len(train), config.evaluation_users, config.seed)  # the evaluation's sample size
        validation = scoring.ValidationRanking(inputs.catalog, inputs.users, query_tower, train.select(validated),
                                               validation_targets[validated], config.validation_every,
                                               validated_epochs)
        logs = [tf.keras.callbacks.TensorBoard(log_dir=run_layout.tensorboard_dir(run_dir, RETRIEVAL_MODEL))]
    with stage(f"train retrieval ({len(examples['user_id'])} windows, {validated_epochs} epochs)"):
        fit_history = history(model.fit(
            training_dataset(examples, config.batch_size, config.seed, user_features=inputs.users),
            epochs=validated_epochs, verbose=config.verbose,
            callbacks=[] if validation is None else [validation, *logs]))
    if validation is not None:
        fit_history[run_layout.VALIDATION_EPOCHS] = validation.validated_epochs
    if validated_epochs == config.epochs:
        return query_tower, fit_history, None
    del examples  # the refit's windows replace them: at scale, two sets would double the run's memory
    unrefit_weights = _variable_values(query_tower)
    refit_history = _refit_retrieval(config, inputs, model, refit, validated_epochs, logs)
    for name, values in refit_history.items():
        fit_history.setdefault(name, []).extend(values)
    fit_history[run_layout.REFIT_EPOCHS] = list(range(validated_epochs + 1, config.epochs + 1))
    return query_tower, fit_history, unrefit_weights


def _refit_retrieval(config: TwoStageConfig, inputs: TwoStageInputs, model: RetrievalModel, refit: UserSequences,
                     first_epoch: int, callbacks: list[tf.keras.callbacks.Callback]) -> dict:
    """Trains retrieval's epochs after ``first_epoch`` on the windows of ``refit``; returns their history.

    The optimizer and its learning-rate schedule go on where the validated epochs left them.
    """
    examples = training_windows(refit.user_ids, refit.item_ids, model.query_tower.max_length,
                                scoring.history_timestamps(model.query_tower, refit))
    with stage(f"refit retrieval with the ranker's targets ({len(examples['user_id'])} windows, "
               f"{config.epochs - first_epoch} epochs)"):
        return history(model.fit(
            training_dataset(examples, config.batch_size, config.seed + 1, user_features=inputs.users),
            initial_epoch=first_epoch, epochs=config.epochs, verbose=config.verbose, callbacks=callbacks))


def _variable_values(query_tower: QueryTower) -> TowerValues:
    """Each variable training moves in the towers, with a copy of its value: by object, since the
    order of ``get_weights`` changes when the ranker freezes the towers."""
    return [(variable, variable.numpy()) for variable in query_tower.trainable_variables]


@contextlib.contextmanager
def _weights_set(query_tower: QueryTower, values: TowerValues | None) -> Iterator[None]:
    """The towers hold ``values`` (``_variable_values``) inside the block (None: unchanged), their own after it."""
    if values is None:
        yield
        return
    own = _variable_values(query_tower)
    for variable, value in values:
        variable.assign(value)
    try:
        yield
    finally:
        for variable, value in own:
            variable.assign(value)


def _train_ranking(config: TwoStageConfig, inputs: TwoStageInputs, query_tower: QueryTower, train: UserSequences,
                   targets: np.ndarray, popularity: np.ndarray, run_dir: pathlib.Path) -> tuple[RankingModel, dict]:
    with stage("retrieve candidates for ranking"):
        lists, _ = ranking_lists(config, inputs, query_tower, train, targets)
    with stage(f"train ranking ({lists['labels'].shape[0]} lists of {lists['labels'].shape[1]}, "
               f"{config.ranking_epochs} epochs)"):
        return seeded_ranking(config, inputs, query_tower, train, popularity, lists, run_dir)


def seeded_ranking(config: TwoStageConfig, inputs: TwoStageInputs, query_tower: QueryTower, train: UserSequences,
                   popularity: np.ndarray, lists: dict,
                   run_dir: pathlib.Path | None = None) -> tuple[RankingModel, dict]:
    """The ranker a run exports, trained on ``lists``, and its per-epoch history.

    It starts from the run's seed, not from wherever retrieval's training left the random state: a
    change to retrieval then reaches the ranker through the towers and lists alone, and a benchmark
    that trains it on the same towers and lists gets the exported ranker to the bit.
    """
    tf.keras.utils.set_random_seed(config.seed)
    ranking_model = build_ranking_model(config, inputs, query_tower, train, popularity)
    return ranking_model, fit_ranking(config, ranking_model, lists, run_dir)


def ranking_lists(config: TwoStageConfig, inputs: TwoStageInputs, query_tower: QueryTower, train: UserSequences,
                  targets: np.ndarray) -> tuple[dict, np.ndarray]:
    """The ranker's training lists: retrieval's candidates after ``train`` where they hold the user's next item.

    Lists are built for a seeded sample of ``config.ranking_users`` users (all of them below that): the
    ranker's few weights learn as well from tens of thousands of lists, and each list holds its
    user's history and candidates in memory.

    Returns the ranker's features of each list (``scoring.ranking_features``) with ``labels`` [lists,
    candidates], one-hot on the next item; and [U] whether each user of ``train`` has a list.
    """
    catalog = inputs.catalog
    sampled = sample_rows(len(train), config.ranking_users, config.seed)
    has_list = np.zeros(len(train), bool)
    train, targets = train.select(sampled), targets[sampled]
    candidates = scoring.candidate_lists(catalog, scoring.query_embeddings(query_tower, inputs.users, train),
                                         query_tower.item_tower, train, config.ranking_candidates)
    target_indices = catalog.indices(targets)
    # Only lists where retrieval found the next item teach the ranker anything it can use: at
    # serving time it never sees items retrieval missed, and planting them in the lists would
    # teach it to promote whatever retrieval scores low.
    found = (candidates == target_indices[:, np.newaxis]).any(axis=1)
    candidates, target_indices = candidates[found], target_indices[found]
    features = scoring.ranking_features(catalog, inputs.users, train.select(found), candidates, query_tower)
    has_list[sampled[found]] = True
    return {**features, "labels": (candidates == target_indices[:, np.newaxis]).astype(np.float32)}, has_list


def build_ranking_model(config: TwoStageConfig, inputs: TwoStageInputs, query_tower: QueryTower,
                        train: UserSequences, popularity: np.ndarray) -> RankingModel:
    """An untrained ranker on the frozen ``query_tower``, its rules counted in ``train`` (what retrieval trains on)."""
    catalog = inputs.catalog
    rules = _item_rules(config, [catalog.indices(items) for items in train.item_ids], len(catalog))
    ranking_model = RankingModel(query_tower, popularity, inputs.item_categories, rules,
                                 popularity_penalty=config.ranking_popularity_penalty,
                                 popularity_penalty_exponent=config.ranking_popularity_penalty_exponent,
                                 num_compared_items=config.ranking_compared_items)
    ranking_model.compile(optimizer=tf.keras.optimizers.Adam(config.learning_rate / 2))
    return ranking_model


def fit_ranking(config: TwoStageConfig, ranking_model: RankingModel, lists: dict,
                run_dir: pathlib.Path | None = None) -> dict:
    """Trains the ranker on ``lists`` (``ranking_lists``); returns its per-epoch history.

    A tenth of the lists is held back to stop training before the correction overfits.
    """
    features = {"context": ranking_model.contexts({name: values for name, values in lists.items() if name != "labels"}),
                CANDIDATE_FEATURE: lists[CANDIDATE_FEATURE], "labels": lists["labels"]}
    num_lists = len(lists["labels"])
    is_validation = np.random.default_rng(config.seed).random(num_lists) < RANKING_VALIDATION_SHARE
    train_lists, validation_lists = (tf.nest.map_structure(lambda values: tf.boolean_mask(values, keep), features)
                                     for keep in (~is_validation, is_validation))
    callbacks = [tf.keras.callbacks.EarlyStopping(patience=1, restore_best_weights=True)]
    if run_dir is not None:
        callbacks.append(tf.keras.callbacks.TensorBoard(log_dir=run_layout.tensorboard_dir(run_dir, RANKING_MODEL)))
    fit_history = ranking_model.fit(
        untuned(tf.data.Dataset.from_tensor_slices(train_lists).shuffle(num_lists, seed=config.seed)
                .batch(config.ranking_batch_size)),
        validation_data=untuned(tf.data.Dataset.from_tensor_slices(validation_lists).batch(scoring.BATCH)),
        epochs=config.ranking_epochs, verbose=config.verbose, callbacks=callbacks)
    return history(fit_history)


def _item_rules(config: TwoStageConfig, sequences: list[np.ndarray], num_items: int) -> ItemRules | None:
    """The ranker's item-to-item rules, from what retrieval trains on (never a target the ranker learns from).

    Two tables: the forward rules (a history item, then the candidate within ``DEFAULT_MAX_GAP``
    items) and the backward ones (the candidate, then the history item): where people rate in bursts
    whose order within a sitting says little, both directions carry evidence.
    """
    per_item = config.ranking_rules_per_item
    if per_item is None:
        per_item = default_rules_per_item(num_items)
    if not per_item:
        return None
    tables = [strongest_rules(ordered, num_items, per_item)
              for ordered in (sequences, [items[::-1] for items in sequences])]
    return ItemRules(tables, config.ranking_recent_items)


def _evaluate(config: TwoStageConfig, inputs: TwoStageInputs, ranking_model: RankingModel, tested: UserSequences,
              targets: np.ndarray, queries: np.ndarray, popularity: np.ndarray) -> tuple[dict, dict]:
    """Retrieval alone, retrieve-then-rank, and popularity, on the held-out items, whole catalog.

    ``queries`` [U, dim] are the tested users' queries after their history ``tested``.
    Returns the metrics and the per-user details behind them (ranks, lists, segments).
    """
    catalog = inputs.catalog
    rated = scoring.rated_indices(catalog, tested)
    target_indices = catalog.indices(targets)
    size = min(config.ranking_candidates, len(catalog) - 1)
    retrieval_ranks, popularity_ranks = (np.empty(len(targets), np.int64) for _ in range(2))
    candidates = np.empty((len(targets), size), np.int64)
    popularity_lists = np.empty((len(targets), min(10, len(catalog) - 1)), np.int64)
    for rows, scores in scoring.score_blocks(queries, ranking_model.query_tower.item_tower):
        retrieval_ranks[rows] = evaluation.rank_of_targets(scores, target_indices[rows], rated[rows])
        candidates[rows] = evaluation.top_k_excluding(scores, rated[rows], size)
        popularity_scores = np.tile(popularity, (len(scores), 1))
        popularity_scores[:, 0] = -np.inf
        popularity_ranks[rows] = evaluation.rank_of_targets(popularity_scores, target_indices[rows], rated[rows])
        popularity_lists[rows] = evaluation.top_k_excluding(popularity_scores, rated[rows], popularity_lists.shape[1])
    reranked = scoring.rerank(ranking_model, scoring.ranking_features(catalog, inputs.users, tested, candidates,
                                                                      ranking_model.query_tower), candidates)
    in_list = reranked == target_indices[:, np.newaxis]
    two_stage_ranks = np.where(in_list.any(axis=1), in_list.argmax(axis=1) + 1, retrieval_ranks)

    def report(ranks: np.ndarray, top_lists: np.ndarray) -> dict:
        return {**evaluation.accuracy_metrics(ranks),
                **evaluation.beyond_accuracy_metrics(top_lists[:, :10], popularity, inputs.item_categories)}

    details = {
        "retrieval_ranks": retrieval_ranks, "two_stage_ranks": two_stage_ranks, "popularity_ranks": popularity_ranks,
        "user_history_lengths": tested.lengths(), "target_popularity": popularity[target_indices],
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


def _sample_interval(details: dict, tested_users: int, seed: int) -> dict:
    """How many of the tested users the evaluation ranked, and how far its HR@10 may be from all of theirs."""
    ranked = len(details["retrieval_ranks"])
    return {"users": ranked, "tested_users": tested_users, "seed": seed, "hr@10_ci95": {
        system: evaluation.hit_rate_interval(details[f"{system}_ranks"], tested_users)
        for system in ("retrieval", "two_stage", "popularity")}}


def _evaluate_cold_start(config: TwoStageConfig, inputs: TwoStageInputs, query_tower: QueryTower,
                         ranking_model: RankingModel, split: HeldOutSplit, details: dict,
                         new_users: HeldOutSplit | None, popularity: np.ndarray) -> dict:
    """How the models do where they cannot lean on memory: new items, and users they never trained on.

    ``split`` holds the evaluated users (``details`` are theirs). ``new_items``: the test cases whose
    item no training interaction holds (it is in the catalog through its features alone).
    ``new_users``: the set-aside users (``new_users_share``; a sample of them, as for the others),
    answered from their features and history as the ``query_features`` signatures answer a user
    the export does not know.
    """
    seen = inputs.catalog.counts(split.history.item_ids) > 0
    is_new_item = ~seen[inputs.catalog.indices(split.test_targets)]
    cold_start = {"new_items": {"cases": int(is_new_item.sum()), **{
        system: evaluation.accuracy_metrics(details[f"{system}_ranks"][is_new_item], cutoffs=(10, 50))
        for system in ("retrieval", "two_stage") if is_new_item.any()}}}
    if new_users is not None and len(new_users.test_targets):
        new_users = new_users.sample_tested(config.evaluation_users, config.seed)
        newcomers = new_users.tested_history()
        queries = scoring.query_embeddings(query_tower, inputs.users, newcomers)
        metrics, _ = _evaluate(config, inputs, ranking_model, newcomers, new_users.test_targets, queries, popularity)
        cold_start["new_users"] = {"users": metrics["users"], **{
            system: {name: metrics[system][name] for name in ("hr@10", "ndcg@10", "hr@50", "mrr")}
            for system in ("retrieval", "two_stage", "popularity")}}
    return cold_start


def _export(config: TwoStageConfig, version: int, inputs: TwoStageInputs, history: UserSequences,
            query_tower: QueryTower, ranking_model: RankingModel, top_k_layers: dict) -> None:
    """Writes every model as ``<export_dir>/<name>/<version>/`` atomically and registers it for serving.

    Beside the models: the items file (titles, popularity) and the export's description (which
    features the fresh-feature signatures take), which clients read instead of knowing the data set,
    and the feature repository, its online store loaded with the snapshot's users (``features/store.py``).
    """
    snapshot = savedmodels.UserSnapshot(inputs.users, history.user_ids, history.item_ids,
                                        scoring.history_timestamps(query_tower, history), query_tower.max_length,
                                        inputs.catalog.item_ids)
    catalog_embeddings = tf.Variable(query_tower.item_tower.embed_catalog(), trainable=False)
    # Ranking's user context holds the retrieval query too: one pass over the users serves every export.
    user_context = snapshot.precompute(
        lambda features: savedmodels.stored_user_context(ranking_model, features, catalog_embeddings))

    queries = savedmodels.RetrievalQueries(query_tower, snapshot, user_context["query"], catalog_embeddings)

    ranking = savedmodels.RankingExport(ranking_model, snapshot, user_context, catalog_embeddings)

    def search(kind: str, k: int) -> savedmodels.CatalogSearch:
        return savedmodels.CatalogSearch(top_k_layers[kind], inputs.catalog.item_ids, catalog_embeddings[1:], k)

    def retrieval(kind: str) -> savedmodels.RetrievalExport:
        return savedmodels.RetrievalExport(queries, search(kind, config.top_k),
                                           inputs.data.schema.features.user_features, query_tower.uses_time)

    export_dir = pathlib.Path(config.export_dir)
    writers = {
        RETRIEVAL_MODEL: lambda path: savedmodels.save_retrieval(retrieval("scann"), path, True),
        RETRIEVAL_BRUTE_FORCE_MODEL: lambda path: savedmodels.save_retrieval(retrieval("brute_force"), path, False),
        RANKING_MODEL: lambda path: savedmodels.save_ranking(ranking, path),
        RECOMMENDER_MODEL: lambda path: savedmodels.save_retrieval(savedmodels.RecommenderExport(
            ranking, search(config.recommender_index, config.ranking_candidates), config.top_k), path,
            config.recommender_index == "scann"),
    }
    versioning.publish_together({export_dir / name: write for name, write in writers.items()}, version)
    for name in writers:
        serving_config.upsert_model(config.serving_config_path, serving_config.ModelEntry(
            name=name, base_path=os.path.abspath(export_dir / name)))
    inputs.catalog.write_items_file(export_dir / ITEMS_FILE, inputs.catalog.counts(history.item_ids))
    description = ExportDescription(inputs.data.schema.features, TWO_STAGE_MODELS, ITEMS_FILE,
                                    inputs.data.schema.title_feature, history_timestamps=query_tower.uses_time)
    write_json_atomically(export_dir / DESCRIPTION_FILE, description.to_json())
    repo = store.write_feature_repository(
        export_dir / FEATURE_REPO_DIR, description, inputs.data.users,
        store.history_table(history.user_ids, history.item_ids, history.timestamps), inputs.data.items,
        query_tower.max_length)
    events.materialize_and_replay(repo)
