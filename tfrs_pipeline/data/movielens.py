"""The MovieLens releases, read from the publisher's files or TFDS, as adapters onto the generic tables.

Two steps, so that every route shares one set of names:
  1. a parser per release gives the `MovieLens` tables, named and typed as TensorFlow Datasets names
     them (TFDS feature names, dtypes and label ids): ML-100K (``u.data``, ``u.item``, ``u.user``),
     ML-1M (``ratings.dat``, ``movies.dat``, ``users.dat``), ML-10M (``ratings.dat``, ``movies.dat``)
     and the CSV releases ML-20M, 25M, 32M and latest (``ratings.csv``, ``movies.csv``); TFDS
     ``movielens/*`` records convert to the same tables (``from_tfds_records``);
  2. `to_interaction_data` turns them into ``InteractionData``. This module is the only place that
     knows MovieLens names: items get ``movie_title`` (text, the title with its year, shown as the
     title), ``movie_genres`` (multi-categorical genre names) and ``release_year`` (numeric, from the
     title's trailing "(YYYY)"); users, where the release has demographics (100K, 1M), get
     ``user_gender`` ("M"/"F"), ``bucketized_user_age`` ("25"), ``user_occupation_label`` (an
     `OCCUPATION_NAMES` name) and ``user_zip_code``, all categorical. The split is leave-last-out.

``tags.dat`` / ``tags.csv`` may sit beside the files; they are not read: users wrote the tags over
the same years as the ratings, so as item features they would leak the test period into training.

The ``.dat`` files use ``::`` between fields, which pandas can only split with its slow Python
engine. We read each file as bytes, turn the separator into tabs and let the C parser type the
columns (about a second for the 1M ratings). Checks are vectorised over whole columns; only when one
fails do we look for the first bad line, so that the `DataError` names the file, the line and the field.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import os
import pathlib
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from tfrs_pipeline.contracts import CATEGORICAL, MULTI_CATEGORICAL, NUMERIC, TEXT, FeatureSchema, FeatureSpec
from tfrs_pipeline.data.errors import DataError
from tfrs_pipeline.data.interactions import (
    InteractionData,
    decode_utf8,
    first_user_ids,
    headerless_line,
    policy_counts,
    raise_at_first,
    tokenizer_error,
)
from tfrs_pipeline.data.schema import ITEM_ID, LEAVE_LAST_OUT, RATING, TIMESTAMP, USER_ID, DatasetSchema, SplitRule

DATA_DIR_ENV = "TFRS_PIPELINE_DATA_DIR"
TFDS_SOURCE = "tfds"
TFDS_RELEASES = ("100k", "1m", "20m", "25m", "latest-small")  # TFDS configs movielens/<release>-ratings
ML1M_FILES = ("ratings.dat", "movies.dat", "users.dat")

# TFDS `movielens` genre ClassLabel names: the index is the label id stored in `movie_genres`.
GENRE_NAMES = (
    "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "Unknown", "War", "Western", "(no genres listed)",
)
# ML-100K and ML-1M spell two genres differently from TFDS (which merged them across MovieLens versions).
_GENRE_IDS = {name: label_id for label_id, name in enumerate(GENRE_NAMES)} | {
    "Children's": GENRE_NAMES.index("Children"), "unknown": GENRE_NAMES.index("Unknown"),
}
# The 19 genre flags of a u.item line, in order (ML-100K README).
_ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)

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
# u.user occupations, as TFDS labels them (it merges a few to match ML-1M's list).
_ML100K_OCCUPATIONS = {
    "administrator": "clerical/admin", "artist": "artist", "doctor": "doctor/health care",
    "educator": "academic/educator", "engineer": "technician/engineer", "entertainment": "entertainment",
    "executive": "executive/managerial", "healthcare": "doctor/health care", "homemaker": "homemaker",
    "lawyer": "lawyer", "librarian": "librarian", "marketing": "sales/marketing", "none": "other/not specified",
    "other": "other/not specified", "programmer": "programmer", "retired": "retired", "salesman": "sales/marketing",
    "scientist": "scientist", "student": "student", "technician": "technician/engineer", "writer": "writer",
}
# users.dat "Age" is already bucketized; these are the buckets the ML-1M README defines (TFDS puts
# ML-100K's ages in the same ones: the largest bucket not above the age).
AGE_BUCKETS = (1, 18, 25, 35, 45, 50, 56)

_RATINGS_FIELDS = ("user_id", "movie_id", "user_rating", "timestamp")
_MOVIES_FIELDS = ("movie_id", "movie_title", "movie_genres")
_USERS_FIELDS = ("user_id", "user_gender", "bucketized_user_age", "user_occupation_label", "user_zip_code")
_ML100K_ITEM_FIELDS = ("movie_id", "movie_title", "release_date", "video_release_date", "imdb_url", *_ML100K_GENRES)
_ML100K_USER_FIELDS = ("user_id", "raw_user_age", "user_gender", "user_occupation_text", "user_zip_code")
# Features of TFDS `movielens/<release>-ratings` that `from_tfds_records` reads (all fixed-size, so
# they batch); releases without demographics have only the first four.
TFDS_RATING_FEATURES = _RATINGS_FIELDS + _USERS_FIELDS[1:]

# The adapter's names (see the module docstring).
TITLE_FEATURE = "movie_title"
ITEM_FEATURES = (FeatureSpec("movie_title", TEXT), FeatureSpec("movie_genres", MULTI_CATEGORICAL),
                 FeatureSpec("release_year", NUMERIC))
USER_FEATURES = tuple(FeatureSpec(name, CATEGORICAL) for name in _USERS_FIELDS[1:])
_RELEASE_YEAR = re.compile(r"\((\d{4})\)\s*$")


@dataclasses.dataclass(frozen=True)
class MovieLens:
    """The tables of a MovieLens release, with TFDS feature names and dtypes.

    Attributes:
      ratings: `user_id` (str), `movie_id` (str), `user_rating` (float32), `timestamp` (int64), one
        row per rating in file order with a RangeIndex; file order breaks timestamp ties when the
        ratings are split chronologically.
      movies: `movie_id` (str), `movie_title` (str, with the year), `movie_genres` (list of int,
        indices into `GENRE_NAMES`); the whole catalog, rated or not.
      users: `user_id` (str); where the release has demographics (100K, 1M), also `user_gender`
        (bool, True = male), `bucketized_user_age` (float32), `user_occupation_label` (int64, indices
        into `OCCUPATION_NAMES`), `user_zip_code` (str).
    """

    ratings: pd.DataFrame
    movies: pd.DataFrame
    users: pd.DataFrame


@dataclasses.dataclass(frozen=True)
class Release:
    """One MovieLens release's files and rating scale.

    Attributes:
      name: for messages.
      ratings_file, movies_file, users_file: the file names (users_file None where there are no users).
      stars: the ratings the release allows.
    """

    name: str
    ratings_file: str
    movies_file: str
    users_file: str | None
    stars: tuple[float, ...]

    @property
    def files(self) -> tuple[str, ...]:
        """The files whose presence identifies the release."""
        return tuple(name for name in (self.ratings_file, self.movies_file, self.users_file) if name)


_WHOLE_STARS = (1.0, 2.0, 3.0, 4.0, 5.0)
_HALF_STARS = tuple(np.arange(1, 11) / 2)
ML_100K = Release("ML-100K", "u.data", "u.item", "u.user", _WHOLE_STARS)
ML_1M = Release("ML-1M", *ML1M_FILES, _WHOLE_STARS)
ML_10M = Release("ML-10M", "ratings.dat", "movies.dat", None, _HALF_STARS)
ML_CSV = Release("ML-20M/25M/32M/latest", "ratings.csv", "movies.csv", None, _HALF_STARS)
RELEASES = (ML_100K, ML_1M, ML_10M, ML_CSV)  # detection order: ML-1M's files include ML-10M's
RELEASE_LAYOUTS = "; ".join(f"{release.name}: {', '.join(release.files)}" for release in RELEASES)


def load_movielens(source: str | os.PathLike | None = None, *, max_users: int | None = None) -> MovieLens:
    """Loads MovieLens 1M from the publisher's files or from TensorFlow Datasets.

    Args:
      source: a folder holding ``ratings.dat``, ``movies.dat`` and ``users.dat``; a folder holding
        such a folder (``ml-1m/``); the publisher's ``ml-1m.zip`` (read in place); or ``"tfds"`` to
        download ``movielens/1m-ratings`` and ``movielens/1m-movies`` through TensorFlow Datasets.
        None reads the environment variable ``TFRS_PIPELINE_DATA_DIR``, which takes the same forms.
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
        movielens = load_tfds()
    else:
        file_sets = _file_sets(pathlib.Path(source), "expected an ML-1M folder or ml-1m.zip")
        movielens = _read_ml1m(next((files for files in file_sets if files.has(ML_1M.files)), file_sets[0]))
    return movielens if max_users is None else keep_first_users(movielens, max_users)


def keep_first_users(movielens: MovieLens, max_users: int) -> MovieLens:
    """The ``max_users`` lowest user ids, their ratings and the movies (the small slices tests and demos use)."""
    kept_user_ids = first_user_ids(movielens.users["user_id"], max_users)
    kept_users = movielens.users["user_id"].isin(kept_user_ids)
    kept_ratings = movielens.ratings["user_id"].isin(kept_user_ids)
    return MovieLens(
        ratings=movielens.ratings[kept_ratings].reset_index(drop=True),
        movies=movielens.movies,
        users=movielens.users[kept_users].reset_index(drop=True),
    )


def to_interaction_data(movielens: MovieLens, source: str = "") -> InteractionData:
    """The MovieLens tables in the generic contract, with the adapter's names (see the module docstring).

    Args:
      movielens: tables from any release or from TFDS.
      source: where they came from, for logs.

    Returns:
      The data set; every rated movie and every rating user has a row (the parsers checked), so the
      only policies that apply are the coverage counts (movies nobody rated: the cold catalog).
    """
    ratings, movies = movielens.ratings, movielens.movies
    interactions = pd.DataFrame({USER_ID: ratings["user_id"], ITEM_ID: ratings["movie_id"],
                                 TIMESTAMP: ratings["timestamp"], RATING: ratings["user_rating"]})
    items = pd.DataFrame({
        ITEM_ID: movies["movie_id"],
        "movie_title": movies["movie_title"],
        "movie_genres": [tuple(GENRE_NAMES[label_id] for label_id in label_ids)
                         for label_ids in movies["movie_genres"]],
        "release_year": movies["movie_title"].str.extract(_RELEASE_YEAR)[0].astype(np.float64),
    })
    user_features = [spec for spec in USER_FEATURES if spec.name in movielens.users]
    users = pd.DataFrame({USER_ID: movielens.users["user_id"],
                          **{spec.name: _USER_FEATURE_VALUES[spec.name](movielens.users[spec.name].to_numpy())
                             for spec in user_features}})
    schema = DatasetSchema(FeatureSchema(tuple(user_features), ITEM_FEATURES), TITLE_FEATURE, SplitRule(LEAVE_LAST_OUT))
    return InteractionData(interactions, items, users, schema, source, policy_counts(interactions, items, users))


# TFDS dtypes -> the adapter's categorical strings.
_USER_FEATURE_VALUES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "user_gender": lambda is_male: np.where(is_male, "M", "F").astype(object),
    "bucketized_user_age": lambda ages: ages.astype(np.int64).astype(str).astype(object),
    "user_occupation_label": lambda label_ids: np.asarray(OCCUPATION_NAMES, dtype=object)[label_ids],
    "user_zip_code": lambda zip_codes: zip_codes.astype(object),
}


# --- TensorFlow Datasets --------------------------------------------------------------------------

def tfds_release(source: str | os.PathLike) -> str | None:
    """The TFDS release a source names: ``tfds`` is 1M; ``tfds:movielens/100k`` (or ``100k-ratings``).

    Returns:
      One of `TFDS_RELEASES`, or None when ``source`` does not start with ``tfds`` (a path).

    Raises:
      DataError: a ``tfds:`` source that names no MovieLens release TFDS has.
    """
    text = os.fspath(source)
    if text == TFDS_SOURCE:
        return "1m"
    if not text.startswith(TFDS_SOURCE + ":"):
        return None
    match = re.fullmatch(r"tfds:movielens/(.+?)(-ratings)?", text)
    if match is None or match.group(1) not in TFDS_RELEASES:
        raise DataError(None, None, None, f"unknown TFDS source {text!r}: expected {TFDS_SOURCE!r} or "
                                          f"'tfds:movielens/<release>' with a release of {TFDS_RELEASES}")
    return match.group(1)


def load_tfds(release: str = "1m") -> MovieLens:
    """Downloads (once, into the TFDS cache) and converts ``movielens/<release>-ratings`` and ``-movies``."""
    import tensorflow_datasets as tfds  # Heavy, and only this route needs it.

    ratings = tfds.load(f"movielens/{release}-ratings", split="train")
    names = [name for name in TFDS_RATING_FEATURES if name in ratings.element_spec]
    ratings = ratings.map(lambda record: {name: record[name] for name in names})
    movies = tfds.load(f"movielens/{release}-movies", split="train")
    return from_tfds_records(tfds.as_numpy(ratings.batch(65536)), tfds.as_numpy(movies))


def from_tfds_records(
    rating_batches: Iterable[Mapping[str, np.ndarray]],
    movie_records: Iterable[Mapping[str, Any]],
) -> MovieLens:
    """Builds the tables from TFDS records as `tfds.as_numpy` yields them.

    TFDS joins the user features into every rating, so the users table is each user's first row.
    TFDS shuffles records when it builds the data set, so the ratings keep TFDS's (deterministic)
    order: the publisher's file order is not recoverable through this route.

    Args:
      rating_batches: batches of `movielens/<release>-ratings`, each a mapping from the names in
        `TFDS_RATING_FEATURES` that the release has to a 1-D array (strings as bytes, as TFDS yields them).
      movie_records: single records of `movielens/<release>-movies` (`movie_id`, `movie_title` as
        bytes, `movie_genres` as an int array of genre label ids).

    Returns:
      The three tables; see `MovieLens`.
    """
    batches = list(rating_batches)
    columns = {name: np.concatenate([batch[name] for batch in batches])
               for name in TFDS_RATING_FEATURES if name in batches[0]}
    ratings = pd.DataFrame({
        "user_id": _decode(columns["user_id"]),
        "movie_id": _decode(columns["movie_id"]),
        "user_rating": columns["user_rating"].astype(np.float32),
        "timestamp": columns["timestamp"].astype(np.int64),
    })
    first_rating_of_user = ~ratings["user_id"].duplicated().to_numpy()
    users = pd.DataFrame({
        "user_id": ratings["user_id"].to_numpy()[first_rating_of_user],
        **{name: convert(columns[name][first_rating_of_user])
           for name, convert in _TFDS_USER_FEATURES.items() if name in columns},
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


def _decode(values: np.ndarray) -> np.ndarray:
    return pd.Series(values, dtype=object).str.decode("utf-8").to_numpy(dtype=object)


_TFDS_USER_FEATURES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "user_gender": lambda values: values.astype(bool),
    "bucketized_user_age": lambda values: values.astype(np.float32),
    "user_occupation_label": lambda values: values.astype(np.int64),
    "user_zip_code": _decode,
}


def _sorted_by_numeric_id(table: pd.DataFrame, id_column: str) -> pd.DataFrame:
    return table.sort_values(id_column, key=lambda ids: ids.astype(np.int64), kind="stable").reset_index(drop=True)


# --- Finding a release in a folder or a zip -------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _FileSet:
    """The files of one folder, or of one folder inside a zip archive, by name.

    Attributes:
      location: the folder, or the archive.
      members: file name -> its path (folder) or member name (archive).
      depth: how many folders down from what the user named (0: the folder or the archive's root).
      in_archive: whether ``location`` is a zip archive.
    """

    location: pathlib.Path
    members: Mapping[str, str]
    depth: int = 0
    in_archive: bool = False

    def has(self, names: Sequence[str]) -> bool:
        return all(name in self.members for name in names)

    def read(self, name: str, layout: str) -> tuple[str, bytes]:
        """(the path errors show, the bytes) of file ``name``; ``layout`` says what was expected if it is missing."""
        if name not in self.members:
            if self.in_archive:
                raise DataError(self.location, None, None, f"no member {name!r} in the archive ({layout})")
            raise DataError(self.location / name, None, None, f"file not found: {layout}")
        if self.in_archive:
            with zipfile.ZipFile(self.location) as archive:
                return f"{self.location}/{self.members[name]}", archive.read(self.members[name])
        return self.members[name], pathlib.Path(self.members[name]).read_bytes()


def _file_sets(source: pathlib.Path, expected: str) -> list[_FileSet]:
    """The folder and its subfolders, or the archive's folders, shallowest first (each a `_FileSet`)."""
    if source.is_file():
        if not zipfile.is_zipfile(source):
            raise DataError(source, None, None, f"not a zip archive ({expected})")
        with zipfile.ZipFile(source) as archive:
            folders: dict[str, dict[str, str]] = {"": {}}
            for member in archive.namelist():
                folder, _, name = member.rpartition("/")
                if name:
                    folders.setdefault(folder, {})[name] = member
        return [_FileSet(source, members, folder.count("/") + bool(folder), in_archive=True)
                for folder, members in sorted(folders.items(), key=lambda item: (item[0].count("/"), item[0]))]
    if not source.is_dir():
        raise DataError(source, None, None, f"no such file or folder ({expected})")
    folders = [source, *sorted(entry for entry in source.iterdir() if entry.is_dir())]
    return [_FileSet(folder, {entry.name: str(entry) for entry in folder.iterdir() if entry.is_file()},
                     depth=int(folder != source)) for folder in folders]


@dataclasses.dataclass(frozen=True)
class ReleaseFiles:
    """A MovieLens release found in a folder or a zip archive: which one, and its files."""

    release: Release
    files: _FileSet

    def read(self) -> MovieLens:
        """Parses and checks the release's files."""
        return _READERS[self.release.name](self.files)


def find_release(source: str | os.PathLike) -> ReleaseFiles | None:
    """The MovieLens release in a folder, in one of its subfolders, or in a zip archive.

    Returns:
      The release, or None when ``source`` holds none (`RELEASE_LAYOUTS` lists what is looked for).

    Raises:
      DataError: ``source`` does not exist, is a file but not a zip, or holds several releases at
        the same depth (the user must say which).
    """
    source = pathlib.Path(source)
    found = []
    for files in _file_sets(source, "expected a MovieLens folder or zip"):
        release = next((release for release in RELEASES if files.has(release.files)), None)
        if release is not None:
            found.append(ReleaseFiles(release, files))
    if not found:
        return None
    shallowest = [candidate for candidate in found if candidate.files.depth == found[0].files.depth]
    if len(shallowest) > 1:
        places = ", ".join(f"{candidate.release.name} in {candidate.files.location}" for candidate in shallowest)
        raise DataError(source, None, None, f"holds several MovieLens releases ({places}): point at one of them")
    return found[0]


# --- Reading each release ---------------------------------------------------------------------------

def _layout(release: Release) -> str:
    return f"{release.name} has {', '.join(release.files)}"


def _read_ml1m(files: _FileSet) -> MovieLens:
    layout = _layout(ML_1M)
    movies = parse_movies(*files.read(ML_1M.movies_file, layout))
    users = parse_users(*files.read(ML_1M.users_file, layout))
    ratings = parse_ratings(*files.read(ML_1M.ratings_file, layout), movies=movies, users=users)
    return MovieLens(ratings=ratings, movies=movies, users=users)


def _read_ml100k(files: _FileSet) -> MovieLens:
    layout = _layout(ML_100K)
    movies = _parse_ml100k_movies(*files.read(ML_100K.movies_file, layout))
    users = _parse_ml100k_users(*files.read(ML_100K.users_file, layout))
    ratings = parse_ratings(*files.read(ML_100K.ratings_file, layout), movies=movies, users=users,
                            release=ML_100K, separator=b"\t")
    return MovieLens(ratings=ratings, movies=movies, users=users)


def _read_ml10m(files: _FileSet) -> MovieLens:
    layout = _layout(ML_10M)
    movies = parse_movies(*files.read(ML_10M.movies_file, layout))
    ratings = parse_ratings(*files.read(ML_10M.ratings_file, layout), movies=movies, users=None, release=ML_10M)
    return MovieLens(ratings=ratings, movies=movies, users=_users_of(ratings))


_CSV_MOVIES_COLUMNS = {"movieId": "movie_id", "title": "movie_title", "genres": "movie_genres"}
_CSV_RATINGS_COLUMNS = {"userId": "user_id", "movieId": "movie_id", "rating": "user_rating", "timestamp": "timestamp"}


def _read_csv_release(files: _FileSet) -> MovieLens:
    """ML-20M, 25M, 32M and latest: UTF-8 CSV files with a header row (row i is line i + 2)."""
    layout = _layout(ML_CSV)
    path, data = files.read(ML_CSV.movies_file, layout)
    with _errors_name_header_columns(_CSV_MOVIES_COLUMNS):
        table = _read_csv(path, data, _CSV_MOVIES_COLUMNS, integer_fields=("movie_id",))
        movies = _checked_movies(path, table, _line_after_header)
    path, data = files.read(ML_CSV.ratings_file, layout)
    with _errors_name_header_columns(_CSV_RATINGS_COLUMNS):
        table = _read_csv(path, data, _CSV_RATINGS_COLUMNS, integer_fields=("user_id", "movie_id", "timestamp"))
        ratings = _checked_ratings(path, table, movies=movies, users=None, release=ML_CSV,
                                   line_of_row=_line_after_header)
    return MovieLens(ratings=ratings, movies=movies, users=_users_of(ratings))


@contextlib.contextmanager
def _errors_name_header_columns(columns: Mapping[str, str]) -> Iterator[None]:
    """Errors name the CSV file's own column (``movieId``), not the field it is read into (``movie_id``)."""
    column_of_field = {field: column for column, field in columns.items()}
    try:
        yield
    except DataError as error:
        raise DataError(error.path, error.line, column_of_field.get(error.field, error.field), error.problem) from None


_READERS: dict[str, Callable[[_FileSet], MovieLens]] = {
    ML_100K.name: _read_ml100k, ML_1M.name: _read_ml1m, ML_10M.name: _read_ml10m, ML_CSV.name: _read_csv_release,
}


def _users_of(ratings: pd.DataFrame) -> pd.DataFrame:
    """The users table of a release without demographics: the rating users' ids, in numeric order."""
    user_ids = pd.unique(ratings["user_id"])
    return pd.DataFrame({"user_id": first_user_ids(user_ids, len(user_ids)).astype(object)})


def _line_after_header(row: int) -> int:
    return row + 2


# --- Parsing and validating ---------------------------------------------------------------------

def parse_ratings(path: str, data: bytes, *, movies: pd.DataFrame, users: pd.DataFrame | None,
                  release: Release = ML_1M, separator: bytes = b"::") -> pd.DataFrame:
    """Ratings file bytes (``ratings.dat``, ``u.data``) as a table; bad lines and unknown ids raise ``DataError``.

    Public because the Beam pipeline parses ``ratings.dat`` in chunks with the same rules.

    Args:
      path: the file, for messages.
      data: whole lines of it.
      movies, users: the release's tables, whose ids are the known ones (``users`` None: the
        release has no users file, any id is one).
      release: whose rating scale and file names apply.
      separator: between fields.
    """
    whole_stars = release.stars == _WHOLE_STARS
    integer_fields = _RATINGS_FIELDS if whole_stars else ("user_id", "movie_id", "timestamp")
    table = _read_dat(path, data, _RATINGS_FIELDS, integer_fields=integer_fields, separator=separator)
    return _checked_ratings(path, table, movies=movies, users=users, release=release)


def parse_movies(path: str, data: bytes) -> pd.DataFrame:
    """``movies.dat`` bytes (ML-1M, ML-10M) as a table (genres as label ids); shared with the Beam pipeline."""
    return _checked_movies(path, _read_dat(path, data, _MOVIES_FIELDS, integer_fields=("movie_id",)))


def parse_users(path: str, data: bytes) -> pd.DataFrame:
    """``users.dat`` bytes as a table of the TFDS feature names; shared with the Beam pipeline."""
    table = _read_dat(path, data, _USERS_FIELDS,
                      integer_fields=("user_id", "bucketized_user_age", "user_occupation_label"))
    age = table["bucketized_user_age"]
    raise_at_first(path, ~age.isin(AGE_BUCKETS).to_numpy(), age, f"is not an ML-1M age bucket {AGE_BUCKETS}")
    occupation = table["user_occupation_label"].to_numpy()
    known_occupation = (occupation >= 0) & (occupation < len(_ML1M_OCCUPATION_LABEL_IDS))
    raise_at_first(path, ~known_occupation, table["user_occupation_label"], "is not an ML-1M occupation code 0..20")
    return _checked_users(path, table, age.to_numpy(), _ML1M_OCCUPATION_LABEL_IDS[occupation])


def _parse_ml100k_movies(path: str, data: bytes) -> pd.DataFrame:
    """``u.item``: id|title|release date|video release date|IMDb URL|19 genre flags."""
    table = _read_dat(path, data, _ML100K_ITEM_FIELDS, integer_fields=("movie_id",), separator=b"|")
    _check_unique_ids(path, table["movie_id"])
    for genre in _ML100K_GENRES:
        raise_at_first(path, ~table[genre].isin(("0", "1")).to_numpy(), table[genre], "is not a genre flag 0 or 1")
    flags = table[list(_ML100K_GENRES)].to_numpy() == "1"
    genre_ids = np.array([_GENRE_IDS[genre] for genre in _ML100K_GENRES])
    return _movies_table(table, [genre_ids[row].tolist() for row in flags])


def _parse_ml100k_users(path: str, data: bytes) -> pd.DataFrame:
    """``u.user``: id|age|gender|occupation|zip code; ages go into the ML-1M buckets, as TFDS does."""
    table = _read_dat(path, data, _ML100K_USER_FIELDS, integer_fields=("user_id", "raw_user_age"), separator=b"|")
    occupation = table["user_occupation_text"]
    raise_at_first(path, ~occupation.isin(list(_ML100K_OCCUPATIONS)).to_numpy(), occupation,
                   f"is not an ML-100K occupation ({', '.join(_ML100K_OCCUPATIONS)})")
    bucket_ages = np.asarray(AGE_BUCKETS)[np.searchsorted(AGE_BUCKETS[1:], table["raw_user_age"], side="right")]
    label_ids = [OCCUPATION_NAMES.index(_ML100K_OCCUPATIONS[name]) for name in occupation]
    return _checked_users(path, table, bucket_ages, label_ids)


def _checked_ratings(path: str, table: pd.DataFrame, *, movies: pd.DataFrame, users: pd.DataFrame | None,
                     release: Release, line_of_row: Callable[[int], int] = headerless_line) -> pd.DataFrame:
    rating = pd.to_numeric(table["user_rating"], errors="coerce").to_numpy(np.float64)
    raise_at_first(path, ~np.isin(rating, release.stars), table["user_rating"],
                   f"is not a rating {_scale(release.stars)}", line_of_row)
    known_ids = [("user_id", users, release.users_file)] if users is not None else []
    for field, known, file_name in [*known_ids, ("movie_id", movies, release.movies_file)]:
        unknown = ~np.isin(table[field].to_numpy(), known[field].astype(np.int64).to_numpy())
        raise_at_first(path, unknown, table[field], f"is not an id in {file_name}", line_of_row)
    return pd.DataFrame({
        "user_id": table["user_id"].astype(str),
        "movie_id": table["movie_id"].astype(str),
        "user_rating": rating.astype(np.float32),
        "timestamp": table["timestamp"].to_numpy(np.int64),
    })


def _scale(stars: Sequence[float]) -> str:
    step = stars[1] - stars[0]
    return f"from {stars[0]:g} to {stars[-1]:g}" + ("" if step == 1 else f" in steps of {step:g}")


def _checked_movies(path: str, table: pd.DataFrame,
                    line_of_row: Callable[[int], int] = headerless_line) -> pd.DataFrame:
    """Movies with their genres as ``|``-separated names (``movies.dat``, ``movies.csv``): checked, as label ids."""
    _check_unique_ids(path, table["movie_id"], line_of_row)
    genre_names = table["movie_genres"].str.split("|")
    listed_genres = genre_names.explode()
    unknown_genres = listed_genres[~listed_genres.isin(list(_GENRE_IDS))]
    if len(unknown_genres):
        raise DataError(path, line_of_row(int(unknown_genres.index[0])), "movie_genres", (
            f"unknown genre {unknown_genres.iloc[0]!r}; MovieLens genres are " + ", ".join(_GENRE_IDS)
        ))
    return _movies_table(table, [[_GENRE_IDS[name] for name in names] for names in genre_names])


def _movies_table(table: pd.DataFrame, genre_ids: list[list[int]]) -> pd.DataFrame:
    return pd.DataFrame({"movie_id": table["movie_id"].astype(str), "movie_title": table["movie_title"],
                         "movie_genres": genre_ids})


def _checked_users(path: str, table: pd.DataFrame, bucket_ages: Sequence[int],
                   occupation_label_ids: Sequence[int]) -> pd.DataFrame:
    """Users with demographics (``users.dat``, ``u.user``), checked, as the TFDS features."""
    _check_unique_ids(path, table["user_id"])
    gender = table["user_gender"]
    raise_at_first(path, ~gender.isin(("M", "F")).to_numpy(), gender, "is not 'M' or 'F'")
    return pd.DataFrame({
        "user_id": table["user_id"].astype(str),
        "user_gender": (gender == "M").to_numpy(),
        "bucketized_user_age": np.asarray(bucket_ages, dtype=np.float32),
        "user_occupation_label": np.asarray(occupation_label_ids, dtype=np.int64),
        "user_zip_code": table["user_zip_code"],
    })


def _check_unique_ids(path: str, ids: pd.Series, line_of_row: Callable[[int], int] = headerless_line) -> None:
    raise_at_first(path, ids.duplicated().to_numpy(), ids, "is already defined above", line_of_row)


def _read_dat(path: str, data: bytes, fields: Sequence[str], *, integer_fields: Sequence[str],
              separator: bytes = b"::") -> pd.DataFrame:
    """Parses a headerless file of ``separator``-separated fields into one column per field; row i is line i + 1."""
    data = data.rstrip(b"\r\n")
    if not data.strip():
        raise DataError(path, None, None, "file is empty")
    read_options = dict(
        sep="\t", header=None, names=list(fields), encoding=_encoding(data), quoting=csv.QUOTE_NONE,
        na_filter=False, skip_blank_lines=False, engine="c",
    )
    tab_separated = _tab_separated(path, data, len(fields), separator)
    return _read_typed(path, lambda dtypes: pd.read_csv(io.BytesIO(tab_separated), dtype=dtypes, **read_options),
                       fields, integer_fields, headerless_line)


def _read_csv(path: str, data: bytes, columns: Mapping[str, str], *, integer_fields: Sequence[str]) -> pd.DataFrame:
    """A CSV release file (UTF-8, a header row): the header's ``columns`` as the fields they map to."""
    if not data.strip():
        raise DataError(path, None, None, "file is empty")
    header = [name.strip() for name in next(csv.reader([data.split(b"\n", 1)[0].decode("utf-8", "replace")]))]
    if any(column not in header for column in columns):
        raise DataError(path, 1, None, f"expected the columns {list(columns)}, found {header}")
    fields = list(columns.values())

    def read(dtypes: Mapping[str, Any]) -> pd.DataFrame:
        table = pd.read_csv(io.BytesIO(data), usecols=list(columns), encoding="utf-8", keep_default_na=False,
                            dtype={column: dtypes[field] for column, field in columns.items()})
        return table.rename(columns=columns)[fields]

    try:
        return _read_typed(path, read, fields, integer_fields, _line_after_header)
    except UnicodeDecodeError:
        decode_utf8(path, data)  # raises, naming the line
        raise
    except pd.errors.ParserError as error:
        raise tokenizer_error(path, error) from None


def _read_typed(path: str, read: Callable[[Mapping[str, Any]], pd.DataFrame], fields: Sequence[str],
                integer_fields: Sequence[str], line_of_row: Callable[[int], int]) -> pd.DataFrame:
    """``read(dtypes)`` with the integer fields typed by the C parser; if one is not, names its first bad line."""
    try:
        return read({name: np.int64 if name in integer_fields else str for name in fields})
    except ValueError:
        # Some integer field is not one: read everything as text to say which.
        table = read(dict.fromkeys(fields, str))
        for field in integer_fields:
            raise_at_first(path, ~table[field].str.fullmatch(r"[+-]?\d{1,18}").to_numpy(), table[field],
                           "is not an integer", line_of_row)
        raise


def _encoding(data: bytes) -> str:
    """UTF-8 where the bytes are UTF-8, else ISO-8859-1, which ML-100K and ML-1M are written in."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "latin-1"
    return "utf-8"


def _tab_separated(path: str, data: bytes, field_count: int, separator: bytes) -> bytes:
    """``data`` with tabs between fields; raises on the first line that has not `field_count` fields."""
    line_ends = np.flatnonzero(np.frombuffer(data, np.uint8) == ord("\n"))
    separated = data
    if separator != b"\t":
        tab = data.find(b"\t")
        if tab >= 0:
            line = int(np.searchsorted(line_ends, tab)) + 1
            raise DataError(path, line, None, f"contains a tab: this file separates fields with "
                                              f"{separator.decode()!r} (is it a tab-separated file?)")
        separated = data.replace(separator, b"\t")
    separated_bytes = np.frombuffer(separated, np.uint8)
    separators = np.flatnonzero(separated_bytes == ord("\t"))
    separated_line_ends = np.flatnonzero(separated_bytes == ord("\n"))
    per_line = np.bincount(np.searchsorted(separated_line_ends, separators), minlength=len(separated_line_ends) + 1)
    bad_lines = np.flatnonzero(per_line != field_count - 1)
    if len(bad_lines):
        index = int(bad_lines[0])
        start = 0 if index == 0 else int(line_ends[index - 1]) + 1
        end = int(line_ends[index]) if index < len(line_ends) else len(data)
        text = data[start:end].decode("latin-1").rstrip("\r")
        hint = " (this looks comma-separated)" if "," in text and separator.decode() not in text else ""
        raise DataError(path, index + 1, None, (
            f"expected {field_count} fields separated by {separator.decode()!r}, found {per_line[index] + 1}: "
            f"{text[:80]!r}{hint}"
        ))
    return separated
