"""ScaNN and brute-force top-k layers on real embeddings (an SVD of a MovieLens-1M slice)."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfrs_pipeline import index
from tfrs_pipeline.data.movielens import load_movielens

NUM_USERS = 300
EMBEDDING_DIM = 32
K = 10


@pytest.fixture(scope="module")
def factorization(shared_data_dir):
    """User and item embeddings from a truncated SVD of the implicit user x item matrix of the first users."""
    ratings = load_movielens(shared_data_dir / "ml-1m", max_users=NUM_USERS).ratings
    user_ids, user_rows = np.unique(ratings.user_id.to_numpy(), return_inverse=True)
    movie_ids, movie_columns = np.unique(ratings.movie_id.to_numpy(), return_inverse=True)
    interactions = np.zeros((len(user_ids), len(movie_ids)), np.float32)
    interactions[user_rows, movie_columns] = 1.0
    left, singular_values, right = np.linalg.svd(interactions, full_matrices=False)
    scale = np.sqrt(singular_values[:EMBEDDING_DIM])
    return {
        "user_ids": user_ids,
        "user_embeddings": (left[:, :EMBEDDING_DIM] * scale).astype(np.float32),
        "movie_ids": movie_ids,
        "movie_embeddings": (right[:EMBEDDING_DIM].T * scale).astype(np.float32),
    }


def test_scann_params_follow_catalog_size():
    small, movielens, large = (index.scann_params_for(n) for n in (1_000, 3_706, 1_000_000))
    assert large.num_leaves == 1_000 and movielens.num_leaves == round(math.sqrt(3_706))
    for params in (small, movielens, large):
        assert 1 <= params.num_leaves_to_search <= params.num_leaves
        assert params.num_reordering_candidates >= 300
    assert large.num_leaves_to_search / large.num_leaves == pytest.approx(0.05)
    assert large.num_reordering_candidates == 1_000  # grows as sqrt(n) past 300
    assert index.scann_params_for(1_000_000, k=100).num_reordering_candidates == 3_000


def test_scann_matches_brute_force_once_tuned(factorization):
    movie_ids = tf.constant(factorization["movie_ids"])
    movie_embeddings = factorization["movie_embeddings"]
    queries = tf.constant(factorization["user_embeddings"])
    assert len(movie_ids) >= index.MIN_SCANN_CANDIDATES  # the slice exercises a real ScaNN index

    params = index.tune_scann(movie_embeddings, queries, K, target_recall=0.99)
    default = index.scann_params_for(len(movie_ids), K)
    assert params.num_leaves_to_search >= default.num_leaves_to_search

    scann = index.build_top_k("scann", movie_ids, movie_embeddings, K, params=params)
    brute_force = index.build_top_k("brute_force", movie_ids, movie_embeddings, K)
    assert isinstance(scann, index.tfrs.layers.factorized_top_k.ScaNN)
    scann_scores, scann_ids = scann(queries)
    exact_scores, exact_ids = brute_force(queries)
    assert scann_ids.shape == (NUM_USERS, K) and scann_ids.dtype == tf.string
    # tune_scann met 0.99 on three builds; this build is another draw of ScaNN's random k-means tree
    assert index.top_k_agreement(exact_ids.numpy(), scann_ids.numpy()) >= 0.98
    same_set = (np.sort(scann_ids, axis=1) == np.sort(exact_ids, axis=1)).all(axis=1)
    np.testing.assert_allclose(  # reordering re-scores exactly: where the sets agree, so do the scores
        np.sort(scann_scores.numpy()[same_set], axis=1), np.sort(exact_scores.numpy()[same_set], axis=1),
        rtol=1e-4, atol=1e-4
    )


def test_tiny_catalog_scann_falls_back_to_exact_search(factorization):
    movie_ids = tf.constant(factorization["movie_ids"][:20])
    movie_embeddings = factorization["movie_embeddings"][:20]
    queries = tf.constant(factorization["user_embeddings"][:50])
    layer = index.build_top_k("scann", movie_ids, movie_embeddings, 5)
    _, ids = layer(queries)
    _, exact_ids = index.build_top_k("brute_force", movie_ids, movie_embeddings, 5)(queries)
    assert index.top_k_agreement(exact_ids.numpy(), ids.numpy()) == 1.0


def test_bad_arguments_are_named(factorization):
    movie_ids = tf.constant(factorization["movie_ids"])
    movie_embeddings = factorization["movie_embeddings"]
    with pytest.raises(ValueError, match="kind"):
        index.build_top_k("hnsw", movie_ids, movie_embeddings, K)
    with pytest.raises(ValueError, match="k must be"):
        index.build_top_k("brute_force", movie_ids[:5], movie_embeddings[:5], K)
    with pytest.raises(ValueError, match="candidate_ids"):
        index.build_top_k("scann", movie_ids[:-1], movie_embeddings, K)


def test_agreement_and_recall_count_sets():
    exact = np.array([[1, 2, 3], [4, 5, 6]])
    assert index.top_k_agreement(exact, np.array([[3, 2, 1], [4, 5, 7]])) == 0.5
    assert index.recall_at_k(exact, np.array([[3, 2, 1], [4, 5, 7]])) == pytest.approx(5 / 6)


def test_scann_savedmodel_reloads_in_a_fresh_process(factorization, tmp_path):
    """A user-id -> top-k model with a ScaNN layer survives SavedModel export and a clean reload."""
    user_ids = factorization["user_ids"]
    user_lookup = tf.keras.layers.StringLookup(vocabulary=user_ids, mask_token=None)
    user_table = np.vstack([np.zeros((1, EMBEDDING_DIM), np.float32), factorization["user_embeddings"]])
    query_model = tf.keras.Sequential([
        user_lookup,
        tf.keras.layers.Embedding(len(user_table), EMBEDDING_DIM, weights=[user_table]),
    ])
    layer = index.build_top_k(
        "scann", tf.constant(factorization["movie_ids"]), factorization["movie_embeddings"], K, query_model=query_model
    )
    some_users = tf.constant(user_ids[:7])
    scores, movie_ids = layer(some_users)
    export_path = tmp_path / "retrieval"
    tf.saved_model.save(layer, str(export_path), options=index.SCANN_SAVE_OPTIONS)

    reload = (
        "import json, sys, tensorflow as tf\n"
        "from tfrs_pipeline import index\n"
        "scores, ids = index.load_top_k(sys.argv[1])(tf.constant(json.loads(sys.argv[2])))\n"
        "print(json.dumps({'scores': scores.numpy().tolist(), 'ids': ids.numpy().astype(str).tolist()}))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", reload, str(export_path), json.dumps(user_ids[:7].tolist())],
        capture_output=True, text=True, timeout=120, check=True,
    )
    reloaded = json.loads(completed.stdout.strip().splitlines()[-1])
    assert reloaded["ids"] == movie_ids.numpy().astype(str).tolist()
    np.testing.assert_allclose(reloaded["scores"], scores.numpy(), rtol=1e-6)


def test_the_catalog_search_excludes_by_position_and_pads_an_exhausted_list(factorization):
    """Over real embeddings: each user's answer is the exact top-k of the items left after their exclusions."""
    from tfrs_pipeline.export.savedmodels import CatalogSearch

    movie_ids = factorization["movie_ids"].astype(str)
    embeddings = factorization["movie_embeddings"]
    queries = factorization["user_embeddings"][:8]
    layer = index.build_top_k("brute_force", tf.constant(index.catalog_positions(len(movie_ids))), embeddings, K)
    search = CatalogSearch(layer, movie_ids, embeddings, K)
    rng = np.random.default_rng(0)
    scores = queries @ embeddings.T
    top = np.argsort(-scores, axis=1)
    # Exclude part of each user's exact top 30 (and, for one user, every item but three): "" padded rows.
    excluded = [list(movie_ids[rng.choice(top[row, :30], size=row + 3, replace=False)]) for row in range(len(queries))]
    excluded[-1] = list(movie_ids[top[-1, 3:]])
    width = max(map(len, excluded))
    answer = search(tf.constant(queries), tf.constant([row + [""] * (width - len(row)) for row in excluded]))
    for row, (ids, row_scores) in enumerate(zip(answer["item_ids"].numpy().astype(str), answer["scores"].numpy())):
        kept = [movie_ids[column] for column in top[row] if movie_ids[column] not in set(excluded[row])][:K]
        if row == len(queries) - 1:
            assert list(ids[:3]) == kept and set(ids[3:]) == {""} and np.isinf(row_scores[3:]).all()
        else:
            assert list(ids) == kept and not set(ids) & set(excluded[row])


def test_rated_positions_are_distinct_ascending_and_leave_out_unknown_items():
    from tfrs_pipeline.export.savedmodels import rated_positions

    catalog = np.array(["m3", "m1", "m2"])  # positions 1, 2, 3
    positions, row_splits = rated_positions(catalog, [np.array([], dtype=str), np.array(["m2", "m3", "m2", "gone"]),
                                                      np.array(["m1"])])
    assert row_splits.tolist() == [0, 0, 2, 3]
    assert positions.tolist() == [1, 3, 2]
