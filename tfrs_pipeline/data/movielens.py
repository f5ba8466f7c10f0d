"""MovieLens 1M as three pandas tables, named and typed as TensorFlow Datasets names them.

The pipeline trains offline from the publisher's files and online from TFDS; both routes give the
same `MovieLens` tables (TFDS feature names, TFDS dtypes, TFDS label ids), so models, notebooks and
the SavedModel signatures never see where the data came from.

The files use ``::`` between fields, which pandas can only split with its slow Python engine. We
read each file as bytes, turn ``::`` into tabs and let the C parser type the columns (about a
second for the 1M ratings). Checks are vectorised over whole columns; only when one fails do we look
for the first bad line, so that the `DataError` names the file, the line and the field.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import os
import pathlib
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from tfrs_pipeline.data.errors import DataError

DATA_DIR_ENV = "TFRS_PIPELINE_DATA_DIR"
TFDS_SOURCE = "tfds"
ML1M_FILES = ("ratings.dat", "movies.dat", "users.dat")

# TFDS `movielens` genre ClassLabel names: the index is the label id stored in `movie_genres`.
GENRE_NAMES = (
    "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "Unknown", "War", "Western", "(no genres listed)",
)
# ML-1M spells one genre differently from TFDS (which merged it across MovieLens versions).
_GENRE_IDS = {name: label_id for label_id, name in enumerate(GENRE_NAMES)} | {
    "Children's": GENRE_NAMES.index("Children")
}

# TFDS `user_occupation_label` ClassLabel names: the index is the label id.
OCCUPATION_NAMES = (
    "academic/educator", "artist", "clerical/admin", "customer service", "doctor/health care",
    "entertainment", "executive/managerial", "farmer", "homemaker", "lawyer", "librarian",
    "other/not specified", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "student", "technician/engineer", "tradesman/craftsman", "unemployed",
    "writer",
)
# users.dat occupation codes 0..20 (ML-1M README), as TFDS labels them: TFDS merges
# "K-12 student" (10) and "college/grad student" (4) into "student".
_ML1M_OCCUPATIONS = (
    "other/not specified", "academic/educator", "artist", "clerical/admin", "student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "student", "lawyer", "programmer", "retired", "sales/marketing", "scientist", "self-employed",
    "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
)
_ML1M_OCCUPATION_LABEL_IDS = np.array([OCCUPATION_NAMES.index(name) for name in _ML1M_OCCUPATIONS])
# users.dat "Age" is already bucketized; these are the buckets the ML-1M README defines.
AGE_BUCKETS = (1, 18, 25, 35, 45, 50, 56)

_RATINGS_FIELDS = ("user_id", "movie_id", "user_rating", "timestamp")
_MOVIES_FIELDS = ("movie_id", "movie_title", "movie_genres")
_USERS_FIELDS = ("user_id", "user_gender", "bucketized_user_age", "user_occupation_label", "user_zip_code")
# Features of TFDS `movielens/1m-ratings` that `from_tfds_records` reads (all fixed-size, so they batch).
TFDS_RATING_FEATURES = _RATINGS_FIELDS + _USERS_FIELDS[1:]


@dataclasses.dataclass(frozen=True)
class MovieLens:
    """The MovieLens 1M tables, with TFDS feature names and dtypes.

    Attributes:
      ratings: `user_id` (str), `movie_id` (str), `user_rating` (float32), `timestamp` (int64), one
        row per rating in file order with a RangeIndex; file order breaks timestamp ties when the
        ratings are split chronologically.
      movies: `movie_id` (str), `movie_title` (str, with the year), `movie_genres` (list of int,
        indices into `GENRE_NAMES`); the whole catalog, rated or not.
      users: `user_id` (str), `user_gender` (bool, True = male), `bucketized_user_age` (float32),
        `user_occupation_label` (int64, indices into `OCCUPATION_NAMES`), `user_zip_code` (str).
    """

    ratings: pd.DataFrame
    movies: pd.DataFrame
    users: pd.DataFrame


def load_movielens(source: str | os.PathLike | None = None, *, max_users: int | None = None) -> MovieLens:
    """Loads MovieLens 1M from the publisher's files or from TensorFlow Datasets.

    Args:
      source: a folder holding ``ratings.dat``, ``movies.dat`` and ``users.dat``; a folder holding
        ``ml-1m/``; the publisher's ``ml-1m.zip`` (read in place); or ``"tfds"`` to download
        ``movielens/1m-ratings`` and ``movielens/1m-movies`` through TensorFlow Datasets. None reads
        the environment variable ``TFRS_PIPELINE_DATA_DIR``, which takes the same forms.
      max_users: keep only the ratings and features of the users with the `max_users` smallest
        numeric ids (a small, reproducible slice for tests and quick runs); the movies table keeps
        the whole catalog.

    Returns:
      The three tables; see `MovieLens`.

    Raises:
      DataError: no source, a missing file, or a malformed line (the message names file, line, field).
    """
    if max_users is not None and max_users < 1:
        raise ValueError(f"max_users must be at least 1, got {max_users}")
    if source is None:
        source = os.environ.get(DATA_DIR_ENV)
        if not source:
            raise DataError(None, None, None, (
                "no MovieLens data given: pass --data_dir=<ml-1m folder or ml-1m.zip> "
                f"(or --data_dir={TFDS_SOURCE} to download it) or set {DATA_DIR_ENV}"
            ))
    if os.fspath(source) == TFDS_SOURCE:
        movielens = _load_from_tfds()
    else:
        movielens = _parse_ml1m_files(_read_ml1m_files(pathlib.Path(source)))
    return movielens if max_users is None else keep_first_users(movielens, max_users)


def from_tfds_records(
    rating_batches: Iterable[Mapping[str, np.ndarray]],
    movie_records: Iterable[Mapping[str, Any]],
) -> MovieLens:
    """Builds the tables from TFDS records as `tfds.as_numpy` yields them.

    TFDS joins the user features into every rating, so the users table is each user's first row.
    TFDS shuffles records when it builds the data set, so the ratings keep TFDS's (deterministic)
    order: the publisher's file order is not recoverable through this route.

    Args:
      rating_batches: batches of `movielens/1m-ratings`, each a mapping from every name in
        `TFDS_RATING_FEATURES` to a 1-D array (strings as bytes, as TFDS yields them).
      movie_records: single records of `movielens/1m-movies` (`movie_id`, `movie_title` as bytes,
        `movie_genres` as an int array of genre label ids).

    Returns:
      The three tables; see `MovieLens`.
    """
    batches = list(rating_batches)
    columns = {name: np.concatenate([batch[name] for batch in batches]) for name in TFDS_RATING_FEATURES}
    ratings = pd.DataFrame({
        "user_id": _decode(columns["user_id"]),
        "movie_id": _decode(columns["movie_id"]),
        "user_rating": columns["user_rating"].astype(np.float32),
        "timestamp": columns["timestamp"].astype(np.int64),
    })
    first_rating_of_user = ~ratings["user_id"].duplicated().to_numpy()
    users = pd.DataFrame({
        "user_id": ratings["user_id"].to_numpy()[first_rating_of_user],
        "user_gender": columns["user_gender"][first_rating_of_user].astype(bool),
        "bucketized_user_age": columns["bucketized_user_age"][first_rating_of_user].astype(np.float32),
        "user_occupation_label": columns["user_occupation_label"][first_rating_of_user].astype(np.int64),
        "user_zip_code": _decode(columns["user_zip_code"][first_rating_of_user]),
    })
    records = list(movie_records)
    movies = pd.DataFrame({
        "movie_id": _decode(np.array([record["movie_id"] for record in records], dtype=object)),
        "movie_title": _decode(np.array([record["movie_title"] for record in records], dtype=object)),
        "movie_genres": [[int(label_id) for label_id in record["movie_genres"]] for record in records],
    })
    return MovieLens(
        ratings=ratings,
        movies=_sorted_by_numeric_id(movies, "movie_id"),
        users=_sorted_by_numeric_id(users, "user_id"),
    )


def _load_from_tfds() -> MovieLens:
    """Downloads (once, into the TFDS cache) and converts the two TFDS MovieLens 1M data sets."""
    import tensorflow_datasets as tfds  # Heavy, and only this route needs it.

    ratings = tfds.load("movielens/1m-ratings", split="train")
    ratings = ratings.map(lambda record: {name: record[name] for name in TFDS_RATING_FEATURES})
    movies = tfds.load("movielens/1m-movies", split="train")
    return from_tfds_records(tfds.as_numpy(ratings.batch(65536)), tfds.as_numpy(movies))


def _decode(values: np.ndarray) -> np.ndarray:
    return pd.Series(values, dtype=object).str.decode("utf-8").to_numpy(dtype=object)


def _sorted_by_numeric_id(table: pd.DataFrame, id_column: str) -> pd.DataFrame:
    return table.sort_values(id_column, key=lambda ids: ids.astype(np.int64), kind="stable").reset_index(drop=True)


def keep_first_users(movielens: MovieLens, max_users: int) -> MovieLens:
    """The ``max_users`` lowest user ids, their ratings and the movies (the small slices tests and demos use)."""
    kept_user_ids = np.sort(movielens.users["user_id"].astype(np.int64).to_numpy())[:max_users].astype(str)
    kept_users = movielens.users["user_id"].isin(kept_user_ids)
    kept_ratings = movielens.ratings["user_id"].isin(kept_user_ids)
    return MovieLens(
        ratings=movielens.ratings[kept_ratings].reset_index(drop=True),
        movies=movielens.movies,
        users=movielens.users[kept_users].reset_index(drop=True),
    )


# --- Locating the publisher's files -------------------------------------------------------------

def _read_ml1m_files(source: pathlib.Path) -> dict[str, tuple[str, bytes]]:
    """Returns, for each name in `ML1M_FILES`, the path to show in errors and the file's bytes."""
    if source.is_file():
        return _read_zip_members(source)
    if not source.is_dir():
        raise DataError(source, None, None, "no such file or folder (expected an ML-1M folder or ml-1m.zip)")
    folder = source / "ml-1m" if (source / "ml-1m").is_dir() and not (source / "ratings.dat").exists() else source
    files = {}
    for name in ML1M_FILES:
        path = folder / name
        if not path.is_file():
            raise DataError(path, None, None, "file not found: an ML-1M folder holds " + ", ".join(ML1M_FILES))
        files[name] = (str(path), path.read_bytes())
    return files


def _read_zip_members(archive_path: pathlib.Path) -> dict[str, tuple[str, bytes]]:
    """Reads the three files from the publisher's zip (members ``ml-1m/*.dat``) without extracting it."""
    if not zipfile.is_zipfile(archive_path):
        raise DataError(archive_path, None, None, "not a zip archive (expected an ML-1M folder or ml-1m.zip)")
    files = {}
    with zipfile.ZipFile(archive_path) as archive:
        members = archive.namelist()
        for name in ML1M_FILES:
            candidates = sorted((m for m in members if m == name or m.endswith("/" + name)), key=len)
            if not candidates:
                raise DataError(archive_path, None, None, f"no member {name!r} in the archive (expected ml-1m/{name})")
            files[name] = (f"{archive_path}/{candidates[0]}", archive.read(candidates[0]))
    return files


# --- Parsing and validating ---------------------------------------------------------------------

def _parse_ml1m_files(files: Mapping[str, tuple[str, bytes]]) -> MovieLens:
    movies = parse_movies(*files["movies.dat"])
    users = parse_users(*files["users.dat"])
    ratings = parse_ratings(*files["ratings.dat"], movies=movies, users=users)
    return MovieLens(ratings=ratings, movies=movies, users=users)


def parse_ratings(path: str, data: bytes, *, movies: pd.DataFrame, users: pd.DataFrame) -> pd.DataFrame:
    """``ratings.dat`` bytes as a table; bad lines and unknown movie or user ids raise ``DataError`` naming them.

    Public because the Beam pipeline parses the file in chunks with the same rules.
    """
    table = _read_dat(path, data, _RATINGS_FIELDS, integer_fields=_RATINGS_FIELDS)
    rating = table["user_rating"].to_numpy()
    _raise_at_first(path, (rating < 1) | (rating > 5), table["user_rating"], "is not a rating from 1 to 5")
    for field, known, file_name in (("user_id", users, "users.dat"), ("movie_id", movies, "movies.dat")):
        unknown = ~np.isin(table[field].to_numpy(), known[field].astype(np.int64).to_numpy())
        _raise_at_first(path, unknown, table[field], f"is not an id in {file_name}")
    return pd.DataFrame({
        "user_id": table["user_id"].astype(str),
        "movie_id": table["movie_id"].astype(str),
        "user_rating": rating.astype(np.float32),
        "timestamp": table["timestamp"].to_numpy(np.int64),
    })


def parse_movies(path: str, data: bytes) -> pd.DataFrame:
    """``movies.dat`` bytes as a table (genres as label ids); shared with the Beam pipeline."""
    table = _read_dat(path, data, _MOVIES_FIELDS, integer_fields=("movie_id",))
    _raise_at_first(path, table["movie_id"].duplicated().to_numpy(), table["movie_id"], "is already defined above")
    genre_names = table["movie_genres"].str.split("|")
    listed_genres = genre_names.explode()
    unknown_genres = listed_genres[~listed_genres.isin(list(_GENRE_IDS))]
    if len(unknown_genres):
        raise DataError(path, int(unknown_genres.index[0]) + 1, "movie_genres", (
            f"unknown genre {unknown_genres.iloc[0]!r}; ML-1M genres are " + ", ".join(_GENRE_IDS)
        ))
    return pd.DataFrame({
        "movie_id": table["movie_id"].astype(str),
        "movie_title": table["movie_title"],
        "movie_genres": [[_GENRE_IDS[name] for name in names] for names in genre_names],
    })


def parse_users(path: str, data: bytes) -> pd.DataFrame:
    """``users.dat`` bytes as a table of the TFDS feature names; shared with the Beam pipeline."""
    table = _read_dat(path, data, _USERS_FIELDS, integer_fields=("user_id", "bucketized_user_age", "user_occupation_label"))
    _raise_at_first(path, table["user_id"].duplicated().to_numpy(), table["user_id"], "is already defined above")
    gender = table["user_gender"]
    _raise_at_first(path, ~gender.isin(("M", "F")).to_numpy(), gender, "is not 'M' or 'F'")
    age = table["bucketized_user_age"]
    _raise_at_first(path, ~age.isin(AGE_BUCKETS).to_numpy(), age, f"is not an ML-1M age bucket {AGE_BUCKETS}")
    occupation = table["user_occupation_label"].to_numpy()
    known_occupation = (occupation >= 0) & (occupation < len(_ML1M_OCCUPATION_LABEL_IDS))
    _raise_at_first(path, ~known_occupation, table["user_occupation_label"], "is not an ML-1M occupation code 0..20")
    return pd.DataFrame({
        "user_id": table["user_id"].astype(str),
        "user_gender": (gender == "M").to_numpy(),
        "bucketized_user_age": age.to_numpy(np.float32),
        "user_occupation_label": _ML1M_OCCUPATION_LABEL_IDS[occupation].astype(np.int64),
        "user_zip_code": table["user_zip_code"],
    })


def _read_dat(path: str, data: bytes, fields: Sequence[str], *, integer_fields: Sequence[str]) -> pd.DataFrame:
    """Parses a ``::``-separated ML-1M file into one column per field; row i is line i + 1."""
    data = data.rstrip(b"\r\n")
    if not data.strip():
        raise DataError(path, None, None, "file is empty")
    _check_field_counts(path, data, len(fields))
    tab_separated = io.BytesIO(data.replace(b"::", b"\t"))
    read_options = dict(
        sep="\t", header=None, names=list(fields), encoding="latin-1", quoting=csv.QUOTE_NONE,
        na_filter=False, skip_blank_lines=False, engine="c",
    )
    try:
        return pd.read_csv(tab_separated, dtype={name: np.int64 if name in integer_fields else str for name in fields}, **read_options)
    except ValueError:
        # Some integer field is not one: read everything as text to say which.
        tab_separated.seek(0)
        table = pd.read_csv(tab_separated, dtype=str, **read_options)
        for field in integer_fields:
            _raise_at_first(path, ~table[field].str.fullmatch(r"[+-]?\d{1,18}").to_numpy(), table[field], "is not an integer")
        raise


def _check_field_counts(path: str, data: bytes, field_count: int) -> None:
    """Raises on the first line that is not `field_count` fields joined by ``::`` (CSV, tabs, ...)."""
    line_ends = np.flatnonzero(np.frombuffer(data, np.uint8) == ord("\n"))
    tab = data.find(b"\t")
    if tab >= 0:
        line = int(np.searchsorted(line_ends, tab)) + 1
        raise DataError(path, line, None, "contains a tab: ML-1M files separate fields with '::' (is this a tab-separated file?)")
    separated = np.frombuffer(data.replace(b"::", b"\t"), np.uint8)
    separators = np.flatnonzero(separated == ord("\t"))
    separated_line_ends = np.flatnonzero(separated == ord("\n"))
    per_line = np.bincount(np.searchsorted(separated_line_ends, separators), minlength=len(separated_line_ends) + 1)
    bad_lines = np.flatnonzero(per_line != field_count - 1)
    if len(bad_lines):
        index = int(bad_lines[0])
        start = 0 if index == 0 else int(line_ends[index - 1]) + 1
        end = int(line_ends[index]) if index < len(line_ends) else len(data)
        text = data[start:end].decode("latin-1").rstrip("\r")
        hint = " (this looks comma-separated)" if "," in text and "::" not in text else ""
        raise DataError(path, index + 1, None, (
            f"expected {field_count} fields separated by '::', found {per_line[index] + 1}: {text[:80]!r}{hint}"
        ))


def _raise_at_first(path: str, bad: np.ndarray, values: pd.Series, problem: str) -> None:
    """Raises a DataError for the first True in `bad`, quoting that row's value of `values`."""
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(path, row + 1, str(values.name), f"{str(values.iloc[row])!r} {problem}")
