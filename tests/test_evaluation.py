"""The full-catalog metrics, checked against definitions computed another way."""
import numpy as np
import tensorflow as tf

from tfrs_pipeline import evaluation


def test_rank_ignores_excluded_items_and_counts_ties_against_the_target():
    scores = np.array([[0.9, 0.5, 0.7, 0.5], [0.1, 0.2, 0.3, 0.4]])
    ranks = evaluation.rank_of_targets(scores, np.array([1, 0]), [np.array([0]), np.array([], int)])
    assert ranks.tolist() == [3, 4]  # row 0: item 0 excluded, item 2 beats it and item 3 ties with it


def test_a_tie_break_orders_equal_scores_even_where_adding_it_would_round_away():
    scores = np.array([[4.45, 4.45, 4.45, 1.0], [4.45, 4.45, 4.45, 1.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    popularity = np.array([3.0, 2.0, 2.0, 9.0])
    targets, nothing_excluded = np.array([0, 1, 3]), [np.array([], int)] * 3
    ranks = evaluation.rank_of_targets(scores, targets, nothing_excluded, tie_break=popularity)
    assert ranks.tolist() == [1, 3, 1]  # item 0 wins its tie; item 1 loses to it and ties with item 2 on both
    added = evaluation.rank_of_targets(scores + 1e-8 * popularity, targets, nothing_excluded)
    assert added.tolist() == [3, 3, 1]  # a small term added to 4.45 is lost in float32


def test_metrics_of_known_ranks():
    metrics = evaluation.accuracy_metrics(np.array([1, 3, 20]), cutoffs=(10,))
    assert metrics["hr@10"] == 2 / 3
    assert np.isclose(metrics["ndcg@10"], (1 + 1 / np.log2(4)) / 3)
    assert np.isclose(metrics["mrr"], (1 + 1 / 3 + 1 / 20) / 3)


def test_validation_loss_is_tensorflows_softmax_cross_entropy():
    rng = np.random.default_rng(0)
    scores = rng.normal(scale=20.0, size=(50, 300)).astype(np.float32)  # large logits: must stay finite
    targets = rng.integers(0, 300, 50)
    expected = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=scores).numpy().mean()
    assert np.isclose(evaluation.softmax_cross_entropy(scores, targets), expected, rtol=1e-5)


def test_hit_rate_interval_covers_the_whole_populations_rate_about_95_times_in_100():
    rng = np.random.default_rng(0)
    population_ranks = rng.geometric(0.03, size=50_000)  # HR@10 about 0.26
    population_rate = np.mean(population_ranks <= 10)
    assert evaluation.hit_rate_interval(population_ranks, len(population_ranks)) == 0.0  # every user: exact
    covered = []
    for _ in range(400):
        sample = rng.choice(population_ranks, 2_000, replace=False)
        half_width = evaluation.hit_rate_interval(sample, len(population_ranks))
        covered.append(abs(np.mean(sample <= 10) - population_rate) <= half_width)
    assert 0.92 <= np.mean(covered) <= 0.98
    wide, narrow = (evaluation.hit_rate_interval(population_ranks[:size], len(population_ranks))
                    for size in (1_000, 10_000))
    assert narrow < wide / 2.5  # about 1 / sqrt(n)
