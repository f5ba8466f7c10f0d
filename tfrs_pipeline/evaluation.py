"""Full-catalog evaluation: accuracy of the held-out next item, and what the lists look like.

Every metric ranks the target against the whole catalog, never against sampled negatives (sampled
metrics can reverse the order of models, Krichene & Rendle 2020), with the user's already-rated
items removed from the ranking. Beyond accuracy, the lists are judged by how much of the catalog
they reach, how popular their items are, and how varied their categories are, because a model can win
offline hit rate by recommending blockbusters to everyone.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

CUTOFFS = (10, 50, 200)


def rank_of_targets(scores: np.ndarray, target_indices: np.ndarray, excluded: Sequence[np.ndarray],
                    tie_break: np.ndarray | None = None) -> np.ndarray:
    """1-based rank of each row's target among its non-excluded columns (ties count against it).

    Args:
      scores: [users, items] scores; column indices are catalog indices.
      target_indices: [users] the column of each row's held-out item.
      excluded: per row, the columns that must not compete (items already rated); the target itself
        is never excluded.
      tie_break: [items] what orders items of equal score (higher first; popularity, for a baseline
        that gives many items the same score), so that only ties on both count against the target.
        Compared here rather than added to the scores, where float32 would round it away.
    """
    scores = scores.astype(np.float32, copy=True)
    for row, columns in enumerate(excluded):
        scores[row, columns] = -np.inf
    target_scores = scores[np.arange(len(target_indices)), target_indices][:, np.newaxis]
    if tie_break is None:
        return (scores >= target_scores).sum(axis=1)  # the target itself, and all that tie or beat it
    level = scores == target_scores
    return ((scores > target_scores) | (level & (tie_break >= tie_break[target_indices][:, np.newaxis]))).sum(axis=1)


def softmax_cross_entropy(scores: np.ndarray, target_columns: np.ndarray) -> float:
    """Mean cross-entropy of each row's target column under a softmax over the row (numerically stable)."""
    scores = scores.astype(np.float64)
    top = scores.max(axis=1)
    log_normalizers = top + np.log(np.exp(scores - top[:, np.newaxis]).sum(axis=1))
    return float(np.mean(log_normalizers - scores[np.arange(len(scores)), target_columns]))


def top_k_excluding(scores: np.ndarray, excluded: Sequence[np.ndarray], k: int) -> np.ndarray:
    """[users, k] columns of the best scores per row, best first, excluded columns removed."""
    scores = scores.astype(np.float32, copy=True)
    for row, columns in enumerate(excluded):
        scores[row, columns] = -np.inf
    best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, best, axis=1), axis=1, kind="stable")
    return np.take_along_axis(best, order, axis=1)


def accuracy_metrics(ranks: np.ndarray, cutoffs: Iterable[int] = CUTOFFS,
                     mrr_cutoffs: Iterable[int] = ()) -> dict[str, float]:
    """HR@k, NDCG@k (one relevant item, so IDCG = 1) and MRR from 1-based ranks.

    ``mrr_cutoffs`` adds MRR@k (reciprocal rank, 0 beyond rank k), the session-based literature's
    measure next to P@k (which equals HR@k with one relevant item).
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    metrics = {}
    for k in cutoffs:
        hit = ranks <= k
        metrics[f"hr@{k}"] = float(hit.mean())
        metrics[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0).mean())
    for k in mrr_cutoffs:
        metrics[f"mrr@{k}"] = float(np.where(ranks <= k, 1.0 / ranks, 0.0).mean())
    metrics["mrr"] = float((1.0 / ranks).mean())
    return metrics


def hit_rate_interval(ranks: np.ndarray, population: int, k: int = 10, z: float = 1.96) -> float:
    """Half-width of the interval (95% by default) around HR@k of ``ranks``, a random sample of ``population`` users.

    It says how far the sample's hit rate may lie from the one all ``population`` users would give:
    the normal approximation of a proportion with the finite-population correction, so it is 0 when
    every user is ranked and grows as the sample shrinks.
    """
    sampled = len(ranks)
    if sampled >= population or sampled < 2:
        return 0.0
    hit_rate = float(np.mean(np.asarray(ranks) <= k))
    return float(z * np.sqrt(hit_rate * (1 - hit_rate) / (sampled - 1) * (1 - sampled / population)))


def beyond_accuracy_metrics(top_lists: np.ndarray, item_popularity: np.ndarray,
                            item_categories: np.ndarray) -> dict[str, float]:
    """Coverage, popularity and diversity of recommendation lists.

    Args:
      top_lists: [users, k] catalog indices of each user's list.
      item_popularity: [items] training interactions per catalog index (index 0 unused).
      item_categories: [items, C] multi-hot category membership per catalog index
        (``features.arrays.category_matrix``: genres of a film, departments of a shop).

    Returns:
      ``coverage``: share of the catalog (indices 1..N) in at least one list;
      ``popularity_percentile``: mean percentile of the recommended items' popularity in the catalog
      (0.5 for a popularity-blind recommender, near 1.0 for "recommend the blockbusters");
      ``category_diversity``: mean over lists of the mean pairwise Jaccard distance of category sets.
    """
    num_items = len(item_popularity) - 1
    popularity = item_popularity[1:]
    percentile = np.zeros(len(item_popularity))
    percentile[1:] = (np.argsort(np.argsort(popularity, kind="stable"), kind="stable") + 0.5) / num_items
    categories = item_categories[top_lists].astype(np.float32)  # [users, k, C]
    shared = np.einsum("ukc,ulc->ukl", categories, categories)
    sizes = categories.sum(-1)
    union = sizes[:, :, np.newaxis] + sizes[:, np.newaxis, :] - shared
    distance = 1.0 - np.divide(shared, union, out=np.ones_like(shared), where=union > 0)
    k = top_lists.shape[1]
    pairs = k * (k - 1)
    return {
        "coverage": float(len(np.unique(top_lists)) / num_items),
        "popularity_percentile": float(percentile[top_lists].mean()),
        "category_diversity": float(distance.sum(axis=(1, 2)).mean() / pairs) if pairs else 0.0,
    }


def format_metrics_table(evaluation_metrics: dict) -> str:
    """The evaluation as a fixed-width table, one row per system (each dict-valued entry is a system)."""
    systems = [name for name, values in evaluation_metrics.items() if isinstance(values, dict)]
    columns = list(evaluation_metrics[systems[0]])
    widths = [max(10, len(name) + 2) for name in columns]
    label_width = max(12, *(len(system) + 2 for system in systems))
    lines = ["system".ljust(label_width) + "".join(f"{name:>{width}}" for name, width in zip(columns, widths))]
    for system in systems:
        values = evaluation_metrics[system]
        lines.append(system.ljust(label_width)
                     + "".join(f"{values[name]:>{width}.4f}" for name, width in zip(columns, widths)))
    return "\n".join(lines)
