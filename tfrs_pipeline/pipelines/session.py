"""The session run: read sessions, train the transformer, add session kNN, compare with baselines, export.

Training uses every prefix of every training session (prefix -> next item), but for the most recent
few, which choose how much the session-kNN scores add to the transformer's (``train_with_neighbours``).
The test cases (the benchmark's ``test.tsv``, or the prefixes of the last days' sessions of raw
events) are ranked against the whole catalog, nothing excluded, for the served combination, the
transformer alone, session kNN alone, the sequential-rules baseline and popularity; P@20 (= HR@20)
and MRR@20 are the session literature's figures. The export ``session/<version>/`` serves
``session_item_ids`` -> top-K ``item_ids`` and ``scores``.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import time
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from tfrs_pipeline import evaluation, index, run_layout
from tfrs_pipeline.catalog import Catalog
from tfrs_pipeline.config import SessionConfig
from tfrs_pipeline.contracts import SESSION_MODEL
from tfrs_pipeline.data.sequence_examples import next_item_examples, training_windows
from tfrs_pipeline.data.sessions import SessionData, load_sessions
from tfrs_pipeline.export import serving_config, versioning
from tfrs_pipeline.export.savedmodels import SessionExport, save_session
from tfrs_pipeline.models.cooccurrence import SequentialRules
from tfrs_pipeline.models.session import SessionModel
from tfrs_pipeline.models.session_knn import SessionNeighbours, evidence
from tfrs_pipeline.pipelines.common import history, training_dataset, training_optimizer
from tfrs_pipeline.pipelines.progress import stage

CUTOFFS = (10, 20)
EVALUATION_BATCH = 1024
SESSION_WIDTH_STEP = 4  # sessions are a few clicks long: batch widths in steps of 4 slots, not 32
NEIGHBOUR_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0)  # tried on the held-out sessions
HELD_OUT_CASES_PER_SESSION = 10  # the last ones: a long history (MovieLens) would otherwise give hundreds
MONITORED_CASES = 5000  # test cases ranked after every epoch, to watch convergence (never used to choose)
INDEX_SAMPLE_QUERIES = 2000


def run(config: SessionConfig) -> dict:
    """Trains, evaluates and exports the session model; returns the metrics (also in metrics.json).

    The catalog is every item of a training session, indexed 1..N most clicked first
    (``Catalog.by_popularity``), so the popular fallback is the catalog's head.
    """
    tf.keras.utils.set_random_seed(config.seed)
    with stage("load sessions"):
        data = load_sessions(config.data_dir, config.session_format, config.session_test_days)
        catalog = Catalog.by_popularity(data.train_sessions)
        click_counts = catalog.counts(data.train_sessions)
    version = versioning.next_version(pathlib.Path(config.export_dir) / SESSION_MODEL)
    run_dir = run_layout.start_run(config.export_dir, version, config, SESSION_MODEL)

    model, neighbours, metrics = train_with_neighbours(config, data, catalog)
    metrics = {"version": version, "data": data.source, "catalog_items": len(catalog), **metrics}
    if config.holdout == "test" and len(data.test_targets):
        with stage(f"evaluate {len(data.test_targets)} test cases on the full catalog"):
            metrics["evaluation"] = evaluate(model, catalog, data, neighbours=neighbours)
    with stage("build and check the ScaNN index"):
        top_k_layer, metrics["index"] = build_index(config, model, catalog, data)
    with stage(f"export {SESSION_MODEL} version {version}"):
        export(config, version, model, catalog, click_counts, top_k_layer, neighbours)
    run_layout.write_metrics(config.export_dir, run_dir, metrics, SESSION_MODEL)
    if "evaluation" in metrics:
        print(evaluation.format_metrics_table(metrics["evaluation"]))
    return metrics


def train_with_neighbours(config: SessionConfig, data: SessionData,
                          catalog: Catalog) -> tuple[SessionModel, SessionNeighbours | None, dict]:
    """The transformer, and session kNN over every training session weighted to add most to it.

    The weight is chosen by P@20 on the most recent ``neighbour_validation_share`` of the training
    sessions, which the transformer does not train on (on its own training sessions it would look
    better than it is, and the neighbours would include the session itself). Those come last in
    time, as the test and serving do, which is where the neighbours' fading by age matters. On
    DIGINETICA, holding out the most recent 2% instead of a random 2% cost the transformer 0.003 P@20,
    but it chose a better weight: served P@20 0.5396 instead of 0.5376 (plain V-SKNN). With no neighbours
    (``session_neighbours=0``) or no held-out session, the run serves the transformer alone.
    """
    held_out_share = config.neighbour_validation_share if config.session_neighbours else 0.0
    held_out_count = int(len(data.train_sessions) * held_out_share)
    fit_count = len(data.train_sessions) - held_out_count
    fit_sessions = data.train_sessions[:fit_count]
    click_counts = catalog.counts(data.train_sessions)
    model, record = train(config, dataclasses.replace(data, train_sessions=fit_sessions), catalog, click_counts)
    if not held_out_count:
        return model, None, record
    held_out = data.train_sessions[fit_count:]
    indexed = [catalog.indices(session) for session in data.train_sessions]
    ends = [range(max(1, len(session) - HELD_OUT_CASES_PER_SESSION), len(session)) for session in held_out]
    prefixes = [session[:end] for session, session_ends in zip(held_out, ends) for end in session_ends]
    targets = np.asarray([session[end] for session, session_ends in zip(held_out, ends) for end in session_ends],
                         dtype=object)
    with stage(f"choose the session-kNN weight on {len(targets)} cases of {held_out_count} held-out sessions"):
        ranks_by_weight, _ = model_ranks_by_weight(model, catalog, click_counts, prefixes, targets,
                                                   session_neighbours(config, len(catalog), indexed[:fit_count]),
                                                   NEIGHBOUR_WEIGHTS)
        p20_by_weight = {weight: evaluation.accuracy_metrics(ranks, cutoffs=(20,), mrr_cutoffs=(20,))["hr@20"]
                         for weight, ranks in zip(NEIGHBOUR_WEIGHTS, ranks_by_weight)}
        weight = max(NEIGHBOUR_WEIGHTS, key=lambda candidate: (p20_by_weight[candidate], -candidate))
    neighbours = session_neighbours(config, len(catalog), indexed, weight)
    record.update(held_out_sessions=held_out_count, neighbour_weight=weight,
                  held_out_p20_by_neighbour_weight={str(key): value for key, value in p20_by_weight.items()})
    return model, neighbours, record


def build_model(config: SessionConfig, catalog: Catalog, train_sessions: list[np.ndarray]) -> SessionModel:
    """An untrained session model over the catalog with the run's settings.

    The softmax's logQ reads how often each item is a training target: every click but a session's first.
    """
    target_counts = catalog.counts(session[1:] for session in train_sessions)
    return SessionModel(catalog.item_ids, target_counts, config.max_length,
                        config.embedding_dim, config.num_blocks, config.num_heads, config.dropout,
                        config.num_negatives, relative_attention_bias=config.relative_attention_bias)


def session_neighbours(config: SessionConfig, num_items: int, sessions: list[np.ndarray],
                       weight: float = 0.0) -> SessionNeighbours:
    """Session kNN with the run's settings over ``sessions`` (catalog indices, oldest session first)."""
    return SessionNeighbours(sessions, num_items, config.session_neighbours,
                             recency_scale=config.neighbour_recency_scale,
                             position_scale=config.neighbour_position_scale, weight=weight)


def train(config: SessionConfig, data: SessionData, catalog: Catalog,
          click_counts: np.ndarray) -> tuple[SessionModel, dict]:
    """The trained model and its record (per-epoch logs, examples, seconds).

    ``click_counts``: [N + 1] the catalog's clicks in all training sessions (``catalog.counts``), which
    the monitored ranking gives a session of no known item; ``data`` may hold only some of those sessions.
    """
    with stage("build session model"):
        model = build_model(config, catalog, data.train_sessions)
        examples = training_windows(data.session_ids, data.train_sessions, config.max_length)
        examples.pop("user_id")  # sessions are anonymous: the model sees their items only
        model.compile(optimizer=training_optimizer(config, len(examples["history_item_ids"])))
        callbacks = []
        if len(data.test_targets):
            callbacks.append(MonitoredRanking(model, catalog, click_counts, data.test_prefixes[:MONITORED_CASES],
                                              data.test_targets[:MONITORED_CASES]))
    started, cpu_started = time.perf_counter(), time.process_time()
    with stage(f"train session model ({len(examples['history_item_ids'])} windows, {config.epochs} epochs)"):
        dataset = training_dataset(examples, config.batch_size, config.seed, SESSION_WIDTH_STEP)
        keras_history = model.fit(dataset, epochs=config.epochs, verbose=config.verbose, callbacks=callbacks)
    return model, {"training": history(keras_history), "training_seconds": time.perf_counter() - started,
                   "training_cpu_seconds": time.process_time() - cpu_started,
                   "training_windows": int(len(examples["history_item_ids"])),
                   "repeat_bonus_by_recency": [round(float(value), 4) for value in model.repeat_bonus.numpy()]}


class MonitoredRanking(tf.keras.callbacks.Callback):
    """Adds ``monitored_p@20`` / ``monitored_mrr@20`` on a fixed sample of test cases to each epoch's logs.

    The sampled-softmax loss says little about ranking quality; this shows convergence in the
    progress bar and the run's record. It never chooses anything (no early stopping on test data).
    """

    def __init__(self, model: SessionModel, catalog: Catalog, click_counts: np.ndarray, prefixes: list[np.ndarray],
                 targets: np.ndarray):
        super().__init__()
        self._session_model, self._catalog, self._click_counts = model, catalog, click_counts
        self._prefixes, self._targets = prefixes, targets

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        ranks = model_ranks(self._session_model, self._catalog, self._click_counts, self._prefixes, self._targets)
        metrics = evaluation.accuracy_metrics(ranks, cutoffs=(20,), mrr_cutoffs=(20,))
        if logs is not None:
            logs["monitored_p@20"], logs["monitored_mrr@20"] = metrics["hr@20"], metrics["mrr@20"]


def session_queries(model: SessionModel, prefixes: list[np.ndarray]) -> np.ndarray:
    """[cases, dim] the model's query after each prefix (its most recent ``max_length`` items).

    Prefixes are encoded shortest first, each batch only as wide as its longest prefix (left
    padding keeps the most recent item in the last slot), then put back in their order.
    """
    empty = np.full(len(prefixes), "", dtype=object)
    histories = next_item_examples(empty, prefixes, empty, model.max_length)["history_item_ids"].astype(str)
    lengths = np.asarray([min(len(prefix), model.max_length) for prefix in prefixes])
    order = np.argsort(lengths, kind="stable")
    queries = np.zeros((len(prefixes), model.catalog_embeddings().shape[1]), np.float32)
    for start in range(0, len(prefixes), EVALUATION_BATCH):
        rows = order[start:start + EVALUATION_BATCH]
        width = max(1, int(lengths[rows].max()))
        queries[rows] = model(tf.constant(histories[rows, -width:])).numpy()
    return queries


def model_ranks(model: SessionModel, catalog: Catalog, click_counts: np.ndarray, prefixes: list[np.ndarray],
                targets: np.ndarray, excluded: list[np.ndarray] | None = None,
                neighbours: SessionNeighbours | None = None) -> np.ndarray:
    """1-based rank of each target among all catalog items after its prefix (``excluded`` items removed).

    An item's score is what serving computes: items the catalog does not know are dropped from the
    prefix; then the query's dot product with each item, plus the repeat bonus of its clicks in the
    prefix, plus the neighbours' bonus; a prefix left empty gets the most clicked items
    (``click_counts``: [N + 1] the catalog's training clicks, ``catalog.counts``).
    """
    weights = (neighbours.weight,) if neighbours is not None else (0.0,)
    return model_ranks_by_weight(model, catalog, click_counts, prefixes, targets, neighbours, weights, excluded)[0][0]


def model_ranks_by_weight(model: SessionModel, catalog: Catalog, click_counts: np.ndarray, prefixes: list[np.ndarray],
                          targets: np.ndarray, neighbours: SessionNeighbours | None, weights: Sequence[float],
                          excluded: list[np.ndarray] | None = None) -> tuple[list[np.ndarray], np.ndarray | None]:
    """(``model_ranks`` for each of ``weights`` of the neighbours' bonus, ranks under the neighbours alone).

    The transformer and the neighbours each score the prefixes once for all of them. Alone (None
    without ``neighbours``), popularity breaks the neighbours' ties and ranks sessions with no neighbour.
    """
    prefixes = [prefix[catalog.indices(prefix) > 0] for prefix in prefixes]
    is_empty = np.asarray([len(prefix) == 0 for prefix in prefixes])
    catalog_embeddings = model.catalog_embeddings().numpy()
    queries = session_queries(model, prefixes)
    cases, items, bonuses = repeat_bonuses(model, catalog, prefixes)
    recent = left_padded_indices(catalog, prefixes, model.max_length)
    target_indices = catalog.indices(targets)
    ranks = [[] for _ in weights]
    alone = []
    for start in range(0, len(prefixes), EVALUATION_BATCH):
        rows = slice(start, start + EVALUATION_BATCH)
        batch_excluded = excluded[rows] if excluded is not None else [[]] * len(target_indices[rows])
        batch_scores = queries[rows] @ catalog_embeddings.T
        first, last = np.searchsorted(cases, [rows.start, rows.stop])
        np.add.at(batch_scores, (cases[first:last] - rows.start, items[first:last]), bonuses[first:last])
        neighbour_scores = 0.0
        if neighbours is not None:
            raw_neighbour_scores = neighbours.dense_scores(recent[rows])
            neighbour_scores = evidence(raw_neighbour_scores).numpy()
            alone.append(_ranked(raw_neighbour_scores, target_indices[rows], batch_excluded, click_counts))
        for weight, weight_ranks in zip(weights, ranks):
            scores = batch_scores + weight * neighbour_scores if weight else batch_scores.copy()
            scores[is_empty[rows]] = click_counts
            weight_ranks.append(_ranked(scores, target_indices[rows], batch_excluded))

    def joined(batches: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(batches) if batches else np.zeros(0, np.int64)

    return [joined(batches) for batches in ranks], joined(alone) if neighbours is not None else None


def _ranked(scores: np.ndarray, target_indices: np.ndarray, excluded: list[np.ndarray],
            tie_break: np.ndarray | None = None) -> np.ndarray:
    """Ranks of the targets under ``scores`` [cases, N + 1], in which index 0 (no item) is never recommended."""
    scores[:, 0] = -np.inf
    return evaluation.rank_of_targets(scores, target_indices, excluded, tie_break)


def left_padded_indices(catalog: Catalog, prefixes: list[np.ndarray], width: int) -> np.ndarray:
    """[cases, width] each prefix's last ``width`` catalog indices, left-padded with 0 (as serving reads them)."""
    padded = np.zeros((len(prefixes), width), np.int64)
    for row, prefix in enumerate(prefixes):
        recent = catalog.indices(prefix[-width:]) if len(prefix) else np.zeros(0, np.int64)
        padded[row, width - len(recent):] = recent
    return padded


def repeat_bonuses(model: SessionModel, catalog: Catalog,
                   prefixes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(case, catalog index, bonus) of every click in the prefixes' most recent ``max_length``, cases in order."""
    recent = [prefix[-model.max_length:] for prefix in prefixes]
    lengths = np.asarray([len(items) for items in recent])
    cases = np.repeat(np.arange(len(recent)), lengths)
    items = catalog.indices(np.concatenate(recent)) if len(cases) else np.zeros(0, np.int64)
    position_in_prefix = np.arange(len(cases)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    clicks_ago = np.repeat(lengths - 1, lengths) - position_in_prefix
    return cases, items, model.repeat_bonus.numpy()[clicks_ago]


def _ranks_in_batches(scores: Callable[[slice], np.ndarray], target_indices: np.ndarray,
                      excluded: list[np.ndarray] | None) -> np.ndarray:
    """Ranks from ``scores(rows)`` [rows, N + 1], a batch at a time (the full matrix would not fit in memory)."""
    ranks = []
    for start in range(0, len(target_indices), EVALUATION_BATCH):
        rows = slice(start, start + EVALUATION_BATCH)
        batch_excluded = excluded[rows] if excluded is not None else [[]] * len(target_indices[rows])
        ranks.append(evaluation.rank_of_targets(scores(rows), target_indices[rows], batch_excluded))
    return np.concatenate(ranks)


def evaluate(model: SessionModel, catalog: Catalog, data: SessionData,
             excluded: list[np.ndarray] | None = None, neighbours: SessionNeighbours | None = None) -> dict:
    """P@k (= HR@k), MRR@k and NDCG@k of what is served, its two parts alone, sequential rules and popularity.

    With ``neighbours``, "transformer_and_session_knn" is the served system, "transformer" and
    "session_knn" its parts alone. Popularity counts the clicks of ``data``'s training sessions.
    """
    click_counts = catalog.counts(data.train_sessions)
    target_indices = catalog.indices(data.test_targets)
    rules = SequentialRules([catalog.indices(session) for session in data.train_sessions], len(catalog))
    last_items = np.asarray([catalog.indices(prefix[-1:])[0] for prefix in data.test_prefixes])
    ranks = {}
    if neighbours is not None:  # the transformer and kNN run once for the served combination and each alone
        (ranks["transformer_and_session_knn"], ranks["transformer"]), ranks["session_knn"] = model_ranks_by_weight(
            model, catalog, click_counts, data.test_prefixes, data.test_targets, neighbours, (neighbours.weight, 0.0),
            excluded)
    else:
        ranks["transformer"] = model_ranks(model, catalog, click_counts, data.test_prefixes, data.test_targets,
                                           excluded)
    ranks["sequential_rules"] = _ranks_in_batches(lambda rows: rules.scores(last_items[rows]), target_indices, excluded)
    if excluded is None:
        ranks["popularity"] = _popularity_ranks(click_counts, target_indices)
    else:
        popularity = np.where(np.arange(len(catalog) + 1) > 0, click_counts, -np.inf)
        ranks["popularity"] = _ranks_in_batches(lambda rows: np.tile(popularity, (len(last_items[rows]), 1)),
                                                target_indices, excluded)
    report = {"test_cases": int(len(target_indices))}
    for system, system_ranks in ranks.items():
        metrics = evaluation.accuracy_metrics(system_ranks, cutoffs=CUTOFFS, mrr_cutoffs=CUTOFFS)
        report[system] = {"p@20": metrics["hr@20"], **metrics}
    return report


def _popularity_ranks(click_counts: np.ndarray, target_indices: np.ndarray) -> np.ndarray:
    """Ranks under "most clicked first" with nothing excluded: the same list for every case, so no score matrix.

    As ``evaluation.rank_of_targets``: the items (index 0 aside) clicked at least as often as the target,
    the target included, so ties count against it.
    """
    sorted_counts = np.sort(click_counts[1:])
    return len(sorted_counts) - np.searchsorted(sorted_counts, click_counts[target_indices], side="left")


def build_index(config: SessionConfig, model: SessionModel, catalog: Catalog, data: SessionData):
    """A ScaNN top-k layer over the catalog, tuned so its top-10 agrees with exact search on sample sessions.

    Returns the layer and its check (``index.build_checked_indexes``: settings, top-10 agreement,
    recall@10, latency of ScaNN and brute force), with whether the catalog is large enough for ScaNN.
    """
    sample = (data.test_prefixes or data.train_sessions)[:INDEX_SAMPLE_QUERIES]
    queries = tf.constant(session_queries(model, sample), tf.float32)
    layers, check = index.build_checked_indexes(catalog.item_ids, model.catalog_embeddings()[1:], queries,
                                                config.top_k, config.scann_target_recall)
    return layers["scann"], {**check, "uses_scann": len(catalog) >= index.MIN_SCANN_CANDIDATES}


def export(config: SessionConfig, version: int, model: SessionModel, catalog: Catalog, click_counts: np.ndarray,
           top_k_layer, neighbours: SessionNeighbours | None = None) -> None:
    """Writes ``<export_dir>/session/<version>/`` atomically and registers it in the serving config.

    ``click_counts``: [N + 1] the catalog's training clicks; the most clicked items (the catalog's
    head) are what a session of no known item gets, scored by their share of the clicks.
    """
    k = min(config.top_k, len(catalog))
    popular = click_counts[1:k + 1]  # the catalog is indexed by popularity
    module = SessionExport(model, top_k_layer, catalog.item_ids[:k], popular / click_counts.sum(), k, neighbours)
    uses_scann = len(catalog) >= index.MIN_SCANN_CANDIDATES
    base_path = pathlib.Path(config.export_dir) / SESSION_MODEL
    versioning.write_version(base_path, lambda path: save_session(module, path, uses_scann), version)
    serving_config.upsert_model(config.serving_config_path,
                                serving_config.ModelEntry(name=SESSION_MODEL, base_path=os.path.abspath(base_path)))
