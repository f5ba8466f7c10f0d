"""Top-k retrieval layers over candidate embeddings: ScaNN (approximate) and brute force (exact).

A retrieval model scores every catalog item against a query embedding; at serving time that
full scan is replaced by an approximate nearest-neighbour index. This module builds both kinds of
TFRS ``factorized_top_k`` layer from the same inputs, so the export can ship a ScaNN model and a
brute-force model (which loads in stock TF Serving) that answer the same question.

ScaNN parameters are chosen from the catalog size (``scann_params_for``) and can be widened until
the index agrees with exact search on a sample of real queries (``tune_scann``): the pipeline's
contract is that the ScaNN top-10 equals the exact top-10 on at least 99% of queries.

A SavedModel holding a ScaNN layer contains custom ops of the ``Scann`` namespace: it must be
saved with ``SCANN_SAVE_OPTIONS`` and loaded with ``load_top_k`` (which registers those ops).
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Optional

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

TOP_K_KINDS = ("scann", "brute_force")

# ScaNN's asymmetric hashing trains 16 centres per block of dimensions, so it needs at least 16
# points, and a tree of a few leaves over a few hundred points saves nothing over a flat scan.
# Below this size "scann" is served by exact brute force (same call signature and outputs).
MIN_SCANN_CANDIDATES = 256

# Fraction of the leaves searched before tuning (ScaNN's README searches 100 of 2000 leaves).
_LEAVES_TO_SEARCH_FRACTION = 0.05
# The exact re-scoring pool. ScaNN's README reorders 100 for 10 neighbours with anisotropic
# quantization; TFRS's ScaNN layer does not expose that option, and with plain asymmetric hashing
# the pool caps recall@10, more so as the catalog grows and near-ties multiply. Measured on
# MovieLens-shaped catalogs (bench/ann_benchmark.py, recall@10 with enough leaves searched):
# 100K items: pool 100 -> 0.95, 300 -> 0.98; 1M items: 100 -> 0.79, 300 -> 0.91, 900 -> 0.97.
# Hence a pool of 30 per result and at least sqrt(n) (300 at 100K, 1000 at 1M).
_REORDER_PER_RESULT = 30
_MIN_REORDERING_CANDIDATES = 300
# ScaNN's k-means tree starts from a random initialization, so two builds with the same settings
# differ; tuning accepts settings only if this many independent builds all meet the target, so the
# export's own build (another draw) meets it too.
_TUNING_BUILDS = 3

SCANN_SAVE_OPTIONS = tf.saved_model.SaveOptions(namespace_whitelist=["Scann"])
"""Pass to ``tf.saved_model.save`` / ``model.save`` for any model holding a ScaNN layer."""


@dataclasses.dataclass(frozen=True)
class ScannParams:
    """The settings of a ScaNN index (tree partitioning + asymmetric hashing + exact reordering).

    Attributes:
      num_leaves: k-means partitions of the catalog.
      num_leaves_to_search: partitions scanned per query (recall/speed trade-off).
      num_reordering_candidates: approximate neighbours re-scored with exact dot products.
      dimensions_per_block: dimensions per asymmetric-hashing codebook (2 is ScaNN's advice).
      training_iterations: k-means iterations when building the tree.
    """

    num_leaves: int
    num_leaves_to_search: int
    num_reordering_candidates: int
    dimensions_per_block: int = 2
    training_iterations: int = 12


def scann_params_for(num_candidates: int, k: int = 10) -> ScannParams:
    """ScaNN settings for a catalog of ``num_candidates`` items, following ScaNN's guidance.

    The rule (ScaNN README / algorithms.md):
      - ``num_leaves = round(sqrt(n))``: leaves of about sqrt(n) points balance the cost of
        scoring the leaf centres against the cost of scanning the chosen leaves;
      - ``num_leaves_to_search = ceil(0.05 * num_leaves)`` (ScaNN's README: 100 of 2000), raised
        so the searched leaves hold at least the reordering pool, capped at ``num_leaves``;
      - ``num_reordering_candidates = max(300, 30 * k, sqrt(n))``, capped at n: asymmetric
        hashing only ranks roughly and exact re-scoring of the pool restores the order; the
        pool is larger than ScaNN's README (100 for k=10, with anisotropic quantization, which
        TFRS's layer lacks) and grows with the catalog, as measured by bench/ann_benchmark.py;
      - ``dimensions_per_block = 2`` (asymmetric hashing with 2-dimension blocks).
    ``tune_scann`` widens the search from here when a sample of queries asks for it.

    Args:
      num_candidates: catalog size.
      k: results per query the index will be asked for.

    Returns:
      The parameters; ``build_top_k`` ignores them below ``MIN_SCANN_CANDIDATES``.
    """
    if num_candidates < 1:
        raise ValueError(f"num_candidates must be positive, got {num_candidates}")
    num_leaves = max(1, round(math.sqrt(num_candidates)))
    reordering_candidates = min(
        num_candidates, max(_MIN_REORDERING_CANDIDATES, _REORDER_PER_RESULT * k, num_leaves)
    )
    points_per_leaf = num_candidates / num_leaves
    leaves_holding_pool = math.ceil(reordering_candidates / points_per_leaf)
    leaves_to_search = min(num_leaves, max(math.ceil(_LEAVES_TO_SEARCH_FRACTION * num_leaves), leaves_holding_pool))
    return ScannParams(
        num_leaves=num_leaves,
        num_leaves_to_search=leaves_to_search,
        num_reordering_candidates=reordering_candidates,
    )


def build_top_k(
    kind: str,
    candidate_ids: tf.Tensor,
    candidate_embeddings: tf.Tensor,
    k: int,
    query_model: Optional[tf.keras.Model] = None,
    params: Optional[ScannParams] = None,
) -> tfrs.layers.factorized_top_k.TopK:
    """An indexed top-k layer: ``layer(queries) -> (scores [batch, k], candidate_ids [batch, k])``.

    Args:
      kind: "scann" (approximate, needs the ScaNN ops to load) or "brute_force" (exact, stock TF).
      candidate_ids: [n] identifiers returned for each hit (e.g. string movie ids).
      candidate_embeddings: [n, dim] float candidate embeddings, scored by dot product.
      k: results per query.
      query_model: optional Keras model mapping raw query features to query embeddings.
      params: ScaNN settings; ``scann_params_for(n, k)`` when omitted.

    Returns:
      The layer, already indexed. A "scann" request over fewer than ``MIN_SCANN_CANDIDATES``
      items returns an exact ``BruteForce`` layer (a flat scan that small is faster and exact).
    """
    if kind not in TOP_K_KINDS:
        raise ValueError(f"kind must be one of {TOP_K_KINDS}, got {kind!r}")
    candidate_embeddings = tf.convert_to_tensor(candidate_embeddings, dtype=tf.float32)
    candidate_ids = tf.convert_to_tensor(candidate_ids)
    num_candidates = int(candidate_embeddings.shape[0])
    if candidate_embeddings.shape.rank != 2 or int(candidate_ids.shape[0]) != num_candidates:
        raise ValueError(
            f"expected candidate_embeddings [n, dim] and candidate_ids [n], got "
            f"{candidate_embeddings.shape} and {candidate_ids.shape}"
        )
    if not 1 <= k <= num_candidates:
        raise ValueError(f"k must be between 1 and the number of candidates ({num_candidates}), got {k}")
    if kind == "brute_force" or num_candidates < MIN_SCANN_CANDIDATES:
        layer = tfrs.layers.factorized_top_k.BruteForce(query_model, k=k)
    else:
        params = params or scann_params_for(num_candidates, k)
        layer = tfrs.layers.factorized_top_k.ScaNN(
            query_model,
            k=k,
            num_leaves=params.num_leaves,
            num_leaves_to_search=params.num_leaves_to_search,
            training_iterations=params.training_iterations,
            dimensions_per_block=params.dimensions_per_block,
            num_reordering_candidates=max(k, params.num_reordering_candidates),
        )
    return layer.index(candidate_embeddings, candidate_ids)


def top_k_agreement(exact_ids: np.ndarray, approx_ids: np.ndarray) -> float:
    """Fraction of queries whose approximate top-k set equals the exact top-k set.

    This is the pipeline's acceptance criterion for an index ("the top-10 agrees with exact search
    on at least 99% of queries"); it is stricter than recall@k, which counts partial overlaps.

    Args:
      exact_ids: [queries, k] ids from exact search.
      approx_ids: [queries, k] ids from the approximate index (order within a row is ignored).
    """
    exact_ids, approx_ids = np.asarray(exact_ids), np.asarray(approx_ids)
    if exact_ids.shape != approx_ids.shape:
        raise ValueError(f"shapes differ: exact {exact_ids.shape} vs approximate {approx_ids.shape}")
    same_set = (np.sort(exact_ids, axis=1) == np.sort(approx_ids, axis=1)).all(axis=1)
    return float(same_set.mean())


def recall_at_k(exact_ids: np.ndarray, approx_ids: np.ndarray) -> float:
    """Mean fraction of each query's exact top-k found in its approximate top-k."""
    exact_ids, approx_ids = np.asarray(exact_ids), np.asarray(approx_ids)
    if exact_ids.shape != approx_ids.shape:
        raise ValueError(f"shapes differ: exact {exact_ids.shape} vs approximate {approx_ids.shape}")
    hits = sum(len(np.intersect1d(exact, approx)) for exact, approx in zip(exact_ids, approx_ids))
    return hits / exact_ids.size


def tune_scann(
    candidate_embeddings: tf.Tensor,
    sample_queries: tf.Tensor,
    k: int,
    target_recall: float = 0.99,
) -> ScannParams:
    """ScaNN settings whose top-k agrees with exact search on ``target_recall`` of the sample queries.

    Starts from ``scann_params_for`` and, while the agreement (``top_k_agreement``) on the sample is
    below target, widens the search (``_widened``). Searching every leaf and reordering every
    candidate is exact, so the loop ends; on MovieLens-sized catalogs it takes a few rounds of a
    few milliseconds each.

    Args:
      candidate_embeddings: [n, dim] candidate embeddings.
      sample_queries: [queries, dim] query embeddings representative of serving traffic.
      k: results per query the index serves.
      target_recall: fraction of sample queries whose top-k must equal the exact top-k.

    Returns:
      The first parameters meeting the target on ``_TUNING_BUILDS`` independent builds
      (``scann_params_for`` itself when it already does).
    """
    candidate_embeddings = tf.convert_to_tensor(candidate_embeddings, dtype=tf.float32)
    sample_queries = tf.convert_to_tensor(sample_queries, dtype=tf.float32)
    num_candidates = int(candidate_embeddings.shape[0])
    positions = tf.range(num_candidates)
    _, exact_ids = build_top_k("brute_force", positions, candidate_embeddings, k)(sample_queries)
    params = scann_params_for(num_candidates, k)
    while True:
        exhaustive = (
            params.num_leaves_to_search == params.num_leaves
            and params.num_reordering_candidates == num_candidates
        )
        if exhaustive or all(
            top_k_agreement(exact_ids.numpy(), approx_ids.numpy()) >= target_recall
            for _, approx_ids in (
                build_top_k("scann", positions, candidate_embeddings, k, params=params)(sample_queries)
                for _ in range(_TUNING_BUILDS)
            )
        ):
            return params
        params = _widened(params, num_candidates)


def _widened(params: ScannParams, num_candidates: int) -> ScannParams:
    """Twice the leaves searched; once every leaf is searched, twice the reordering pool.

    Leaves first: a true neighbour in an unsearched leaf is lost whatever the reordering, while
    a larger pool only fixes the order asymmetric hashing got wrong (measured on ML-1M SVD
    embeddings: all 61 leaves with 300 reordered agree on 99.7% of users, 28 leaves on 95%).
    """
    if params.num_leaves_to_search < params.num_leaves:
        return dataclasses.replace(params, num_leaves_to_search=min(params.num_leaves, 2 * params.num_leaves_to_search))
    return dataclasses.replace(
        params, num_reordering_candidates=min(num_candidates, 2 * params.num_reordering_candidates)
    )


def catalog_positions(num_items: int) -> np.ndarray:
    """[num_items] the positions 1..N of a catalog's items: identifiers of an index whose results are
    excluded, ranked and looked up by position (0 is no item), their ids gathered only at the end."""
    return np.arange(1, num_items + 1, dtype=np.int64)


LATENCY_QUERIES = 200  # queries timed one by one when an index is checked


def build_checked_indexes(identifiers: np.ndarray, candidate_embeddings: tf.Tensor, queries: tf.Tensor, k: int,
                          target_recall: float = 0.99, overrides: dict | None = None) -> tuple[dict, dict]:
    """Brute-force and ScaNN top-k layers over a catalog, ScaNN tuned to agree with exact top-10.

    Args:
      identifiers: [n] what the layers return for each item, aligned with ``candidate_embeddings``: its id,
        or its catalog position (``catalog_positions``).
      candidate_embeddings: [n, dim].
      queries: [queries, dim] real queries (the evaluated users'), to tune on and to check with.
      k: results per query the layers serve.
      target_recall: share of queries whose ScaNN top-10 must equal the exact top-10.
      overrides: ScaNN settings given by the user (``ScannParams`` field names); no tuning then.

    Returns:
      The layers by kind (``TOP_K_KINDS``) and the check: settings, top-10 agreement, recall@10,
      and latency per single query and per batch of each kind.
    """
    identifiers = np.asarray(identifiers)
    if identifiers.dtype.kind not in "iu":
        identifiers = identifiers.astype(str)
    k = min(k, len(identifiers))
    if overrides:
        params = dataclasses.replace(scann_params_for(len(identifiers), 10), **overrides)
    else:
        params = tune_scann(candidate_embeddings, queries, k=min(10, len(identifiers)), target_recall=target_recall)
    layers = {kind: build_top_k(kind, tf.constant(identifiers), candidate_embeddings, k,
                                params=params) for kind in TOP_K_KINDS}
    _, exact = layers["brute_force"](queries, k=min(10, k))
    _, approximate = layers["scann"](queries, k=min(10, k))
    sample = queries[:LATENCY_QUERIES]
    latency = {kind: latency_ms(layer, sample) for kind, layer in layers.items()}
    return layers, {
        "scann_params": {name: int(value) for name, value in vars(params).items()},
        "top10_agreement": top_k_agreement(exact.numpy(), approximate.numpy()),
        "recall_at_10": recall_at_k(exact.numpy(), approximate.numpy()),
        "latency_ms": latency,
        "scann_speedup_single_query": latency["brute_force"]["single_query"] / latency["scann"]["single_query"],
    }


def latency_ms(layer: tf.keras.Model, queries: tf.Tensor, k: int = 10) -> dict:
    """Median milliseconds per single query and per batch of all ``queries`` (after a warm-up)."""
    layer(queries[:1], k=k)
    single = []
    for row in range(len(queries)):
        start = time.perf_counter()
        layer(queries[row:row + 1], k=k)
        single.append(time.perf_counter() - start)
    batch = []
    for _ in range(5):
        start = time.perf_counter()
        layer(queries, k=k)
        batch.append(time.perf_counter() - start)
    return {"single_query": 1e3 * float(np.median(single)), "batch": 1e3 * float(np.median(batch)),
            "batch_size": int(len(queries))}


def load_top_k(path: str):
    """Loads a SavedModel that may hold ScaNN ops (registering them first), e.g. a retrieval export."""
    from scann import scann_ops  # noqa: F401  (registers the Scann>* ops with TensorFlow)

    return tf.saved_model.load(path)
