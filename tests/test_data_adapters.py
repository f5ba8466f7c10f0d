"""Every MovieLens release as the generic tables, found from the folder, and the round trip to own data.

The releases' files are written here in each release's exact format, with a few made-up rows
(never MovieLens content); the real ML-1M is read from the shared data folder.
"""
import zipfile

import numpy as np
import pandas as pd
import pytest

from tfrs_pipeline.contracts import CATEGORICAL, MULTI_CATEGORICAL, NUMERIC, TEXT, FeatureSchema, FeatureSpec
from tfrs_pipeline.data.dataset import load_dataset, write_interaction_folder
from tfrs_pipeline.data.errors import DataError
from tfrs_pipeline.data.interactions import read_interaction_folder
from tfrs_pipeline.data.movielens import (
    DATA_DIR_ENV,
    from_tfds_records,
    load_movielens,
    tfds_release,
    to_interaction_data,
)
from tfrs_pipeline.data.schema import LEAVE_LAST_OUT, DatasetSchema, SplitRule
from test_data_movielens import GOOD_FILES as ML1M_FILES
from test_data_movielens import tfds_numpy_records, tfds_rating_batches

MOVIELENS_ITEM_FEATURES = (FeatureSpec("movie_title", TEXT), FeatureSpec("movie_genres", MULTI_CATEGORICAL),
                           FeatureSpec("release_year", NUMERIC))
MOVIELENS_USER_FEATURES = tuple(FeatureSpec(name, CATEGORICAL) for name in (
    "user_gender", "bucketized_user_age", "user_occupation_label", "user_zip_code"))


def genre_flags(*names):
    genres = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
              "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War",
              "Western")
    return "|".join("1" if genre.removesuffix("'s") in names else "0" for genre in genres)


ML100K_FILES = {  # u.item and u.user are pipe-separated ISO-8859-1, u.data is tab-separated.
    "u.data": "1\t10\t4\t881250949\n2\t20\t5\t891717742\n1\t20\t3\t881250950\n",
    "u.item": (f"10|Made Up Caf\xe9 (1994)|01-Jan-1994||http://example.com/10|{genre_flags('Children', 'Comedy')}\n"
               f"20|Another Invention (1997)|01-Jan-1997||http://example.com/20|{genre_flags('unknown')}\n"
               f"30|Untitled|||http://example.com/30|{genre_flags()}\n"),
    "u.user": "1|27|M|engineer|02139\n2|17|F|student|T8H1N\n",
}
ML10M_FILES = {
    "ratings.dat": "5::10::4.5::1000\n3::20::0.5::1001\n5::20::3::1002\n",
    "movies.dat": "10::Some Film (2004)::IMAX|Drama\n20::Nothing Listed (2010)::(no genres listed)\n"
                  "30::Never Rated (1990)::Comedy\n",
    "tags.dat": "5::10::funny::1003\n",
}
CSV_FILES = {
    "ratings.csv": "userId,movieId,rating,timestamp\n7,1,4.0,1100000000\n7,2,3.5,1100000001\n12,1,5.0,1100000002\n",
    "movies.csv": 'movieId,title,genres\n1,"Film, The (2001)",Comedy|Romance\n2,Se\u00f1or Nobody (2019),'
                  "(no genres listed)\n3,No Year Here,Drama\n",
    "tags.csv": "userId,movieId,tag,timestamp\n7,1,classic,1100000003\n",
}


def write_release(folder, files, encoding="utf-8", **replacements):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in {**files, **replacements}.items():
        (folder / name).write_bytes(text.encode(encoding))
    return folder


def items_by_id(data):
    return data.items.set_index("item_id")


def test_ml100k(tmp_path):
    data = load_dataset(write_release(tmp_path, ML100K_FILES, "latin-1"))
    assert data.interactions.to_dict("list") == {
        "user_id": ["1", "2", "1"], "item_id": ["10", "20", "20"], "timestamp": [881250949, 891717742, 881250950],
        "rating": [4.0, 5.0, 3.0]}
    items = items_by_id(data)
    assert items.loc["10", "movie_title"] == "Made Up Café (1994)"
    assert items["movie_genres"].tolist() == [("Children", "Comedy"), ("Unknown",), ()]
    assert items.loc["20", "release_year"] == 1997 and np.isnan(items.loc["30", "release_year"])
    assert data.users.to_dict("list") == {  # ages in the ML-1M buckets, occupations as TFDS names them
        "user_id": ["1", "2"], "user_gender": ["M", "F"], "bucketized_user_age": ["25", "1"],
        "user_occupation_label": ["technician/engineer", "student"], "user_zip_code": ["02139", "T8H1N"]}
    assert data.schema == DatasetSchema(FeatureSchema(MOVIELENS_USER_FEATURES, MOVIELENS_ITEM_FEATURES),
                                        "movie_title", SplitRule(LEAVE_LAST_OUT))
    assert data.policy_counts["items_without_interactions"] == 1


def test_ml100k_files_and_tfds_records_give_the_same_tables(tmp_path):
    """TFDS's own 100K parser and encoders build the records `tfds.load("movielens/100k-ratings")` yields."""
    tfds = pytest.importorskip("tensorflow_datasets")
    from tensorflow_datasets.structured import movielens_parsing

    folder = write_release(tmp_path, ML100K_FILES, "latin-1")
    ratings = tfds_numpy_records(tfds.builder("movielens/100k-ratings").info.features,
                                 (example for _, example in movielens_parsing.parse_100k_ratings_data(str(folder))))
    movies = tfds_numpy_records(tfds.builder("movielens/100k-movies").info.features,
                                (example for _, example in movielens_parsing.parse_100k_movies_data(str(folder))))
    through_tfds = to_interaction_data(from_tfds_records(tfds_rating_batches(ratings), movies))
    from_files = load_dataset(folder)
    for table in ("interactions", "items", "users"):
        pd.testing.assert_frame_equal(getattr(through_tfds, table), getattr(from_files, table))
    assert through_tfds.schema == from_files.schema


def test_ml1m(tmp_path):
    data = load_dataset(write_release(tmp_path, ML1M_FILES, "latin-1"))
    assert data.interactions["item_id"].tolist() == ["10", "20", "20"]
    assert items_by_id(data)["movie_genres"].tolist() == [("Comedy", "Drama"), ("Children",)]
    assert data.users.to_dict("list") == {
        "user_id": ["7", "8"], "user_gender": ["F", "M"], "bucketized_user_age": ["25", "56"],
        "user_occupation_label": ["student", "other/not specified"], "user_zip_code": ["12345", "54321"]}


def test_ml10m_has_half_stars_and_no_users_file(tmp_path):
    data = load_dataset(write_release(tmp_path, ML10M_FILES))
    assert data.interactions["rating"].tolist() == [4.5, 0.5, 3.0]
    assert data.users.columns.tolist() == ["user_id"] and data.users["user_id"].tolist() == ["3", "5"]
    assert data.schema.features == FeatureSchema((), MOVIELENS_ITEM_FEATURES)
    assert items_by_id(data)["movie_genres"].tolist() == [("IMAX", "Drama"), ("(no genres listed)",), ("Comedy",)]
    with pytest.raises(DataError) as raised:
        load_dataset(write_release(tmp_path, ML10M_FILES, **{"ratings.dat": "5::10::4.25::1000\n"}))
    assert (raised.value.line, raised.value.field) == (1, "user_rating")
    assert raised.value.problem == "'4.25' is not a rating from 0.5 to 5 in steps of 0.5"


def test_csv_releases(tmp_path):
    data = load_dataset(write_release(tmp_path, CSV_FILES))
    assert data.interactions.to_dict("list") == {
        "user_id": ["7", "7", "12"], "item_id": ["1", "2", "1"],
        "timestamp": [1100000000, 1100000001, 1100000002], "rating": [4.0, 3.5, 5.0]}
    items = items_by_id(data)
    assert items["movie_title"].tolist() == ["Film, The (2001)", "Señor Nobody (2019)", "No Year Here"]
    assert items.loc["1", "movie_genres"] == ("Comedy", "Romance") and np.isnan(items.loc["3", "release_year"])
    assert data.users["user_id"].tolist() == ["7", "12"]  # numeric order
    assert data.schema.features == FeatureSchema((), MOVIELENS_ITEM_FEATURES)


@pytest.mark.parametrize("file_name, text, line, column, problem", [
    ("ratings.csv", "userId,movieId,rating,timestamp\n7,1,4.0,1\n7,2,6.0,2\n", 3, "rating",
     "'6.0' is not a rating from 0.5 to 5 in steps of 0.5"),
    ("ratings.csv", "userId,movieId,rating,timestamp\n7,9,4.0,1\n", 2, "movieId", "'9' is not an id in movies.csv"),
    ("ratings.csv", "userId,movieId,rating,timestamp\n7,1,4.0,1\n7,x,4.0,1\n", 3, "movieId", "'x' is not an integer"),
    ("ratings.csv", "user,movie,rating,timestamp\n7,1,4.0,1\n", 1, None,
     "expected the columns ['userId', 'movieId', 'rating', 'timestamp']"),
    ("movies.csv", "movieId,title,genres\n1,A (2001),Comedy\n2,B (2002),Cartoon\n", 3, "genres", "unknown genre"),
    ("movies.csv", "movieId,title,genres\n1,A (2001),Comedy\n1,B (2002),Drama\n", 3, "movieId", "already defined"),
    ("movies.csv", "movieId,title,genres\n1,A (2001),Comedy\n2,Caf\xe9 (2002),Drama\n", 3, None, "is not UTF-8"),
    ("u.user", "1|27|M|engineer|02139\n2|17|F|astronaut|T8H1N\n", 2, "user_occupation_text",
     "'astronaut' is not an ML-100K occupation"),
    ("u.item", "10|A (1994)|||url|" + "0|" * 18 + "2\n", 1, "Western", "'2' is not a genre flag 0 or 1"),
    ("u.data", "1\t10\t4\t881250949\n1\t10\t9\t881250950\n", 2, "user_rating", "'9' is not a rating from 1 to 5"),
    ("u.data", "1::10::4::881250949\n", 1, None, "expected 4 fields separated by '\\t', found 1"),
])
def test_malformed_release_files_name_file_line_and_column(tmp_path, file_name, text, line, column, problem):
    files = ML100K_FILES if file_name.startswith("u.") else CSV_FILES
    folder = write_release(tmp_path, files, "latin-1" if files is ML100K_FILES else "utf-8")
    (folder / file_name).write_bytes(text.encode("latin-1"))
    with pytest.raises(DataError) as raised:
        load_dataset(folder)
    assert (raised.value.path, raised.value.line, raised.value.field) == (str(folder / file_name), line, column)
    assert problem in raised.value.problem


# --- Finding the data -----------------------------------------------------------------------------

def test_release_in_a_subfolder_or_a_zip_gives_the_same_tables(tmp_path):
    expected = load_dataset(write_release(tmp_path / "parent" / "ml-100k", ML100K_FILES, "latin-1"))
    archive = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as writer:
        for name, text in ML100K_FILES.items():
            writer.writestr(f"ml-100k/{name}", text.encode("latin-1"))
    for source in (tmp_path / "parent", archive, str(archive)):
        data = load_dataset(source)
        for table in ("interactions", "items", "users"):
            pd.testing.assert_frame_equal(getattr(data, table), getattr(expected, table))


def test_what_cannot_be_read_says_what_was_expected(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="no data set found: expected own data .*interactions.csv.* or a MovieLens "
                                        "release .*ML-100K: u.data, u.item, u.user.*ratings.csv, movies.csv"):
        load_dataset(tmp_path)
    with pytest.raises(DataError, match="no such file or folder"):
        load_dataset(tmp_path / "nowhere")
    write_release(tmp_path / "a", CSV_FILES)
    write_release(tmp_path / "b", ML10M_FILES)
    with pytest.raises(DataError, match=r"holds several MovieLens releases \(ML-20M/25M/32M/latest in .*a, "
                                        r"ML-10M in .*b\): point at one of them"):
        load_dataset(tmp_path)
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    with pytest.raises(DataError, match=f"--data_dir=<folder>.*{DATA_DIR_ENV}"):
        load_dataset(None)
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "b"))
    assert load_dataset(None).interactions["rating"].tolist() == [4.5, 0.5, 3.0]


def test_own_data_is_found_before_any_release(tmp_path):
    folder = write_release(tmp_path, CSV_FILES, **{"interactions.csv": "user_id,item_id,timestamp\nu,i,1\n"})
    assert load_dataset(folder).interactions["user_id"].tolist() == ["u"]


@pytest.mark.parametrize("source, release", [
    ("tfds", "1m"), ("tfds:movielens/100k-ratings", "100k"), ("tfds:movielens/latest-small", "latest-small"),
    ("tfds:movielens/25m", "25m"), ("/data/tfds", None), ("tfds_folder", None),
])
def test_tfds_sources_name_a_release(source, release):
    assert tfds_release(source) == release


@pytest.mark.parametrize("source", ["tfds:movielens/2m", "tfds:imdb_reviews", "tfds:"])
def test_unknown_tfds_sources_list_the_releases(source):
    with pytest.raises(DataError, match=r"unknown TFDS source .* release of \('100k', '1m'"):
        tfds_release(source)


# --- The real ML-1M -------------------------------------------------------------------------------

def test_full_ml1m_through_the_adapter(shared_data_dir):
    data = load_dataset(shared_data_dir / "ml-1m")
    native = load_movielens(shared_data_dir / "ml-1m")
    assert (len(data.interactions), len(data.items), len(data.users)) == (1_000_209, 3_883, 6_040)
    renamed = native.ratings.rename(columns={"movie_id": "item_id", "user_rating": "rating"})
    pd.testing.assert_frame_equal(data.interactions, renamed[list(data.interactions)])
    assert data.policy_counts["items_without_interactions"] == 177
    toy_story = items_by_id(data).loc["1"]
    assert (toy_story["movie_title"], toy_story["movie_genres"], toy_story["release_year"]) == (
        "Toy Story (1995)", ("Animation", "Children", "Comedy"), 1995.0)
    assert data.users.iloc[0].tolist() == ["1", "F", "1", "student", "48067"]


def test_ml1m_round_trip_through_the_own_data_contract(shared_data_dir, tmp_path):
    """The first 150 users of ML-1M, written as own data and read back: the same tables, kinds, title and split."""
    native = load_dataset(shared_data_dir / "ml-1m", max_users=150)
    assert native.users["user_id"].tolist() == [str(user) for user in range(1, 151)]
    write_interaction_folder(native, tmp_path / "contract")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["contract"]  # nothing left beside it
    generic = load_dataset(tmp_path / "contract")
    for table in ("interactions", "items", "users"):
        pd.testing.assert_frame_equal(getattr(generic, table), getattr(native, table))
    assert generic.schema == native.schema


def test_write_refuses_a_full_folder_and_leaves_nothing_on_failure(tmp_path):
    data = read_interaction_folder(write_release(tmp_path / "own", {
        "interactions.csv": "user_id,item_id,timestamp\nu,i,1\n", "items.csv": "item_id,tags\ni,a|b\n"}))
    with pytest.raises(FileExistsError, match="is not empty"):
        write_interaction_folder(data, tmp_path / "own")
    data.items.at[0, "tags"] = ("a|b",)
    with pytest.raises(ValueError, match="a value holds '|'"):
        write_interaction_folder(data, tmp_path / "out")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["own"]
