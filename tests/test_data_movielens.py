"""MovieLens 1M loading: the real files in every accepted form, TFDS records, and bad input."""
import itertools
import pickle
import zipfile

import numpy as np
import pandas as pd
import pytest

from tfrs_pipeline.data.errors import DataError
from tfrs_pipeline.data.movielens import (
    DATA_DIR_ENV,
    GENRE_NAMES,
    ML1M_FILES,
    OCCUPATION_NAMES,
    TFDS_RATING_FEATURES,
    MovieLens,
    from_tfds_records,
    load_movielens,
)


@pytest.fixture(scope="module")
def movielens(shared_data_dir) -> MovieLens:
    return load_movielens(shared_data_dir / "ml-1m")


def assert_same_tables(actual: MovieLens, expected: MovieLens) -> None:
    for table in ("ratings", "movies", "users"):
        pd.testing.assert_frame_equal(getattr(actual, table), getattr(expected, table))


def test_full_ml1m_has_the_published_size_and_tfds_dtypes(movielens):
    assert len(movielens.ratings) == 1_000_209
    assert movielens.ratings["user_id"].nunique() == 6_040
    assert movielens.ratings["movie_id"].nunique() == 3_706
    assert len(movielens.users) == 6_040 and len(movielens.movies) == 3_883
    assert isinstance(movielens.ratings.index, pd.RangeIndex)
    assert movielens.ratings["user_rating"].dtype == np.float32
    assert movielens.ratings["timestamp"].dtype == np.int64
    assert movielens.users["user_gender"].dtype == bool
    assert movielens.users["bucketized_user_age"].dtype == np.float32
    assert movielens.users["user_occupation_label"].dtype == np.int64
    assert set(movielens.ratings["user_rating"].unique()) == {1.0, 2.0, 3.0, 4.0, 5.0}


def test_rows_are_the_file_lines_in_file_order(movielens, shared_data_dir):
    lines = (shared_data_dir / "ml-1m" / "ratings.dat").read_text().splitlines()
    for line_number in range(0, len(lines), 9_973):
        user_id, movie_id, rating, timestamp = lines[line_number].split("::")
        row = movielens.ratings.iloc[line_number]
        assert (row["user_id"], row["movie_id"], row["user_rating"], row["timestamp"]) == (
            user_id, movie_id, float(rating), int(timestamp))


def test_features_use_tfds_label_ids(movielens):
    toy_story = movielens.movies.set_index("movie_id").loc["1"]
    assert toy_story["movie_title"] == "Toy Story (1995)"
    # movies.dat says "Animation|Children's|Comedy"; TFDS calls the second genre "Children".
    assert [GENRE_NAMES[label_id] for label_id in toy_story["movie_genres"]] == ["Animation", "Children", "Comedy"]
    first_user = movielens.users.iloc[0]  # users.dat line 1: "1::F::1::10::48067" (10 = K-12 student)
    assert first_user["user_id"] == "1" and not first_user["user_gender"]
    assert first_user["bucketized_user_age"] == 1.0 and first_user["user_zip_code"] == "48067"
    assert OCCUPATION_NAMES[first_user["user_occupation_label"]] == "student"
    assert movielens.movies["movie_title"].str.contains("é").any()  # ISO-8859-1 decoded


def test_parent_folder_zip_and_environment_give_the_same_tables(shared_data_dir, tmp_path, monkeypatch):
    expected = load_movielens(shared_data_dir / "ml-1m", max_users=50)
    archive = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as writer:
        for name in ML1M_FILES:
            writer.write(shared_data_dir / "ml-1m" / name, f"ml-1m/{name}")
    assert_same_tables(load_movielens(archive, max_users=50), expected)
    assert_same_tables(load_movielens(str(shared_data_dir), max_users=50), expected)
    monkeypatch.setenv(DATA_DIR_ENV, str(archive))
    assert_same_tables(load_movielens(max_users=50), expected)


def test_no_source_tells_the_user_what_to_pass(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    with pytest.raises(DataError, match=f"--data_dir.*{DATA_DIR_ENV}"):
        load_movielens()


def test_max_users_keeps_the_smallest_ids_and_file_order(movielens, shared_data_dir):
    sliced = load_movielens(shared_data_dir / "ml-1m", max_users=300)
    assert sliced.users["user_id"].astype(int).tolist() == list(range(1, 301))
    expected_ratings = movielens.ratings[movielens.ratings["user_id"].astype(int) <= 300].reset_index(drop=True)
    pd.testing.assert_frame_equal(sliced.ratings, expected_ratings)
    pd.testing.assert_frame_equal(sliced.movies, movielens.movies)


def tfds_numpy_records(features, examples):
    """What `tfds.as_numpy` yields for ``examples`` encoded by TFDS's own ``features``: strings as UTF-8 bytes."""
    for example in examples:
        record = {}
        for name, value in features.encode_example(example).items():
            value = np.asarray(value, dtype=np.int64 if name == "movie_genres" else None)
            record[name] = value.item().encode("utf-8") if value.dtype == object else value
        yield record


def tfds_rating_batches(records, batch_size=1_000):
    """Rating records batched as `tfds.as_numpy` batches them, with only the features the loader reads."""
    records = list(records)
    names = [name for name in TFDS_RATING_FEATURES if name in records[0]]
    return [{name: np.array([record[name] for record in batch], dtype=object if isinstance(batch[0][name], bytes)
                            else None) for name in names}
            for batch in (records[start:start + batch_size] for start in range(0, len(records), batch_size))]


def test_tfds_records_convert_to_the_same_tables(movielens, shared_data_dir):
    """TFDS's own 1M parser and feature encoders build the records that `tfds.load` would yield."""
    tfds = pytest.importorskip("tensorflow_datasets")
    from tensorflow_datasets.structured import movielens_parsing

    ml1m_folder = str(shared_data_dir / "ml-1m")
    rating_count = 3_000
    ratings = itertools.islice(movielens_parsing.parse_1m_ratings_data(ml1m_folder), rating_count)
    batches = tfds_rating_batches(tfds_numpy_records(tfds.builder("movielens/1m-ratings").info.features,
                                                     (example for _, example in ratings)))
    movie_records = tfds_numpy_records(tfds.builder("movielens/1m-movies").info.features,
                                       (example for _, example in movielens_parsing.parse_1m_movies_data(ml1m_folder)))

    converted = from_tfds_records(batches, movie_records)

    expected_ratings = movielens.ratings.iloc[:rating_count]
    pd.testing.assert_frame_equal(converted.ratings, expected_ratings)
    rated = movielens.users["user_id"].isin(expected_ratings["user_id"])
    expected_users = movielens.users[rated].reset_index(drop=True)
    pd.testing.assert_frame_equal(converted.users, expected_users)
    pd.testing.assert_frame_equal(converted.movies, movielens.movies)


# --- Bad input: small synthetic files (never MovieLens lines) ------------------------------------

GOOD_FILES = {
    "movies.dat": "10::A Made Up Film (2001)::Comedy|Drama\n20::Another One (1999)::Children's\n",
    "users.dat": "7::F::25::4::12345\n8::M::56::0::54321\n",
    "ratings.dat": "7::10::4::1000\n8::20::1::1001\n7::20::5::1002\n",
}


def write_data_dir(tmp_path, **replacements):
    for name, text in {**GOOD_FILES, **replacements}.items():
        if text is not None:
            (tmp_path / name).write_text(text, encoding="latin-1")
    return tmp_path


def test_synthetic_files_load(tmp_path):
    loaded = load_movielens(write_data_dir(tmp_path))
    assert loaded.ratings["user_id"].tolist() == ["7", "8", "7"]
    assert loaded.movies["movie_genres"].tolist() == [[GENRE_NAMES.index("Comedy"), GENRE_NAMES.index("Drama")],
                                                      [GENRE_NAMES.index("Children")]]


@pytest.mark.parametrize("file_name, text, line, field, problem", [
    ("ratings.dat", "7::10::4::1000\n7::10::4::abc\n", 2, "timestamp", "'abc' is not an integer"),
    ("ratings.dat", "7,10,4,1000\n", 1, None, "found 1: '7,10,4,1000' (this looks comma-separated)"),
    ("ratings.dat", "7\t10\t4\t1000\n", 1, None, "contains a tab"),
    ("ratings.dat", "7::10::4::1000\n8::20::1::1001\n8::20::1\n", 3, None,
     "expected 4 fields separated by '::', found 3"),
    ("ratings.dat", "7::10::4::1000\n\n8::20::1::1001\n", 2, None, "found 1"),
    ("ratings.dat", "7::10::4::1000\n8::20::6::1001\n", 2, "user_rating", "'6' is not a rating from 1 to 5"),
    ("ratings.dat", "7::10::4::1000\n8::30::1::1001\n", 2, "movie_id", "'30' is not an id in movies.dat"),
    ("ratings.dat", "9::10::4::1000\n", 1, "user_id", "'9' is not an id in users.dat"),
    ("ratings.dat", "7::1.5::4::1000\n", 1, "movie_id", "'1.5' is not an integer"),
    ("ratings.dat", "", None, None, "file is empty"),
    ("movies.dat", "10::A Made Up Film (2001)::Comedy\n20::Another One (1999)::Comedy|Cartoon\n", 2,
     "movie_genres", "unknown genre 'Cartoon'"),
    ("movies.dat", "10::A Made Up Film (2001)::Comedy\n10::Another One (1999)::Drama\n", 2, "movie_id",
     "'10' is already defined"),
    ("users.dat", "7::F::25::4::12345\n8::X::56::0::54321\n", 2, "user_gender", "'X' is not 'M' or 'F'"),
    ("users.dat", "7::F::25::4::12345\n8::M::30::0::54321\n", 2, "bucketized_user_age",
     "'30' is not an ML-1M age bucket"),
    ("users.dat", "7::F::25::21::12345\n", 1, "user_occupation_label", "'21' is not an ML-1M occupation code"),
    ("users.dat", "seven::F::25::4::12345\n", 1, "user_id", "'seven' is not an integer"),
])
def test_malformed_file_names_file_line_and_field(tmp_path, file_name, text, line, field, problem):
    data_dir = write_data_dir(tmp_path, **{file_name: text})
    with pytest.raises(DataError) as raised:
        load_movielens(data_dir)
    error = raised.value
    assert (error.path, error.line, error.field) == (str(data_dir / file_name), line, field)
    assert problem in error.problem
    location = f"{data_dir / file_name}" + (f":{line}" if line else "")
    assert str(error).startswith(location + ": " + (f"field {field!r}: " if field else ""))


def test_error_message_reads_as_documented(tmp_path):
    data_dir = write_data_dir(tmp_path, **{"ratings.dat": "7::10::4::1000\n7::10::4::abc\n"})
    with pytest.raises(DataError) as raised:
        load_movielens(data_dir)
    assert str(raised.value) == f"{data_dir / 'ratings.dat'}:2: field 'timestamp': 'abc' is not an integer"
    copy = pickle.loads(pickle.dumps(raised.value))
    assert (copy.path, copy.line, copy.field, copy.problem, str(copy)) == (
        raised.value.path, 2, "timestamp", "'abc' is not an integer", str(raised.value))


def test_missing_sources_name_what_is_missing(tmp_path):
    data_dir = write_data_dir(tmp_path, **{"users.dat": None})
    with pytest.raises(DataError, match="file not found") as raised:
        load_movielens(data_dir)
    assert raised.value.path == str(data_dir / "users.dat") and raised.value.line is None
    with pytest.raises(DataError, match="no such file or folder"):
        load_movielens(tmp_path / "nowhere")
    not_a_zip = tmp_path / "ml-1m.zip"
    not_a_zip.write_text("hello")
    with pytest.raises(DataError, match="not a zip archive"):
        load_movielens(not_a_zip)
    archive = tmp_path / "partial.zip"
    with zipfile.ZipFile(archive, "w") as writer:
        writer.writestr("ml-1m/ratings.dat", GOOD_FILES["ratings.dat"])
    with pytest.raises(DataError, match="no member 'movies.dat'"):
        load_movielens(archive)
