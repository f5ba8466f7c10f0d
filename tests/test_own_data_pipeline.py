"""A user's own data through the whole two-stage pipeline: their column names, their features, their split.

Two data sets: a small made-up shop (renamed columns, ISO dates, numeric and text features, items
nobody bought yet, a time cut), and the MovieLens slice the other tests use, written to the own-data
contract at test time (never committed) so that the generic route can be compared with the adapter.
"""
import json
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from conftest import SMALL_RUN

from tfrs_pipeline.catalog import __main__ as catalog_command
from tfrs_pipeline.catalog import read_items_file
from tfrs_pipeline.config import TwoStageConfig
from tfrs_pipeline.contracts import DESCRIPTION_FILE, ExportDescription
from tfrs_pipeline.data.dataset import load_dataset, write_interaction_folder
from tfrs_pipeline.export.catalog_refresh import REFRESHED_MODELS
from tfrs_pipeline.export.serving_config import ModelEntry, build_config, write_config
from tfrs_pipeline.features.events import push_events, served_item_ids
from tfrs_pipeline.features.store import OnlineFeatureStore
from tfrs_pipeline.pipelines import two_stage
from tfrs_pipeline.serving.client import fresh_feature_inputs
from test_serving_server import RunningServer, retrieval_request

SHOP_RUN = dict(epochs=2, ranking_epochs=1, max_length=20, embedding_dim=16, batch_size=32, ranking_candidates=30,
                top_k=60, learning_rate_decay="none", num_blocks=1, verbose=0)
DEPARTMENTS = ("garden", "kitchen", "toys", "books")


def _write_shop(folder):
    """300 customers who mostly buy in one department, and 60 products of which 4 were never bought."""
    rng = np.random.default_rng(7)
    products = pd.DataFrame({
        "sku": [f"P{number:03d}" for number in range(60)],
        "label": [f"{DEPARTMENTS[number % 4]} thing number {number}" for number in range(60)],
        "department": [DEPARTMENTS[number % 4] for number in range(60)],
        "price": rng.uniform(1, 100, 60).round(2),
    })
    customers = pd.DataFrame({"customer": [f"c{number}" for number in range(300)],
                              "segment": rng.choice(["new", "loyal", "vip"], 300),
                              "age": rng.integers(18, 80, 300)})
    rows = []
    for number, customer in enumerate(customers.customer):
        favourite = number % 4
        for step in range(int(rng.integers(4, 12))):
            department = favourite if rng.random() < 0.8 else int(rng.integers(0, 4))
            product = department + 4 * int(rng.integers(0, 14))  # P056..P059 are never bought
            day = pd.Timestamp("2024-01-01") + pd.Timedelta(days=int(number % 90 + step * 3))
            rows.append((customer, f"P{product:03d}", day.strftime("%Y-%m-%d"), 1 + int(rng.integers(0, 5))))
    orders = pd.DataFrame(rows, columns=["customer", "sku", "ordered_on", "stars"])
    folder.mkdir()
    orders.to_csv(folder / "interactions.csv", index=False)
    products.to_csv(folder / "items.csv", index=False)
    customers.to_csv(folder / "users.csv", index=False)
    (folder / "dataset.yaml").write_text(textwrap.dedent("""\
        interactions:
          columns: {user_id: customer, item_id: sku, timestamp: ordered_on, rating: stars}
          filter: "stars >= 2"
        items:
          columns: {item_id: sku}
          title: label
          features: {price: numeric}
        users:
          columns: {user_id: customer}
        split: {kind: time_cut, test_start: "2024-03-15"}
        """))
    return orders


@pytest.fixture(scope="module")
def shop_export(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shop") / "data"
    orders = _write_shop(folder)
    export_dir = tmp_path_factory.mktemp("shop_export")
    # Orders span weeks: these towers read when each was placed (the fresh-feature path then takes the times).
    metrics = two_stage.run(TwoStageConfig(data_dir=str(folder), export_dir=str(export_dir), **SHOP_RUN,
                                           time_attention_bias=True))
    return export_dir, metrics, orders


def test_the_export_describes_the_users_own_columns(shop_export):
    export_dir, metrics, orders = shop_export
    description = ExportDescription.read(export_dir / "schema.json")
    assert {spec.name: spec.kind for spec in description.features.user_features} == {
        "segment": "categorical", "age": "numeric"}
    assert {spec.name: spec.kind for spec in description.features.item_features} == {
        "label": "text", "department": "categorical", "price": "numeric"}
    items = pd.read_csv(export_dir / "items.tsv", sep="\t", dtype=str)
    assert len(items) == 60 and set(items.title) >= {"garden thing number 56", "books thing number 59"}
    assert metrics["data"]["interactions_filtered_out"] == int((orders.stars < 2).sum())
    assert metrics["data"]["items_without_interactions"] == 4


def test_a_time_cut_is_evaluated_on_the_full_catalog(shop_export):
    _, metrics, orders = shop_export
    evaluation = metrics["evaluation"]
    kept = orders[orders.stars >= 2]
    before = set(kept[kept.ordered_on < "2024-03-15"].customer)
    after = set(kept[kept.ordered_on >= "2024-03-15"].customer)
    assert evaluation["users"] == len(before & after) and evaluation["catalog_items"] == 60
    # Customers stick to a department: the towers must beat popularity by a wide margin.
    assert evaluation["retrieval"]["hr@10"] > evaluation["popularity"]["hr@10"] + 0.1
    assert metrics["cold_start"]["new_items"]["cases"] == 0  # nobody bought the four new products


def test_fresh_features_signatures_take_the_users_column_names(shop_export):
    export_dir, _, _ = shop_export
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import json, tfrs_pipeline, tensorflow as tf
        retrieval = tf.saved_model.load("{export_dir}/retrieval_brute_force/1").signatures["query_features"]
        ranking = tf.saved_model.load("{export_dir}/ranking/1").signatures["query_features"]
        features = dict(segment=tf.constant(["vip", "someone new"]), age=tf.constant([30.0, float("nan")]),
                        history_item_ids=tf.constant([["P001", "P005", "P009"], ["", "", ""]]),
                        history_timestamps=tf.constant([[1706745600, 1707350400, 1707955200], [0, 0, 0]], tf.int64))
        retrieved = retrieval(**features)
        found = retrieved["item_ids"]
        ranked = ranking(**features, item_ids=found)["scores"]
        print(json.dumps({{"found": found.numpy().astype(str).tolist(), "scores": retrieved["scores"].numpy().tolist(),
                           "ranked": ranked.numpy().tolist(),
                           "inputs": sorted(retrieval.structured_input_signature[1])}}))
        """)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    served = json.loads(result.stdout.strip().splitlines()[-1])
    assert served["inputs"] == ["age", "history_item_ids", "history_timestamps", "segment"]
    # Asked for the whole catalog, a customer gets every item but the three they have: the list ends in
    # "" ids with -inf scores rather than failing or repeating items.
    found = [item_id for item_id in served["found"][0] if item_id]
    assert len(found) == 57 == len(set(found)) and not {"P001", "P005", "P009"} & set(found)
    assert served["found"][0][57:] == ["", "", ""] and np.isinf(served["scores"][0][57:]).all()
    # A new customer with no history is answered too, from the whole catalog, the products nobody
    # bought yet included: they are indexed, embedded from their own features (distinct scores).
    new_customer = dict(zip(served["found"][1], served["scores"][1]))
    assert len(new_customer) == 60 and np.isfinite(served["scores"][1]).all()
    assert np.isfinite(served["ranked"]).all() and len(set(served["ranked"][1])) > 50  # the ranker tells them apart
    never_bought = [new_customer[f"P0{number}"] for number in range(56, 60)]
    assert len(set(never_bought)) == 4


def test_interactions_alone_train_and_serve(tmp_path):
    """The smallest contract: one file, no item or user features (id-only towers, no categories to rank by)."""
    folder = tmp_path / "shop"
    orders = _write_shop(folder)
    for name in ("items.csv", "users.csv", "dataset.yaml"):
        (folder / name).unlink()
    orders.set_axis(["user_id", "item_id", "timestamp", "rating"], axis=1).to_csv(folder / "interactions.csv",
                                                                                   index=False)
    export_dir = tmp_path / "export"
    # Orders span weeks: these towers read when each was placed (the fresh-feature path then takes the times).
    metrics = two_stage.run(TwoStageConfig(data_dir=str(folder), export_dir=str(export_dir), **SHOP_RUN,
                                           time_attention_bias=True))
    assert metrics["evaluation"]["catalog_items"] == 56  # the products someone bought
    assert metrics["evaluation"]["two_stage"]["category_diversity"] == 0.0  # no categories to differ in
    description = ExportDescription.read(export_dir / "schema.json")
    assert description.features.user_features == () and description.features.item_features == ()
    for name in ("retrieval_brute_force", "ranking"):
        assert (export_dir / name / "1" / "saved_model.pb").is_file()


def test_movielens_through_the_own_data_contract_gives_the_adapters_figures(small_export, shared_data_dir, tmp_path):
    _, native = small_export
    folder = tmp_path / "own_data"
    write_interaction_folder(load_dataset(shared_data_dir / "ml-1m", max_users=SMALL_RUN["max_users"]), folder)
    config = {**SMALL_RUN, "max_users": None}  # the folder holds the slice already
    generic = two_stage.run(TwoStageConfig(data_dir=str(folder), export_dir=str(tmp_path / "export"), **config))
    for system in ("retrieval", "two_stage", "popularity"):
        for name in ("hr@10", "ndcg@10", "hr@50", "coverage"):
            # The same tables train the same model: the figures agree to float rounding.
            assert generic["evaluation"][system][name] == pytest.approx(native["evaluation"][system][name], abs=1e-6)
    assert generic["evaluation"]["catalog_items"] == native["evaluation"]["catalog_items"]


def test_a_new_item_is_retrieved_for_the_users_whose_taste_it_matches_without_retraining(shop_export, tmp_path):
    """``catalog refresh`` embeds a new garden product with the frozen item tower and publishes it as the
    next retrieval version; the running server picks it up and garden customers get it, others almost never."""
    export_dir = tmp_path / "export"
    shutil.copytree(shop_export[0], export_dir)
    config = write_config(build_config([ModelEntry(name, str(export_dir / name)) for name in REFRESHED_MODELS]),
                          export_dir / "refresh.config")
    running = RunningServer(config)
    garden = [f"c{number}" for number in range(0, 300, 4)]  # favourite department: number % 4 (0 is garden)
    others = [f"c{number}" for number in range(300) if number % 4]

    def top_10(user_ids) -> np.ndarray:
        response = running.predictions.Predict(retrieval_request(user_ids), timeout=60)
        return tf.make_ndarray(response.outputs["item_ids"]).astype(str)[:, :10]

    assert not (top_10(garden) == "P100").any()
    new_items = tmp_path / "new_items.csv"
    new_items.write_text("sku,label,department,price,colour\nP100,garden thing number 100,garden,35.5,green\n"
                         "P001,kitchen thing number 1,kitchen,10.0,red\n")
    assert catalog_command.main(["refresh", f"--export_dir={export_dir}", f"--items={new_items}"]) == 2  # no item_id
    new_items.write_text(new_items.read_text().replace("sku,", "item_id,", 1))
    assert catalog_command.main(["refresh", f"--export_dir={export_dir}", f"--items={new_items}"]) == 0
    assert sorted(path.name for path in (export_dir / "retrieval").iterdir()) == ["1", "2"]
    catalog, popularity = read_items_file(export_dir / "items.tsv")
    assert len(catalog) == 61 and catalog.titles[-1] == "garden thing number 100" and popularity[-1] == 0

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (served := top_10(garden) == "P100").any():
        time.sleep(0.5)
    share_of_garden, share_of_others = served.any(axis=1).mean(), (top_10(others) == "P100").any(axis=1).mean()
    running.close()
    # A third of garden customers get it in their top 10 (among 15 garden products), others almost never.
    assert share_of_garden > 0.2 and share_of_others < share_of_garden / 10, (share_of_garden, share_of_others)
    store = OnlineFeatureStore(export_dir / "feature_repo")  # events may now name the new item
    report = push_events(store, pd.DataFrame({"user_id": ["c0"], "item_id": ["P100"], "timestamp": [1_800_000_000]}),
                         served_item_ids(store))
    assert report.events == 1


def test_the_store_keeps_the_times_the_towers_read_and_answers_as_the_snapshot_does(shop_export):
    """Towers with a time bias: the store's history view holds each item's time beside it, a known
    customer's stored features, history and times sent to ``query_features`` get what ``serving_default``
    gives from the export's snapshot, and pushed events append their times."""
    export_dir, _, _ = shop_export
    store = OnlineFeatureStore(export_dir / "feature_repo")
    assert store.description.history_timestamps
    customers = [f"c{number}" for number in range(1, 40)]
    retrieval = tf.saved_model.load(str(export_dir / "retrieval_brute_force" / "1")).signatures
    by_id = retrieval["serving_default"](user_id=tf.constant(customers))
    for row, user in enumerate(store.users(customers)):
        assert len(user.history_timestamps) == len(user.history_item_ids) > 0
        assert user.history_timestamps == sorted(user.history_timestamps)
        inputs = fresh_feature_inputs(store.description, user.features, user.history_item_ids,
                                      user.history_timestamps)
        fresh = retrieval["query_features"](**{name: tf.constant(values) for name, values in inputs.items()})
        assert fresh["item_ids"].numpy()[0].tolist() == by_id["item_ids"].numpy()[row].tolist(), user.user_id
        np.testing.assert_allclose(fresh["scores"].numpy()[0], by_id["scores"].numpy()[row], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="history_timestamps"):
        fresh_feature_inputs(store.description, {}, ["P001", "P002"], [1_700_000_000])  # a time per item
    user = store.users(["c1"])[0]
    later = user.history_timestamps[-1] + 86_400
    push_events(store, pd.DataFrame({"user_id": ["c1", "c1"], "item_id": ["P004", "P008"],
                                     "timestamp": [later, later + 60]}), served_item_ids(store))
    updated = store.users(["c1"])[0]
    assert updated.history_item_ids == [*user.history_item_ids, "P004", "P008"]
    assert updated.history_timestamps == [*user.history_timestamps, later, later + 60]


def test_a_query_side_exported_with_rated_ids_serves_what_one_with_rated_positions_does(shop_export):
    """Exports written before the user snapshot held catalog positions expose ``rated_items`` (ids, "" padded)
    instead; a catalog refresh of one pairs that query side with a new search, which looks the ids up."""
    from tfrs_pipeline import index
    from tfrs_pipeline.export import savedmodels

    export_dir = shop_export[0]
    base = index.load_top_k(str(export_dir / "retrieval" / "1"))
    item_ids = base.search.item_ids.numpy().astype(str)
    embeddings = base.search.candidate_embeddings
    layer = index.build_top_k("brute_force", tf.constant(index.catalog_positions(len(item_ids))), embeddings, 10)
    search = savedmodels.CatalogSearch(layer, item_ids, embeddings, 10)

    class RatedIdsQuerySide(tf.Module):
        def __init__(self):
            super().__init__()
            self.for_users, self.known_users = base.queries.for_users, base.queries.known_users

        def rated_items(self, user_id: tf.Tensor) -> tf.Tensor:
            positions = base.queries.rated_positions(user_id)
            return search.ids_of(tf.where(positions == savedmodels.NO_POSITION, tf.zeros_like(positions), positions))

    description = ExportDescription.read(export_dir / DESCRIPTION_FILE)
    user_specs, timestamps = description.features.user_features, description.history_timestamps
    user_ids = tf.constant([f"c{number}" for number in range(300)] + ["nobody"])
    served = savedmodels.RetrievalExport(base.queries, search, user_specs, timestamps).serve(user_ids)
    served_from_ids = savedmodels.RetrievalExport(RatedIdsQuerySide(), search, user_specs, timestamps).serve(user_ids)
    for name in served:
        np.testing.assert_array_equal(served_from_ids[name].numpy(), served[name].numpy())
    rated = RatedIdsQuerySide().rated_items(user_ids).numpy().astype(str)
    answers = served["item_ids"].numpy().astype(str)
    assert (rated != "").sum() > 300 and not any(set(row) & (set(seen) - {""}) for row, seen in zip(answers, rated))
