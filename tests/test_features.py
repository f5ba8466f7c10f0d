"""Schema-driven features: the arrays the towers take, and the Keras preprocessing built from them."""
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tfrs_pipeline.contracts import CATEGORICAL, MULTI_CATEGORICAL, NUMERIC, TEXT, FeatureSpec
from tfrs_pipeline.features.arrays import FeatureRows, category_matrix, feature_arrays, input_spec
from tfrs_pipeline.features.encoders import FeatureEncoder
from tfrs_pipeline.models.item_tower import ItemTower

SPECS = (FeatureSpec("brand", CATEGORICAL), FeatureSpec("tags", MULTI_CATEGORICAL), FeatureSpec("price", NUMERIC),
         FeatureSpec("name", TEXT))
TABLE = pd.DataFrame({
    "item_id": ["a", "b", "c", "d"],
    "brand": ["acme", "acme", "globex", ""],
    "tags": [("red", "big"), ("red",), (), ("blue", "red", "small")],
    "price": [1.5, np.nan, 30.0, 7.0],
    "name": ["red big box", "red box", "blue thing", "small blue red box"],
})


def test_arrays_pad_sets_and_mark_missing_values():
    arrays = feature_arrays(TABLE, SPECS)
    assert arrays["tags"].shape == (4, 3) and arrays["tags"][2].tolist() == ["", "", ""]
    assert arrays["price"].dtype == np.float32 and np.isnan(arrays["price"][1])
    assert arrays["brand"].tolist() == ["acme", "acme", "globex", ""]
    assert [input_spec(spec).dtype for spec in SPECS] == [tf.string, tf.string, tf.float32, tf.string]
    assert input_spec(SPECS[1]).shape.as_list() == [None, None]


def test_feature_rows_give_unknown_ids_the_missing_row():
    rows = FeatureRows.from_table(TABLE, "item_id", SPECS)
    looked_up = rows.lookup(["c", "no-such-id"])
    assert looked_up["brand"].tolist() == ["globex", ""]
    assert np.isnan(looked_up["price"][1]) and looked_up["tags"][1].tolist() == ["", "", ""]


def test_encoder_treats_unseen_values_as_missing_and_sets_as_unordered():
    tf.keras.utils.set_random_seed(0)
    arrays = feature_arrays(TABLE, SPECS)
    encoder = FeatureEncoder(SPECS, arrays, dim=8)
    batch = {"brand": tf.constant(["acme", "never-seen", ""]),
             "tags": tf.constant([["red", "big", ""], ["big", "red", ""], ["", "", ""]]),
             "price": tf.constant([1.5, 1.5, np.nan]), "name": tf.constant(["red box", "red box", ""])}
    vectors = encoder(batch).numpy()
    assert vectors.shape == (3, 8) and np.isfinite(vectors).all()
    per_feature = encoder.preprocess(batch)
    assert per_feature["brand"].numpy()[1] == per_feature["brand"].numpy()[2]  # unseen and missing share a row
    assert per_feature["brand"].numpy()[0] != per_feature["brand"].numpy()[1]
    tags = encoder.encoders[1].embed(per_feature["tags"]).numpy()
    np.testing.assert_allclose(tags[0], tags[1], rtol=1e-6)  # a set: order does not matter
    np.testing.assert_array_equal(tags[2], 0.0)  # an empty set adds nothing
    prices = per_feature["price"].numpy()
    assert prices[2] == encoder.encoders[2].missing_bucket != prices[0]


def test_category_matrix_keeps_small_categorical_features_only():
    arrays = feature_arrays(TABLE, SPECS)
    categories = category_matrix(arrays, SPECS, len(TABLE))
    # brand: acme, globex; tags: big, blue, red, small (text and numbers are not categories)
    assert categories.shape == (4, 6)
    assert categories[3].tolist() == [0, 0, 0, 1, 1, 1]
    many = {"code": np.array([f"v{row}" for row in range(100)], dtype=object)}
    assert category_matrix(many, (FeatureSpec("code", CATEGORICAL),), 100).shape == (100, 0)
    assert category_matrix({}, (), 7).shape == (7, 0)  # an item table without features still has its rows


def test_item_tower_embeds_raw_features_as_it_embeds_its_catalog():
    tf.keras.utils.set_random_seed(0)
    arrays = feature_arrays(TABLE, SPECS)
    tower = ItemTower(list(TABLE.item_id), arrays, SPECS, dim=8)
    catalog = tower.embed_catalog().numpy()
    assert catalog.shape == (5, 8)
    raw = tower({"item_id": tf.constant(["c", "new-item"]), "brand": tf.constant(["globex", "globex"]),
                 "tags": tf.constant([[""], [""]]), "price": tf.constant([30.0, 30.0]),
                 "name": tf.constant(["blue thing", "blue thing"])}).numpy()
    np.testing.assert_allclose(raw[0], catalog[3], rtol=1e-5, atol=1e-6)
    # A new item is embedded from its features: not the unknown row, and not the known item it resembles.
    assert not np.allclose(raw[1], catalog[0]) and not np.allclose(raw[1], raw[0])


def test_item_tower_without_features_is_an_id_tower():
    tower = ItemTower(["a", "b"], {}, (), dim=4)
    assert tower.embed_catalog().shape == (3, 4)


@pytest.mark.parametrize("kind", [CATEGORICAL, MULTI_CATEGORICAL, NUMERIC, TEXT])
def test_a_feature_with_no_usable_values_still_builds(kind):
    empty = feature_arrays(pd.DataFrame({"x": [(), ()] if kind == MULTI_CATEGORICAL else [None, None]}),
                           (FeatureSpec("x", kind),))
    encoder = FeatureEncoder((FeatureSpec("x", kind),), empty, dim=4)
    assert encoder({"x": tf.constant(empty["x"].astype(str) if empty["x"].dtype == object else empty["x"])}
                   ).shape == (2, 4)


def test_items_without_interactions_share_the_unknown_id_row():
    tf.keras.utils.set_random_seed(0)
    twins = pd.DataFrame({"item_id": ["old", "new", "newer"], "brand": ["acme"] * 3})
    specs = (FeatureSpec("brand", CATEGORICAL),)
    arrays = feature_arrays(twins, specs)
    catalog = ItemTower(list(twins.item_id), arrays, specs, dim=8,
                        has_interactions=np.array([True, False, False])).embed_catalog().numpy()
    # Same features, no interactions: the same embedding, the unknown id's row plus their features.
    np.testing.assert_array_equal(catalog[2], catalog[3])
    assert not np.allclose(catalog[1], catalog[2])  # the item with interactions has an id row of its own
