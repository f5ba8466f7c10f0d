"""A user's own data folder: conventions, inferred kinds, dataset.yaml, and every policy and error.

Every file here is written by the test itself (made-up shops and users, never MovieLens rows).
"""
import json

import numpy as np
import pandas as pd
import pytest

from tfrs_pipeline.contracts import CATEGORICAL, MULTI_CATEGORICAL, NUMERIC, TEXT, FeatureSpec
from tfrs_pipeline.data.errors import DataError
from tfrs_pipeline.data.interactions import keep_first_users, read_interaction_folder
from tfrs_pipeline.data.schema import LEAVE_LAST_OUT, TIME_CUT, SplitRule, infer_feature_kind

INTERACTIONS = (
    "user_id,item_id,timestamp,rating,device\n"
    "u1,sku-1,2021-03-01T10:00:00Z,5,phone\n"
    "u2,sku-2,2021-03-01T11:30:00+01:00,3,web\n"
    "u1,sku-3,2021-03-02,4,web\n"
    "u3,sku-1,2021-03-03 08:00:00,2,phone\n"
)
ITEMS = (
    "item_id,title,categories,price,zip,brand\n"
    'sku-1,"Red wool scarf, hand knitted",winter|accessories,19.5,02139,Acme\n'
    "sku-2,Blue cotton shirt with buttons,shirts,25,10001,Acme\n"
    "sku-9,Green rain jacket for hiking,outdoor|jackets,,94110,Other\n"
)
USERS = "user_id,age,segment\nu1,34,gold\nu2,,silver\nu9,51,gold\n"


def write_folder(folder, **files):
    """Writes ``name=text`` files (``interactions_csv`` -> interactions.csv); None leaves a file out."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in {"interactions_csv": INTERACTIONS, "items_csv": ITEMS, "users_csv": USERS, **files}.items():
        if text is not None:
            stem, _, suffix = name.rpartition("_")
            (folder / f"{stem}.{suffix}").write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return folder


def test_conventions_give_typed_tables_inferred_kinds_and_counted_policies(tmp_path):
    data = read_interaction_folder(write_folder(tmp_path))

    interactions = data.interactions
    assert interactions.columns.tolist() == ["user_id", "item_id", "timestamp", "rating"]
    assert interactions["user_id"].tolist() == ["u1", "u2", "u1", "u3"]  # file order
    assert interactions["timestamp"].tolist() == [1614592800, 1614594600, 1614643200, 1614758400]  # UTC
    assert interactions["timestamp"].dtype == np.int64 and interactions["rating"].dtype == np.float32
    assert isinstance(interactions.index, pd.RangeIndex)

    assert data.schema.features.item_features == (
        FeatureSpec("title", TEXT), FeatureSpec("categories", MULTI_CATEGORICAL), FeatureSpec("price", NUMERIC),
        FeatureSpec("zip", CATEGORICAL), FeatureSpec("brand", CATEGORICAL))
    assert data.schema.features.user_features == (FeatureSpec("age", NUMERIC), FeatureSpec("segment", CATEGORICAL))
    assert data.schema.title_feature == "title"
    assert data.schema.split == SplitRule(LEAVE_LAST_OUT)

    items = data.items.set_index("item_id")
    assert items.index.tolist() == ["sku-1", "sku-2", "sku-9", "sku-3"]  # the file's, then the missing one
    assert items.loc["sku-1", "title"] == "Red wool scarf, hand knitted"
    assert items.loc["sku-1", "categories"] == ("winter", "accessories")
    assert items.loc["sku-2", "categories"] == ("shirts",)
    assert items.loc["sku-1", "zip"] == "02139"
    assert np.isnan(items.loc["sku-9", "price"]) and items["price"].dtype == np.float64
    assert (items.loc["sku-3", "title"], items.loc["sku-3", "categories"], items.loc["sku-3", "zip"]) == ("", (), "")
    assert np.isnan(items.loc["sku-3", "price"])
    users = data.users.set_index("user_id")
    assert users.index.tolist() == ["u1", "u2", "u9", "u3"]
    assert np.isnan(users.loc["u2", "age"]) and users.loc["u3", "segment"] == ""

    assert data.policy_counts == {
        "items_missing_from_items_file": 1,  # sku-3: kept, features missing
        "users_missing_from_users_file": 1,  # u3
        "interactions_filtered_out": 0,
        "items_without_interactions": 1,  # sku-9: the cold-start catalog, kept
        "users_without_interactions": 1,  # u9
    }


def test_interactions_alone_weight_as_rating_and_no_rating(tmp_path):
    weighted = write_folder(tmp_path / "weighted", interactions_csv="user_id,item_id,timestamp,weight\na,x,5,0.5\n",
                            items_csv=None, users_csv=None)
    data = read_interaction_folder(weighted)
    assert data.interactions["rating"].tolist() == [0.5]
    assert data.items.columns.tolist() == ["item_id"] and data.users["user_id"].tolist() == ["a"]
    assert data.schema.title_feature is None
    plain = write_folder(tmp_path / "plain", interactions_csv="user_id,item_id,timestamp\na,x,5.9\n",
                         items_csv=None, users_csv=None)
    data = read_interaction_folder(plain)
    assert data.interactions["rating"].tolist() == [1.0] and data.interactions["timestamp"].tolist() == [5]


def test_tsv_and_parquet_read_as_the_csv_does(tmp_path):
    expected = read_interaction_folder(write_folder(tmp_path / "csv"))
    tsv = tmp_path / "tsv"
    tsv.mkdir()
    for name in ("interactions", "items", "users"):
        pd.read_csv(tmp_path / "csv" / f"{name}.csv", dtype=str, keep_default_na=False).to_csv(
            tsv / f"{name}.tsv", sep="\t", index=False)
    parquet = tmp_path / "parquet"
    parquet.mkdir()
    pd.DataFrame({  # Native types: datetimes, numbers, lists.
        "user_id": ["u1", "u2", "u1", "u3"], "item_id": ["sku-1", "sku-2", "sku-3", "sku-1"],
        "timestamp": pd.to_datetime(expected.interactions["timestamp"], unit="s"), "rating": [5, 3, 4, 2],
    }).to_parquet(parquet / "interactions.parquet")
    pd.DataFrame({
        "item_id": ["sku-1", "sku-2", "sku-9"], "title": expected.items["title"][:3],
        "categories": [["winter", "accessories"], ["shirts"], ["outdoor", "jackets"]], "price": [19.5, 25, None],
        "zip": ["02139", "10001", "94110"], "brand": ["Acme", "Acme", "Other"],
    }).to_parquet(parquet / "items.parquet")
    pd.DataFrame({"user_id": ["u1", "u2", "u9"], "age": [34, None, 51], "segment": ["gold", "silver", "gold"]}
                 ).to_parquet(parquet / "users.parquet")
    for folder in (tsv, parquet):
        data = read_interaction_folder(folder)
        for table in ("interactions", "items", "users"):
            pd.testing.assert_frame_equal(getattr(data, table), getattr(expected, table))
        assert data.schema == expected.schema


@pytest.mark.parametrize("values, kind", [
    (["1", "2.5", "-3", "1e3", ""], NUMERIC),
    (pd.Series([3, 1, 2]), NUMERIC),
    (["02139", "10001"], CATEGORICAL),  # a leading zero: a code, not a number
    (["M", "F", "M"], CATEGORICAL),
    (["Comedy|Drama", "Comedy", "Horror|Sci-Fi"], MULTI_CATEGORICAL),
    ([["a", "b"], ["c"]], MULTI_CATEGORICAL),
    (["A quiet film about rain", "Loud story of two brothers", "Cats in space (1999)"], TEXT),
    (["Home and Garden Tools"] * 5 + ["Science Fiction and Fantasy"] * 5, CATEGORICAL),  # repeated labels
    (["", None, "  "], CATEGORICAL),
    (pd.Series([True, False]), CATEGORICAL),
])
def test_feature_kind_inference(values, kind):
    assert infer_feature_kind(values) == kind


# --- Errors: each names the file, the line (header = line 1) and the column ------------------------

@pytest.mark.parametrize("files, file_name, line, column, problem", [
    ({"interactions_csv": "user_id,item_id,timestamp\na,x,5\n ,y,6\n"}, "interactions.csv", 3, "user_id",
     "the id is empty"),
    ({"interactions_csv": "user_id,item_id,timestamp\na,x,5\nb,,6\n"}, "interactions.csv", 3, "item_id",
     "the id is empty"),
    ({"interactions_csv": "user_id,item_id,timestamp\na,x,2021-01-01\nb,y,yesterday\n"}, "interactions.csv", 3,
     "timestamp", "'yesterday' is not a time"),
    ({"interactions_csv": "user_id,item_id,timestamp\na,x,5\nb,y,2021-01-01\n"}, "interactions.csv", 3,
     "timestamp", "'2021-01-01' is not a time: the column holds Unix seconds or ISO 8601"),
    ({"interactions_csv": "user_id,item_id,timestamp,rating\na,x,5,4\nb,y,6,good\n"}, "interactions.csv", 3,
     "rating", "'good' is not a number"),
    ({"interactions_csv": "user_id,item_id,timestamp\na,x,5\nb,y,6,7,8\n"}, "interactions.csv", 3, None,
     "5 fields where the header has 3"),
    ({"interactions_csv": 'user_id,item_id,timestamp,note\na,x,5,"two\nlines"\n,y,6,z\n'}, "interactions.csv", 4,
     "user_id", "the id is empty"),  # a quoted value spans lines 2-3
    ({"interactions_csv": "user_id,item_id,timestamp\n\na,x,5\n\nb,y,\n"}, "interactions.csv", 5, "timestamp",
     "'' is not a time"),  # blank lines count
    ({"interactions_csv": "user_id,item_id,timestamp\na,x,5\nb,y,6\n".encode() + "c,caf\xe9,7\n".encode("latin-1")},
     "interactions.csv", 4, None, "is not UTF-8 text (byte 0xe9)"),
    ({"interactions_csv": "user_id,item_id,time\na,x,5\n"}, "interactions.csv", 1, None,
     "no column 'timestamp': the header has ['user_id', 'item_id', 'time']"),
    ({"interactions_csv": "user_id,item_id,timestamp,item_id\na,x,5,y\n"}, "interactions.csv", 1, "item_id",
     "appears twice in the header"),
    ({"interactions_csv": ""}, "interactions.csv", None, None, "file is empty"),
    ({"interactions_csv": "user_id,item_id,timestamp\n"}, "interactions.csv", None, None, "has a header but no rows"),
    ({"items_csv": "item_id,brand\nsku-1,Acme\nsku-2,Acme\nsku-1,Other\n"}, "items.csv", 4, "item_id",
     "'sku-1' is already on line 2"),
    ({"users_csv": "user_id,segment\nu1,gold\nu1,silver\n"}, "users.csv", 3, "user_id", "'u1' is already on line 2"),
    ({"users_csv": "segment\ngold\n"}, "users.csv", 1, None, "no column 'user_id'"),
    ({"users_csv": "user_id,item_ids\nu1,a\n"}, "users.csv", 1, "item_ids", "reserved"),
    ({"items_csv": ""}, "items.csv", None, None, "file is empty"),
])
def test_bad_input_names_file_line_and_column(tmp_path, files, file_name, line, column, problem):
    folder = write_folder(tmp_path, **files)
    with pytest.raises(DataError) as raised:
        read_interaction_folder(folder)
    error = raised.value
    assert (error.path, error.line, error.field) == (str(folder / file_name), line, column)
    assert problem in error.problem
    location = str(folder / file_name) + (f":{line}" if line else "")
    assert str(error).startswith(location + ": " + (f"field {column!r}: " if column else ""))


def test_missing_or_ambiguous_interactions_file(tmp_path):
    with pytest.raises(DataError, match="no interactions.csv, interactions.tsv or interactions.parquet here"):
        read_interaction_folder(tmp_path)
    write_folder(tmp_path, interactions_tsv=INTERACTIONS.replace(",", "\t"))
    with pytest.raises(DataError, match="holds interactions.csv and interactions.tsv: keep one"):
        read_interaction_folder(tmp_path)
    not_parquet = write_folder(tmp_path / "parquet", interactions_csv=None, interactions_parquet="user_id,item_id")
    with pytest.raises(DataError, match="interactions.parquet: is not a readable Parquet file"):
        read_interaction_folder(not_parquet)


# --- dataset.yaml / dataset.json ------------------------------------------------------------------

SHOP_EVENTS = (
    "customer,sku,ts,stars,event\n"
    "c1,p1,2002-12-30,5,purchase\n"
    "c1,p2,2002-12-31,2,view\n"
    "c2,p1,2003-01-02,4,purchase\n"
    "c2,p3,2003-01-03,3,purchase\n"
)
SHOP_PRODUCTS = (
    "sku,name,description,price,internal_code\n"
    "p1,Kettle,Boils water fast and quietly,30,0007\n"
    "p2,Toaster,Two slots,25,0008\n"
    "p3,Mug,Holds coffee,5,0009\n"
)
SHOP_CONFIG = """\
interactions:
  file: events.csv
  columns: {user_id: customer, item_id: sku, timestamp: ts, rating: stars}
  filter: ["rating >= 3", "event == purchase"]
items:
  file: products.csv
  columns: {item_id: sku}
  features: {price: categorical, description: text, internal_code: ignore}
  title: name
split:
  kind: time_cut
  test_start: 2003-01-01
"""


def test_yaml_renames_retypes_ignores_filters_titles_and_splits(tmp_path):
    folder = write_folder(tmp_path, interactions_csv=None, items_csv=None, users_csv=None, events_csv=SHOP_EVENTS,
                          products_csv=SHOP_PRODUCTS, dataset_yaml=SHOP_CONFIG)
    data = read_interaction_folder(folder)
    assert data.interactions["user_id"].tolist() == ["c1", "c2", "c2"]
    assert data.interactions["item_id"].tolist() == ["p1", "p1", "p3"]
    assert data.interactions["rating"].tolist() == [5.0, 4.0, 3.0]
    assert data.policy_counts["interactions_filtered_out"] == 1
    assert data.items.columns.tolist() == ["item_id", "name", "description", "price"]
    assert data.schema.features.item_features == (
        FeatureSpec("name", CATEGORICAL), FeatureSpec("description", TEXT), FeatureSpec("price", CATEGORICAL))
    assert data.items["price"].tolist() == ["30", "25", "5"]
    assert data.schema.title_feature == "name"
    assert data.schema.split == SplitRule(TIME_CUT, test_start=1041379200)  # 2003-01-01 UTC
    # A filter may name the column as the file does, before the renaming.
    by_file_name = write_folder(tmp_path / "again", interactions_csv=None, items_csv=None, users_csv=None,
                                events_csv=SHOP_EVENTS, products_csv=SHOP_PRODUCTS,
                                dataset_yaml=SHOP_CONFIG.replace("rating >= 3", "stars >= 3"))
    assert read_interaction_folder(by_file_name).interactions.equals(data.interactions)


def test_json_config_and_a_filter_on_time_and_a_share_split(tmp_path):
    config = {"interactions": {"file": "events.csv", "filter": "timestamp < 2003-01-01T00:00:00Z",
                               "columns": {"user_id": "customer", "item_id": "sku", "timestamp": "ts"}},
              "split": {"test_share": 0.25}}
    folder = write_folder(tmp_path, interactions_csv=None, items_csv=None, users_csv=None, events_csv=SHOP_EVENTS,
                          dataset_json=json.dumps(config))
    data = read_interaction_folder(folder)
    assert data.interactions["item_id"].tolist() == ["p1", "p2"]
    assert data.interactions["rating"].tolist() == [1.0, 1.0]  # "stars" is not named the rating here
    assert data.schema.split == SplitRule(TIME_CUT, test_share=0.25)


@pytest.mark.parametrize("config, key, problem", [
    ("interaction: {}\n", "interaction", "unknown key; the file takes interactions, items, users, split"),
    ("items: {colums: {item_id: sku}}\n", "items.colums", "unknown key; items takes file, columns, features, title"),
    ("interactions: {columns: {customer: user_id}}\n", "interactions.columns.customer", "unknown key"),
    ("items: {features: {price: number}}\n", "items.features.price", "'number' is not a feature kind"),
    ("items: {features: {colour: text}}\n", "items.features.colour", "no column 'colour'"),
    ("items: {columns: {item_id: sku}}\n", "items.columns.item_id", "no column 'sku'"),
    ("items: {title: brand_name}\n", "items.title", "'brand_name' is not an item feature"),
    ("items: {file: products.csv}\n", "items.file", "does not exist"),
    ("items: {file: products.xlsx}\n", "items.file", "expected a .csv, .tsv, .parquet file"),
    ("interactions: {filter: 'rating >>= 4'}\n", "interactions.filter", "is not COLUMN OP VALUE"),
    ("interactions: {filter: 'rating'}\n", "interactions.filter", "is not COLUMN OP VALUE"),
    ("interactions: {filter: 'device > phone'}\n", "interactions.filter", "> needs a number"),
    ("interactions: {filter: 'colour == red'}\n", "interactions.filter", "no column 'colour'"),
    ("interactions: {filter: 'rating > 5'}\n", "interactions.filter", "the filters keep none of the 4 rows"),
    ("interactions: {filter: 'timestamp > someday'}\n", "interactions.filter", "'someday' is not Unix seconds"),
    ("interactions: {filter: 7}\n", "interactions.filter", "expected a filter such as 'rating >= 4'"),
    ("split: {kind: random}\n", "split", "split kind must be one of"),
    ("split: {kind: leave_last_out, test_share: 0.2}\n", "split", "choose a time_cut split"),
    ("split: {test_share: 2}\n", "split", "test_share must be in (0, 1)"),
    ("split: {test_share: lots}\n", "split.test_share", "expected a number between 0 and 1"),
    ("split: {test_start: yesterday}\n", "split.test_start", "'yesterday' is not Unix seconds"),
    ("users: [age]\n", "users", "expected a mapping"),
])
def test_bad_configuration_names_file_and_key(tmp_path, config, key, problem):
    folder = write_folder(tmp_path, dataset_yaml=config)
    with pytest.raises(DataError) as raised:
        read_interaction_folder(folder)
    assert (raised.value.path, raised.value.field) == (str(folder / "dataset.yaml"), key)
    assert problem in raised.value.problem


def test_unreadable_or_doubled_configuration(tmp_path):
    write_folder(tmp_path, dataset_yaml="items:\n  features: {price: numeric\n")
    with pytest.raises(DataError, match=r"dataset.yaml:\d+: is not valid YAML") as raised:
        read_interaction_folder(tmp_path)
    assert raised.value.line is not None
    write_folder(tmp_path, dataset_yaml="", dataset_json="{}")
    with pytest.raises(DataError, match="holds both dataset.yaml and dataset.json: keep one"):
        read_interaction_folder(tmp_path)
    (tmp_path / "dataset.yaml").unlink()
    write_folder(tmp_path, dataset_json='{"items": {\n"title": }')
    with pytest.raises(DataError, match=r"dataset.json:2: is not valid JSON"):
        read_interaction_folder(tmp_path)


def test_features_configured_for_a_missing_file(tmp_path):
    folder = write_folder(tmp_path, users_csv=None, dataset_yaml="users: {features: {age: numeric}}\n")
    with pytest.raises(DataError, match=r"dataset.yaml: field 'users': there is no users file in .* to take "
                                        "features from"):
        read_interaction_folder(folder)


def test_declared_numeric_column_with_text_names_the_line(tmp_path):
    folder = write_folder(tmp_path, dataset_yaml="items: {features: {brand: numeric}}\n")
    with pytest.raises(DataError) as raised:
        read_interaction_folder(folder)
    assert (raised.value.path, raised.value.line, raised.value.field) == (str(folder / "items.csv"), 2, "brand")
    assert raised.value.problem == "'Acme' is not a number"


def test_keep_first_users_orders_numeric_ids_as_numbers(tmp_path):
    rows = "".join(f"{user},x,{user}\n" for user in (10, 9, 100, 2))
    folder = write_folder(tmp_path, interactions_csv="user_id,item_id,timestamp\n" + rows, items_csv=None,
                          users_csv="user_id,segment\n2,a\n9,b\n10,c\n100,d\n")
    sliced = keep_first_users(read_interaction_folder(folder), 2)
    assert sliced.interactions["user_id"].tolist() == ["9", "2"]  # file order kept
    assert sliced.users["user_id"].tolist() == ["2", "9"]
    assert sliced.items["item_id"].tolist() == ["x"]
    assert sliced.policy_counts["users_without_interactions"] == 0
