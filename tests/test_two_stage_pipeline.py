"""The two-stage pipeline end to end: train on a real MovieLens slice, export, reload, recommend."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tfrs_pipeline.contracts import TWO_STAGE_MODELS, ExportDescription
from tfrs_pipeline.data.dataset import load_dataset
from tfrs_pipeline.data.split import leave_last_out, user_sequences
from tfrs_pipeline.export.serving_config import read_config
from tfrs_pipeline.features.arrays import FeatureRows

MODELS = TWO_STAGE_MODELS


def _run_in_fresh_process(code: str) -> dict:
    """Runs ``code`` in a new interpreter (nothing of this process's TensorFlow state) and parses its JSON."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_export_layout_and_serving_config(small_export):
    export_dir, metrics = small_export
    for name in MODELS:
        assert (export_dir / name / "1" / "saved_model.pb").is_file()
    assert not [path for path in export_dir.rglob(".tmp*")], "no temporary folder may remain"
    config = read_config(export_dir / "models.config")
    assert sorted(model.name for model in config.model_config_list.config) == sorted(MODELS)
    assert json.loads((export_dir / "metrics.json").read_text()) == json.loads(
        (export_dir / "runs" / "1" / "metrics.json").read_text())
    assert json.loads((export_dir / "runs" / "1" / "config.json").read_text())["holdout"] == "test"
    assert (export_dir / "items.tsv").read_text().startswith("item_id\ttitle\tpopularity\n")
    description = ExportDescription.read(export_dir / "schema.json")
    assert [spec.name for spec in description.features.user_features] == [
        "user_gender", "bucketized_user_age", "user_occupation_label", "user_zip_code"]
    assert {spec.name: spec.kind for spec in description.features.item_features} == {
        "movie_title": "text", "movie_genres": "multi_categorical", "release_year": "numeric"}
    signatures = json.loads((export_dir / "schema.json").read_text())["signatures"]
    assert signatures["ranking"]["query_features"]["inputs"] == [
        "user_gender", "bucketized_user_age", "user_occupation_label", "user_zip_code", "history_item_ids", "item_ids"]
    assert signatures["retrieval_brute_force"]["serving_default"]["inputs"] == ["user_id"]


def test_metrics_cover_every_system_on_the_full_catalog(small_export, shared_data_dir):
    _, metrics = small_export
    evaluation = metrics["evaluation"]
    assert evaluation["users"] == 150
    catalog = load_dataset(shared_data_dir / "ml-1m", max_users=150).items
    assert evaluation["catalog_items"] == len(catalog)  # every movie of the catalog, never a sample
    for system in ("retrieval", "two_stage", "popularity"):
        values = evaluation[system]
        for name in ("hr@10", "ndcg@10", "hr@50", "ndcg@50", "hr@200", "ndcg@200", "mrr", "coverage",
                     "popularity_percentile", "category_diversity"):
            assert 0.0 <= values[name] <= 1.0, (system, name)
        assert values["hr@10"] <= values["hr@50"] <= values["hr@200"]
    # Retrieving 100 candidates, the two stages can only reorder them: they agree at cut-off 100 and beyond.
    assert evaluation["two_stage"]["hr@200"] == evaluation["retrieval"]["hr@200"]
    retrieval = metrics["training"]["retrieval"]
    assert retrieval["loss"][-1] < retrieval["loss"][0], "retrieval training must reduce its loss"
    # Validation runs every few epochs and always after the last before the refit: of two epochs, the
    # first is validated and the second refits on the ranker's targets (which validation would read).
    assert retrieval["val_epochs"] == [1] and len(retrieval["val_hr@10"]) == 1 and len(retrieval["loss"]) == 2
    # The config leaves the rules per item to the catalog's size; the metrics say what the run kept.
    from tfrs_pipeline.models.ranking import default_rules_per_item

    assert metrics["ranking"]["rules_per_item"] == default_rules_per_item(len(catalog))


def test_retrieval_export_serves_unseen_items_in_a_fresh_process(small_export, shared_data_dir):
    export_dir, _ = small_export
    served = _run_in_fresh_process(f"""
        import json, tfrs_pipeline, tensorflow as tf
        from scann import scann_ops
        out = {{}}
        for name in ("retrieval", "retrieval_brute_force"):
            model = tf.saved_model.load("{export_dir}/" + name + "/1")
            result = model.signatures["serving_default"](user_id=tf.constant(["1", "2", "no-such-user"]))
            out[name] = {{"item_ids": result["item_ids"].numpy().astype(str).tolist(),
                          "scores": result["scores"].numpy().tolist()}}
        print(json.dumps(out))
    """)
    ratings = load_dataset(shared_data_dir / "ml-1m", max_users=2).interactions
    for name, result in served.items():
        item_ids, scores = np.array(result["item_ids"]), np.array(result["scores"])
        assert item_ids.shape == (3, 100) and scores.shape == (3, 100)
        assert (np.diff(scores, axis=1) <= 1e-6).all(), "best first"
        for row, user_id in enumerate(["1", "2"]):
            rated = ratings[ratings.user_id == user_id].sort_values("timestamp", kind="stable").item_id.to_numpy()
            already_known = set(rated[:-1])  # the held-out last rating is fair game
            assert not already_known & set(item_ids[row]), f"{name} recommended an item user {user_id} rated"
            assert len(set(item_ids[row])) == 100
        assert len(set(item_ids[2])) == 100  # an unknown user gets recommendations, not an error
    exact = np.array(served["retrieval_brute_force"]["item_ids"])
    approximate = np.array(served["retrieval"]["item_ids"])
    overlap = np.mean([len(set(a[:10]) & set(b[:10])) / 10 for a, b in zip(exact, approximate)])
    assert overlap >= 0.9


def test_query_features_signature_excludes_the_given_history(small_export):
    export_dir, _ = small_export
    served = _run_in_fresh_process(f"""
        import json, tfrs_pipeline, tensorflow as tf
        model = tf.saved_model.load("{export_dir}/retrieval_brute_force/1")
        result = model.signatures["query_features"](
            user_gender=tf.constant(["M", "F"]), bucketized_user_age=tf.constant(["25", "not-an-age"]),
            user_occupation_label=tf.constant(["programmer", ""]), user_zip_code=tf.constant(["55455", ""]),
            history_item_ids=tf.constant([["1", "2", "260", "not-a-movie", ""], ["", "", "", "", ""]]))
        print(json.dumps(result["item_ids"].numpy().astype(str).tolist()))
    """)
    assert not {"1", "2", "260", "not-a-movie"} & set(served[0])
    assert len(served[1]) == 100  # no history at all: still a full list


def test_exports_reproduce_the_evaluated_models(small_export, shared_data_dir, tmp_path):
    """The exports precompute each user's query and ranking context; served lists must be the evaluated ones.

    Served by user id (precomputed) and by fresh features and history (both towers run per request,
    as for a user the snapshot does not hold), the retrieval lists and the retrieve-then-rank lists
    (two calls) must match what the run evaluated in memory. The one-call recommender searches the
    ScaNN index (approximate, and built anew by each run), so it must match the same two calls over
    the ScaNN retrieval export, which shares that index.
    """
    export_dir, _ = small_export
    data = load_dataset(shared_data_dir / "ml-1m", max_users=150)
    kept, _ = leave_last_out(user_sequences(data.interactions))
    users = FeatureRows.from_table(data.users, "user_id", data.schema.features.user_features).lookup(kept.user_ids)
    features = {"user_id": list(kept.user_ids), **{name: values.tolist() for name, values in users.items()},
                "history_item_ids": [[*items, *[""] * (max(kept.lengths()) - len(items))] for items in kept.item_ids]}
    (tmp_path / "features.json").write_text(json.dumps(features))
    served = _run_in_fresh_process(f"""
        import json, numpy as np, tfrs_pipeline, tensorflow as tf
        with open("{tmp_path / 'features.json'}") as file:
            features = {{name: tf.constant(values) for name, values in json.load(file).items()}}
        user_ids = features.pop("user_id")
        retrieval = tf.saved_model.load("{export_dir}/retrieval_brute_force/1").signatures
        ranking = tf.saved_model.load("{export_dir}/ranking/1").signatures
        candidates = retrieval["serving_default"](user_id=user_ids)["item_ids"]
        live = retrieval["query_features"](**features)["item_ids"]
        by_id = ranking["serving_default"](user_id=user_ids, item_ids=candidates)["scores"].numpy()
        fresh = ranking["query_features"](**features, item_ids=live)["scores"].numpy()
        from scann import scann_ops  # the recommender and the retrieval export search the ScaNN index
        recommender = tf.saved_model.load("{export_dir}/recommender/1").signatures
        one_call = recommender["serving_default"](user_id=user_ids)["item_ids"].numpy().astype(str)
        one_call_live = recommender["query_features"](**features)["item_ids"].numpy().astype(str)
        scann = tf.saved_model.load("{export_dir}/retrieval/1").signatures
        scann_candidates = scann["serving_default"](user_id=user_ids)["item_ids"]
        scann_live = scann["query_features"](**features)["item_ids"]
        scann_by_id = ranking["serving_default"](user_id=user_ids, item_ids=scann_candidates)["scores"].numpy()
        scann_fresh = ranking["query_features"](**features, item_ids=scann_live)["scores"].numpy()
        candidates, live = candidates.numpy().astype(str), live.numpy().astype(str)
        scann_candidates, scann_live = scann_candidates.numpy().astype(str), scann_live.numpy().astype(str)
        best_first = lambda lists, scores: np.take_along_axis(lists, np.argsort(-scores, axis=1, kind="stable"), 1)
        print(json.dumps({{"retrieval": candidates[:, :10].tolist(), "live": live[:, :10].tolist(),
                           "two_stage": best_first(candidates, by_id)[:, :10].tolist(),
                           "live_two_stage": best_first(live, fresh)[:, :10].tolist(),
                           "recommender": one_call[:, :10].tolist(),
                           "live_recommender": one_call_live[:, :10].tolist(),
                           "scann_two_stage": best_first(scann_candidates, scann_by_id)[:, :10].tolist(),
                           "scann_live_two_stage": best_first(scann_live, scann_fresh)[:, :10].tolist()}}))
    """)
    details = np.load(export_dir / "runs" / "1" / "evaluation_details.npz")
    item_ids = np.array(["", *data.items.item_id])  # catalog indices follow the items table
    retrieval, two_stage = item_ids[details["retrieval_top10"]], item_ids[details["two_stage_top10"]]
    evaluated = {"retrieval": retrieval, "live": retrieval, "two_stage": two_stage, "live_two_stage": two_stage,
                 "recommender": np.array(served.pop("scann_two_stage")),
                 "live_recommender": np.array(served.pop("scann_live_two_stage"))}
    for name, lists in served.items():
        # Float rounding may swap two near-equal neighbours; anything more is a different model.
        assert np.mean(np.array(lists) == evaluated[name]) >= 0.99, name


def test_ranking_export_scores_the_candidates_it_is_given(small_export):
    export_dir, _ = small_export
    scores = _run_in_fresh_process(f"""
        import json, tfrs_pipeline, tensorflow as tf
        model = tf.saved_model.load("{export_dir}/ranking/1")
        result = model.signatures["serving_default"](
            user_id=tf.constant(["1", "3"]), item_ids=tf.constant([["1", "2", "3"], ["3", "2", "1"]]))
        print(json.dumps(result["scores"].numpy().tolist()))
    """)
    scores = np.array(scores)
    assert scores.shape == (2, 3) and np.isfinite(scores).all()
    assert not np.allclose(scores[0], scores[0, 0]), "a ranker must tell candidates apart"


def test_the_users_rated_items_live_in_the_checkpoint_not_in_the_graphs(small_export, shared_data_dir):
    """Every rated item id grows with the interactions: as a graph constant it was copied while a version
    loaded and optimized (seconds and hundreds of MB at MovieLens-1M) and would meet the 2 GB graph limit."""
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import saved_model_pb2

    export_dir, metrics = small_export
    data = load_dataset(str(shared_data_dir / "ml-1m"), max_users=150)
    rated_items = len(data.interactions) - metrics["evaluation"]["users"]  # the snapshot holds all but the test items
    for name in MODELS:
        saved_model = saved_model_pb2.SavedModel.FromString((export_dir / name / "1" / "saved_model.pb").read_bytes())
        graph = saved_model.meta_graphs[0].graph_def
        nodes = [*graph.node, *(node for function in graph.library.function for node in function.node_def)]
        largest = max(int(np.prod([dim.size for dim in node.attr["value"].tensor.tensor_shape.dim]))
                      for node in nodes if node.op == "Const" and node.attr["dtype"].type == types_pb2.DT_STRING)
        assert largest < rated_items, f"{name}: a string constant of {largest} values ({rated_items} rated items)"


def test_bad_data_dir_gives_a_clear_error_and_no_export(tmp_path):
    (tmp_path / "ratings.dat").write_text("1,2,3,4\n")
    (tmp_path / "movies.dat").write_text("1::Toy Story (1995)::Animation\n")
    (tmp_path / "users.dat").write_text("1::F::1::10::48067\n")
    result = subprocess.run(
        [sys.executable, "-m", "tfrs_pipeline.train", f"--data_dir={tmp_path}", f"--export_dir={tmp_path / 'out'}"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "ratings.dat:1" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_rules_counted_a_range_of_sources_at_a_time_are_the_rules_counted_at_once():
    """Bounded memory at tens of millions of clicks must not change a single weight."""
    from tfrs_pipeline.models.cooccurrence import SequentialRules, strongest_rules

    rng = np.random.default_rng(0)
    sessions = [rng.zipf(1.3, size=rng.integers(1, 40)) % 300 + 1 for _ in range(2_000)]
    at_once = SequentialRules(sessions, num_items=300).strongest_rules(per_item=20)
    clicks = sum(len(session) for session in sessions)
    in_passes = strongest_rules(sessions, num_items=300, per_item=20, max_pairs=clicks)  # about 10 passes
    for table, expected in zip(in_passes, at_once):
        assert table.dtype == expected.dtype and np.array_equal(table, expected)
    assert np.count_nonzero(at_once[1]) > 1_000


def test_the_default_rules_per_item_keep_a_large_catalogs_tables_at_a_small_ones_size():
    """1,000 rules per item where the catalog is MovieLens-sized; fewer as it grows, never none."""
    from tfrs_pipeline.models.ranking import MAX_RULES_PER_ITEM, RULES_PER_TABLE, default_rules_per_item

    assert default_rules_per_item(3_883) == MAX_RULES_PER_ITEM
    sizes = (10_000, 100_000, 1_000_000)
    assert all((items + 1) * default_rules_per_item(items) <= RULES_PER_TABLE for items in sizes)
    assert [default_rules_per_item(items) for items in sizes] == sorted(
        (default_rules_per_item(items) for items in sizes), reverse=True)
    assert default_rules_per_item(100_000_000) == 1


@pytest.mark.parametrize("direct_index_max_bytes", [0, 2**20], ids=["binary_search", "direct_index"])
def test_ranker_rules_are_the_sequential_rules_of_each_recent_item(direct_index_max_bytes):
    """The ranker's rule features hold, for each recent item, the weight of its rule to the candidate."""
    import tensorflow as tf

    from tfrs_pipeline.models.cooccurrence import SequentialRules
    from tfrs_pipeline.models.ranking import ItemRules

    def item_rules(tables, recent_items):
        found = ItemRules(tables, recent_items, direct_index_max_bytes=direct_index_max_bytes)
        assert found.direct == (direct_index_max_bytes > 0)
        return found

    sessions = [np.array([1, 2, 3]), np.array([1, 3, 2, 4]), np.array([2, 3])]
    rules = SequentialRules(sessions, num_items=4, max_gap=2)
    recent = np.array([[1, 2], [0, 3]])  # the second user has one item; 0 is padding
    candidates = np.array([[2, 3, 4], [2, 4, 1]])
    features = item_rules([rules.strongest_rules(per_item=4)], recent_items=2)(
        tf.constant(recent, tf.int64), tf.constant(candidates, tf.int64)).numpy()
    for row in range(2):
        for slot, item in enumerate(recent[row]):
            expected = rules.scores(np.array([item]))[0, candidates[row]] if item else np.zeros(3)
            expected = np.where(expected > 1e-2, expected, 0.0)  # no rule: only the popularity tie-break (< 1e-3)
            np.testing.assert_allclose(features[row, :, slot], np.log1p(expected), atol=1e-3)
    strongest = item_rules([rules.strongest_rules(per_item=1)], recent_items=1)
    kept = strongest(tf.constant([[3]], tf.int64), tf.constant([[2, 4]], tf.int64))
    assert np.count_nonzero(kept.numpy()) == 1  # only item 3's strongest rule is kept
    no_rules = item_rules([(np.zeros((5, 2), np.int64), np.zeros((5, 2), np.float32))], recent_items=2)
    assert not np.any(no_rules(tf.constant(recent, tf.int64), tf.constant(candidates, tf.int64)).numpy())


def test_the_direct_index_and_the_binary_search_find_the_same_rules():
    """A small catalog's pairs are found by a direct index, a large one's by binary search: the same
    features either way, for pairs with a rule in one table, in both, or in none."""
    import tensorflow as tf

    from tfrs_pipeline.models.ranking import ItemRules

    rng = np.random.default_rng(7)
    num_items, per_item = 60, 25
    tables = []
    for _ in range(2):
        targets = np.stack([rng.choice(np.arange(1, num_items + 1), per_item, replace=False)
                            for _ in range(num_items + 1)])
        weights = rng.exponential(size=targets.shape).astype(np.float32)
        weights[rng.random(targets.shape) < 0.2] = 0.0  # padding within a row: no rule
        targets[0], weights[0] = 0, 0.0  # the padding item has none
        tables.append((targets, weights))
    recent = tf.constant(rng.integers(0, num_items + 1, (8, 5)), tf.int64)
    candidates = tf.constant(rng.integers(1, num_items + 1, (8, 40)), tf.int64)
    searched, direct = (ItemRules(tables, 5, direct_index_max_bytes=limit) for limit in (0, 2**20))
    assert direct.direct and not searched.direct
    features = direct(recent, candidates).numpy()
    assert np.count_nonzero(features) > features.size // 10  # enough pairs with rules to compare
    np.testing.assert_array_equal(features, searched(recent, candidates).numpy())


def test_history_similarities_are_the_largest_and_mean_dot_products_with_the_real_history_items():
    """Padding (index 0) is no history item; a user without any gets 0 for both features."""
    import tensorflow as tf

    from tfrs_pipeline.models.ranking import history_similarities

    rng = np.random.default_rng(3)
    catalog = rng.normal(size=(6, 4)).astype(np.float32)  # row 0: the padding item's (any) embedding
    history = np.array([[0, 2, 5], [0, 0, 0], [1, 1, 3]])
    candidates = np.array([[1, 2], [3, 4], [5, 2]])
    features = history_similarities(tf.gather(catalog, candidates), tf.constant(history),
                                    tf.constant(catalog)).numpy()
    assert features.shape == (3, 2, 2)
    for row in (0, 2):
        items = catalog[history[row][history[row] > 0]]
        dots = catalog[candidates[row]] @ items.T  # [candidates, real items]
        np.testing.assert_allclose(features[row, :, 0], dots.max(axis=1), rtol=1e-5)
        np.testing.assert_allclose(features[row, :, 1], dots.mean(axis=1), rtol=1e-5)
    np.testing.assert_array_equal(features[1], 0.0)
    assert np.isclose(features[0, 1, 0], catalog[2] @ catalog[2])  # the candidate is in the history


@pytest.mark.parametrize("exponent", [1.0, 0.5])
def test_the_popularity_penalty_moves_the_answers_and_never_the_training_loss(exponent):
    """The penalty is the answered score's last term, per unit of normalized log-popularity raised to the
    exponent; the loss training minimizes is the same with any penalty, so it can be chosen after training."""
    import tensorflow as tf

    from tfrs_pipeline.models.item_tower import ItemTower
    from tfrs_pipeline.models.query_tower import QueryTower
    from tfrs_pipeline.models.ranking import CANDIDATE_FEATURE, RankingModel

    item_ids = ["a", "b", "c", "d"]
    popularity = np.array([0, 100, 10, 1, 0])  # [N + 1]: index 0 is the unknown item
    tower = QueryTower(ItemTower(item_ids, {}, (), dim=8), max_length=4, dim=8)
    ranker = RankingModel(tower, popularity, np.zeros((5, 0), np.float32), popularity_penalty_exponent=exponent)
    features = {"history_item_ids": tf.constant([["", "", "a", "b"], ["", "c", "d", "a"]]),
                CANDIDATE_FEATURE: tf.constant([["a", "b", "c"], ["d", "b", "c"]])}
    lists = {"context": ranker.contexts(features), CANDIDATE_FEATURE: features[CANDIDATE_FEATURE],
             "labels": tf.constant([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])}
    unpenalized, loss = ranker(features).numpy(), ranker.compute_loss(lists).numpy()
    ranker.popularity_penalty.assign(2.0)
    units = (np.log1p(popularity) / np.log1p(popularity.max())) ** exponent
    expected = unpenalized - 2.0 * units[[[1, 2, 3], [4, 2, 3]]]
    np.testing.assert_allclose(ranker(features).numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ranker.compute_loss(lists).numpy(), loss, rtol=1e-6)


def test_the_learning_rate_warms_up_linearly_then_decays_as_without_warm_up():
    """A warm-up rises from a tenth of the rate to the rate, then the cosine decay runs over the steps left."""
    from tfrs_pipeline.pipelines.common import learning_rate

    warmed, plain = learning_rate(4e-3, "cosine", 100, warmup_steps=10), learning_rate(4e-3, "cosine", 90)
    rates = [float(warmed(step)) for step in range(101)]
    np.testing.assert_allclose(rates[:11], np.linspace(4e-4, 4e-3, 11), rtol=1e-5)
    np.testing.assert_allclose(rates[10:], [float(plain(step)) for step in range(91)], rtol=1e-5)
    assert float(warmed(500)) == rates[-1] and np.isclose(rates[-1], 4e-3 / 20)  # decayed to its floor, a twentieth
    constant = learning_rate(4e-3, "none", 100, warmup_steps=10)
    assert float(constant(5)) < 4e-3 and np.allclose([float(constant(10)), float(constant(99))], 4e-3)
    assert learning_rate(4e-3, "none", 100) == 4e-3


def test_the_training_batches_come_untuned_and_whole(shared_data_dir):
    """Keras drops each epoch's iterator; an autotuned one can hold the run at the epoch boundary for
    as long as its tuning thread sleeps (tens of seconds), so the datasets ``fit`` reads are untuned,
    and still give every window once an epoch."""
    from tfrs_pipeline.data.sequence_examples import training_windows
    from tfrs_pipeline.pipelines.common import training_dataset

    train, _ = leave_last_out(user_sequences(load_dataset(shared_data_dir / "ml-1m", max_users=40).interactions))
    examples = training_windows(train.user_ids, train.item_ids, 50)
    dataset = training_dataset(examples, 8, seed=0)
    assert dataset.options().autotune.enabled is False
    for _ in range(2):  # a fresh iterator each epoch, as fit makes
        targets = np.concatenate([batch["target_item_ids"].numpy().ravel() for batch in dataset])
        assert sorted(targets[targets != b""]) == sorted(item.encode() for item in
                                                         examples["target_item_ids"][examples["target_item_ids"] != ""])


def test_the_ranker_learns_on_the_towers_before_the_refit_and_the_run_keeps_the_refit_ones():
    """Inside ``_weights_set`` the towers hold the values taken before the refit, even once the ranker
    freezes them (which reorders ``get_weights``); after it they hold the refit values again."""
    import tensorflow as tf

    from tfrs_pipeline.models.item_tower import ItemTower
    from tfrs_pipeline.models.query_tower import QueryTower
    from tfrs_pipeline.models.ranking import RankingModel
    from tfrs_pipeline.pipelines import two_stage

    tower = QueryTower(ItemTower(["a", "b", "c", "d"], {}, (), dim=8), max_length=4, dim=8)
    history = {"history_item_ids": tf.constant([["", "", "a", "b"], ["", "c", "d", "a"]])}

    def answers() -> np.ndarray:  # the queries and the catalog: what retrieval and the ranker read
        return np.concatenate([tower(history).numpy(), tower.item_tower.embed_catalog().numpy()])

    unrefit_answers = answers()
    unrefit = two_stage._variable_values(tower)
    for variable in tower.trainable_variables:  # what the refit epochs do: move every weight
        variable.assign_add(tf.random.normal(variable.shape, seed=0))
    refit_answers = answers()
    assert not np.allclose(refit_answers, unrefit_answers)
    with two_stage._weights_set(tower, unrefit):
        np.testing.assert_array_equal(answers(), unrefit_answers)
        RankingModel(tower, np.array([0, 4, 3, 2, 1]), np.zeros((5, 0), np.float32))  # freezes the towers
        assert not tower.trainable
    np.testing.assert_array_equal(answers(), refit_answers)
    with two_stage._weights_set(tower, None):  # no refit: the towers stay as they are
        np.testing.assert_array_equal(answers(), refit_answers)
