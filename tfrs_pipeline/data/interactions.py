"""The generic data contract every data set is read into, and the reader of a user's own folder.

A user's own folder holds ``interactions.csv`` (or ``.tsv``, ``.parquet``: UTF-8, a header row)
with the columns ``user_id``, ``item_id``, ``timestamp`` (Unix seconds, or ISO 8601 dates and times,
UTC unless they say otherwise) and optionally ``rating`` or ``weight`` (1.0 where there is neither);
other columns are ignored. Optionally ``items.csv`` (``item_id`` and item features) and ``users.csv``
(``user_id`` and user features) sit beside it, in the same formats. A ``dataset.yaml`` or
``dataset.json`` may rename, retype, filter and choose the split (``data/schema.py``).

Every other column of the feature files is a feature, its kind inferred from its values
(``schema.infer_feature_kind``): numbers are numeric, unless one is written with a leading zero
(zip codes stay categorical); values of several words, mostly distinct, are text; values holding
``|`` are multi-categorical (``Comedy|Drama``); anything else is categorical. Ids and values are
read without the spaces around them.

Bad input either stops the read with a ``DataError`` naming the file, the line (the header is line
1; for Parquet, the row) and the column, or falls under a stated policy whose applications are
counted in ``InteractionData.policy_counts``:

- errors: a missing file or required column, an empty file, text that is not UTF-8, an empty id,
  a timestamp or rating that does not parse, an id listed twice in a feature file, a value that is
  not of its declared kind;
- ``items_missing_from_items_file``: items that are interacted with but have no row in the items
  file are kept, with every feature missing (likewise ``users_missing_from_users_file``);
- ``items_without_interactions``: items of the items file that nobody interacted with are kept:
  they are the cold-start catalog (likewise ``users_without_interactions``);
- ``interactions_filtered_out``: rows a configured filter removed.

Everything downstream (split, catalog, towers, export) reads only ``InteractionData`` and its schema.
MovieLens releases and TFDS are adapters onto the same tables (``data/movielens.py``).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import pathlib
import re
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from tfrs_pipeline.contracts import (
    MISSING_VALUES,
    MULTI_CATEGORICAL,
    MULTI_VALUE_SEPARATOR,
    NUMERIC,
    FeatureSchema,
    FeatureSpec,
)
from tfrs_pipeline.data.errors import DataError
from tfrs_pipeline.data.schema import (
    CONFIG_FILES,
    IGNORE,
    ITEM_ID,
    RATING,
    TIMESTAMP,
    USER_ID,
    DatasetConfig,
    DatasetSchema,
    RowFilter,
    TableConfig,
    infer_feature_kind,
    is_list_cell,
    read_dataset_config,
    unix_seconds,
)
from tfrs_pipeline.data.split import user_order

INTERACTIONS = "interactions"
ITEMS = "items"
USERS = "users"
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")
WEIGHT = "weight"  # read as the rating where a file has no rating column
DEFAULT_TITLE = "title"  # the item feature shown as the title unless dataset.yaml names another

# Policy counters (``InteractionData.policy_counts``).
ITEMS_MISSING_FROM_ITEMS_FILE = "items_missing_from_items_file"
USERS_MISSING_FROM_USERS_FILE = "users_missing_from_users_file"
ITEMS_WITHOUT_INTERACTIONS = "items_without_interactions"
USERS_WITHOUT_INTERACTIONS = "users_without_interactions"
INTERACTIONS_FILTERED_OUT = "interactions_filtered_out"


@dataclasses.dataclass(frozen=True)
class InteractionData:
    """A data set in the generic contract.

    Attributes:
      interactions: ``user_id`` (str), ``item_id`` (str), ``timestamp`` (int64, Unix seconds),
        ``rating`` (float32; 1.0 where the data has no rating or weight), rows in source order
        (which breaks timestamp ties), RangeIndex.
      items: ``item_id`` (str, unique) and one column per ``schema.features.item_features``; every
        item of ``interactions`` has a row (added with missing values if the items file lacks it).
      users: ``user_id`` (str, unique) and one column per ``schema.features.user_features``; every
        user of ``interactions`` has a row.
      schema: feature kinds, title column, split rule.
      source: where the tables came from, for logs and the run's metrics.
      policy_counts: how often each stated input policy applied (e.g. rows dropped by a filter,
        items without a row in the items file), so a run can report them.

    Feature cells hold: categorical ``str`` ("" = missing); multi-categorical ``tuple[str, ...]``;
    numeric ``float`` (NaN = missing); text ``str``.
    """

    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    schema: DatasetSchema
    source: str = ""
    policy_counts: dict[str, int] = dataclasses.field(default_factory=dict)


def read_interaction_folder(folder: str | os.PathLike) -> InteractionData:
    """Reads a user's own data folder (the contract in this module's docstring).

    Args:
      folder: holds ``interactions.csv|.tsv|.parquet``, optionally ``items.*``, ``users.*`` and
        ``dataset.yaml|.json``.

    Returns:
      The tables, their schema (kinds inferred or configured) and the policy counts.

    Raises:
      DataError: any of the errors listed in this module's docstring, or a bad configuration.
    """
    folder = pathlib.Path(folder)
    config = read_dataset_config(folder)
    interactions, filtered_out = _read_interactions(_table_path(folder, INTERACTIONS, config), config)
    items, item_features, missing_items = _read_features(folder, ITEMS, ITEM_ID, config, interactions[ITEM_ID])
    users, user_features, missing_users = _read_features(folder, USERS, USER_ID, config, interactions[USER_ID])
    counts = policy_counts(interactions, items, users, missing_items=missing_items, missing_users=missing_users,
                           filtered_out=filtered_out)
    schema = DatasetSchema(FeatureSchema(user_features, item_features), _title(config, item_features), config.split)
    return InteractionData(interactions, items, users, schema, str(folder), counts)


def is_interaction_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds the own-data contract: an ``interactions.*`` file or a dataset configuration."""
    folder = pathlib.Path(folder)
    names = [INTERACTIONS + suffix for suffix in TABLE_SUFFIXES] + list(CONFIG_FILES)
    return any((folder / name).is_file() for name in names)


def policy_counts(interactions: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame, *, missing_items: int = 0,
                  missing_users: int = 0, filtered_out: int = 0) -> dict[str, int]:
    """Every policy counter: the reader's counts as given, the tables' coverage counted."""
    return {ITEMS_MISSING_FROM_ITEMS_FILE: missing_items, USERS_MISSING_FROM_USERS_FILE: missing_users,
            INTERACTIONS_FILTERED_OUT: filtered_out, **_coverage_counts(interactions, items, users)}


def _coverage_counts(interactions: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame) -> dict[str, int]:
    # isin over the distinct ids: pandas' string arrays look each value of the argument up one by one.
    return {
        ITEMS_WITHOUT_INTERACTIONS: int((~items[ITEM_ID].isin(interactions[ITEM_ID].unique())).sum()),
        USERS_WITHOUT_INTERACTIONS: int((~users[USER_ID].isin(interactions[USER_ID].unique())).sum()),
    }


def first_user_ids(user_ids: Sequence[str], max_users: int) -> np.ndarray:
    """The ``max_users`` smallest of ``user_ids``: in numeric order when all are integers, else as strings."""
    user_ids = np.asarray(user_ids, dtype=str)
    return user_ids[user_order(user_ids)[:max_users]]


def keep_first_users(data: InteractionData, max_users: int) -> InteractionData:
    """The interactions and features of the ``max_users`` interacting users with the smallest ids; the whole catalog.

    A small, reproducible slice for tests and quick runs; the coverage counts describe the slice.
    """
    kept_user_ids = first_user_ids(pd.unique(data.interactions[USER_ID]), max_users)
    interactions = data.interactions[data.interactions[USER_ID].isin(kept_user_ids)].reset_index(drop=True)
    users = data.users[data.users[USER_ID].isin(kept_user_ids)].reset_index(drop=True)
    counts = {**data.policy_counts, **_coverage_counts(interactions, data.items, users)}
    return dataclasses.replace(data, interactions=interactions, users=users, policy_counts=counts)


# --- Reading the interactions in pieces (the Beam preprocessing) ---------------------------------

def interactions_file(folder: str | os.PathLike) -> pathlib.Path:
    """The interactions file of an own-data folder (its ``dataset.yaml`` may name it).

    Raises:
      DataError: no interactions file, two of them, or a bad configuration.
    """
    folder = pathlib.Path(folder)
    return _table_path(folder, INTERACTIONS, read_dataset_config(folder))


def read_interaction_lines(path: str | os.PathLike, header: bytes, lines: bytes, first_line: int,
                           config: DatasetConfig) -> tuple[pd.DataFrame, np.ndarray]:
    """Reads whole lines of a CSV or TSV interactions file, checked and filtered as the whole file is.

    Lets a large file be read by many workers, each a piece of it: every check of
    ``read_interaction_folder`` applies, and an error names the line in the whole file. A piece
    must end at a line break outside quotes (one interaction per line, which event logs are).

    Args:
      path: the file, for messages and its format (``.csv`` or ``.tsv``).
      header: the file's first line.
      lines: the piece, whole lines.
      first_line: the file line of the piece's first line (the header is line 1).
      config: the folder's configuration (``read_dataset_config``): renames and filters.

    Returns:
      The kept interactions (``InteractionData.interactions`` columns) and [K] a position for each
      that increases in file order across pieces (the file line where every row is one line), which
      orders interactions of equal timestamp as the file does.
    """
    if not lines.strip():
        return pd.DataFrame({USER_ID: [], ITEM_ID: [], TIMESTAMP: np.array([], np.int64),
                             RATING: np.array([], np.float32)}), np.array([], np.int64)
    try:
        text = decode_utf8(path, header + b"\n" + lines)
    except DataError as error:
        line = error.line if error.line == 1 else error.line + first_line - 2  # line 1: the header
        raise DataError(error.path, line, None, error.problem) from None
    source = _text_table(path, text, _separator(path), line_offset=first_line - 2)
    interactions, keep = _filtered_interactions(source, config)
    return interactions[keep].reset_index(drop=True), first_line + np.flatnonzero(keep)


def read_interaction_rows(path: str | os.PathLike, rows: pd.DataFrame, first_row: int,
                          config: DatasetConfig) -> tuple[pd.DataFrame, np.ndarray]:
    """As `read_interaction_lines`, for rows of a Parquet file (a row group): ``first_row`` is the
    file row of the first (0-based); errors and the returned positions count rows from 1."""
    source = _SourceTable(str(path), rows.reset_index(drop=True), lambda row: row + first_row + 1)
    interactions, keep = _filtered_interactions(source, config)
    return interactions[keep].reset_index(drop=True), first_row + 1 + np.flatnonzero(keep)


def catalog_item_ids(folder: str | os.PathLike) -> np.ndarray:
    """The ids of the folder's items file in file order ([0] without one): the start of the catalog,
    which the items nobody listed but someone chose follow (in the order they first appear)."""
    folder = pathlib.Path(folder)
    config = read_dataset_config(folder)
    path = _table_path(folder, ITEMS, config, required=False)
    if path is None:
        return np.array([], dtype=object)
    source = _read_table(path)
    columns = _columns(source, config.items, config, ITEMS, required=(ITEM_ID,))
    return _ids(source, columns[ITEM_ID])


# --- Reading one file -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _SourceTable:
    """A table as its file holds it: the file's columns (text for CSV and TSV), rows in file order.

    Attributes:
      path: the file, for messages.
      rows: the table, RangeIndex.
      line_of_row: the file line of a row (1-based; a quoted value may span lines).
    """

    path: str
    rows: pd.DataFrame
    line_of_row: Callable[[int], int]

    def fail(self, row: int, column: str | None, problem: str) -> DataError:
        """The error for ``row``'s ``column``, to raise."""
        return DataError(self.path, self.line_of_row(row), column, problem)

    def raise_at_first(self, bad: np.ndarray, column: str, problem: str) -> None:
        """Raises for the first True of ``bad``, quoting that row's value of ``column``."""
        raise_at_first(self.path, bad, self.rows[column], problem, self.line_of_row)


def headerless_line(row: int) -> int:
    """The line of a row in a file without a header."""
    return row + 1


def raise_at_first(path: str, bad: np.ndarray, values: pd.Series, problem: str,
                   line_of_row: Callable[[int], int] = headerless_line) -> None:
    """Raises a DataError for the first True in ``bad``, quoting that row's value of ``values``.

    Checks run vectorised over whole columns; only a failing one looks for its first bad row.
    """
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(path, line_of_row(row), str(values.name), f"{str(values.iloc[row])!r} {problem}")


def _read_table(path: str | os.PathLike) -> _SourceTable:
    """Reads a ``.csv``, ``.tsv`` (UTF-8, a header row; every column as text) or ``.parquet`` file.

    Raises:
      DataError: the file is empty, has no rows, is not UTF-8 or does not parse.
    """
    path = pathlib.Path(path)
    if path.suffix == ".parquet":
        return _read_parquet(path)
    data = path.read_bytes()
    if not data.strip():
        raise DataError(path, None, None, "file is empty")
    return _text_table(path, decode_utf8(path, data), _separator(path))


def _separator(path: str | os.PathLike) -> str:
    return "\t" if pathlib.Path(path).suffix == ".tsv" else ","


def _text_table(path: str | os.PathLike, text: str, separator: str, line_offset: int = 0) -> _SourceTable:
    """A header row and the rows after it; ``line_offset`` is added to every line an error names
    (the text is a chunk of a larger file, its header prepended)."""
    try:  # The header is read as a row, so that a row longer than it is an error, not an index column.
        rows = pd.read_csv(io.StringIO(text), sep=separator, header=None, dtype=str, keep_default_na=False)
    except pd.errors.ParserError as error:
        located = tokenizer_error(path, error)
        raise DataError(located.path, None if located.line is None else located.line + line_offset, None,
                        located.problem) from None
    header = [name.strip() for name in rows.iloc[0]]
    repeated = [name for position, name in enumerate(header) if name in header[:position]]
    if repeated:
        raise DataError(path, 1, repeated[0], "the column appears twice in the header")
    rows = rows.iloc[1:].reset_index(drop=True)
    rows.columns = header
    if rows.empty:
        raise DataError(path, None, None, "has a header but no rows")
    line_in_text = _line_finder(text, separator)
    return _SourceTable(str(path), rows, lambda row: line_in_text(row) + line_offset)


def decode_utf8(path: str | os.PathLike, data: bytes) -> str:
    """``data`` as text; a byte that is not UTF-8 raises a DataError naming its line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DataError(path, line, None, (
            f"is not UTF-8 text (byte 0x{data[error.start]:02x}); save the file as UTF-8")) from None


def tokenizer_error(path: str | os.PathLike, error: pd.errors.ParserError) -> DataError:
    """pandas' error for a row of the wrong length, located and reworded (to raise)."""
    counts = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(error))
    if counts is None:
        return DataError(path, None, None, f"does not parse: {str(error).strip()}")
    expected, line, found = map(int, counts.groups())
    return DataError(path, line, None, f"{found} fields where the header has {expected} (a separator inside "
                                       "a value needs the value in double quotes)")


def _read_parquet(path: pathlib.Path) -> _SourceTable:
    import pyarrow  # pandas reads Parquet through it; named here for its error class.

    try:
        rows = pd.read_parquet(path)
    except (pyarrow.ArrowException, OSError) as error:
        raise DataError(path, None, None, f"is not a readable Parquet file: {error}") from None
    if rows.empty:
        raise DataError(path, None, None, "file is empty (no rows)")
    rows = rows.reset_index(drop=True)
    rows.columns = [str(name) for name in rows.columns]
    return _SourceTable(str(path), rows, headerless_line)


def _line_finder(text: str, separator: str) -> Callable[[int], int]:
    """The file line of a data row, worked out only when an error needs it.

    pandas numbers rows, not lines: a quoted value can span lines and blank lines are skipped, so
    the line is found by reading the file again with the same rules.
    """
    def line_of_row(row: int) -> int:
        reader = csv.reader(io.StringIO(text), delimiter=separator)
        index, start = -2, 1  # the first record that is not blank is the header, row -1
        for record in reader:
            index += bool(record)
            if record and index == row:
                return start
            start = reader.line_num + 1
        raise IndexError(f"row {row} is not in the file")

    return line_of_row


def _table_path(folder: pathlib.Path, table: str, config: DatasetConfig, *,
                required: bool = True) -> pathlib.Path | None:
    """The configured file of ``table``, or the one ``<table>.csv|.tsv|.parquet`` there is."""
    named = getattr(config, table).file
    if named is not None:
        path = folder / named
        if path.suffix not in TABLE_SUFFIXES:
            raise config.fail(f"{table}.file", f"{named!r}: expected a {', '.join(TABLE_SUFFIXES)} file")
        if not path.is_file():
            raise config.fail(f"{table}.file", f"{path} does not exist")
        return path
    found = [folder / (table + suffix) for suffix in TABLE_SUFFIXES if (folder / (table + suffix)).is_file()]
    if len(found) > 1:
        raise DataError(folder, None, None, f"holds {' and '.join(path.name for path in found)}: keep one, "
                                            f"or name the {table} file in dataset.yaml")
    if not found and required:
        raise DataError(folder, None, None, f"no {table}.csv, {table}.tsv or {table}.parquet here (the {table} "
                                            f"file holds user_id, item_id, timestamp and optionally rating)")
    return found[0] if found else None


def _columns(source: _SourceTable, table: TableConfig, config: DatasetConfig, table_name: str,
             required: Sequence[str]) -> dict[str, str]:
    """Every column's name in the pipeline -> its name in the file, renames applied and checked."""
    header = list(source.rows.columns)
    for name, column in table.columns.items():
        if column not in header:
            raise config.fail(f"{table_name}.columns.{name}", f"no column {column!r} in {source.path}; "
                                                              f"its columns are {header}")
    renamed = {column: name for name, column in table.columns.items()}
    columns = {renamed.get(column, column): column for column in header}
    if len(columns) != len(header):
        raise config.fail(f"{table_name}.columns", f"renaming gives two columns of {source.path} the same name")
    missing = [name for name in required if name not in columns]
    if missing:
        raise DataError(source.path, 1, None, (
            f"no column {' and no '.join(map(repr, missing))}: the header has {header} "
            f"(dataset.yaml renames columns: {table_name}: {{columns: {{{missing[0]}: <your column>}}}})"))
    return columns


def read_interactions_file(path: str | os.PathLike) -> tuple[pd.DataFrame, Callable[[int], int]]:
    """One interactions file of the contract, checked as a folder's is (without a dataset.yaml).

    Returns:
      The table (``InteractionData.interactions``' columns) and the file line of each row, for
      messages about a row that only a later check finds wrong.
    """
    source = _read_table(path)
    return _interactions(source, DatasetConfig())[0], source.line_of_row


def _interactions(source: _SourceTable, config: DatasetConfig) -> tuple[pd.DataFrame, dict[str, str]]:
    """The contract's columns of an interactions file, and every column's name in the file."""
    columns = _columns(source, config.interactions, config, INTERACTIONS, required=(USER_ID, ITEM_ID, TIMESTAMP))
    rating_column = columns.get(RATING, columns.get(WEIGHT))
    return pd.DataFrame({
        USER_ID: _ids(source, columns[USER_ID]),
        ITEM_ID: _ids(source, columns[ITEM_ID]),
        TIMESTAMP: _timestamps(source, columns[TIMESTAMP]),
        RATING: (np.ones(len(source.rows), np.float32) if rating_column is None
                 else _numbers(source, rating_column, missing_allowed=False).astype(np.float32)),
    }), columns


def _read_interactions(path: pathlib.Path, config: DatasetConfig) -> tuple[pd.DataFrame, int]:
    """The interactions table, then the configured filters; returns it and how many rows they removed."""
    interactions, keep = _filtered_interactions(_read_table(path), config)
    if not keep.any():
        raise config.fail("interactions.filter", f"the filters keep none of the {len(keep)} rows of {path}")
    return interactions[keep].reset_index(drop=True), int((~keep).sum())


def _filtered_interactions(source: _SourceTable, config: DatasetConfig) -> tuple[pd.DataFrame, np.ndarray]:
    """Every row of ``source`` in the contract's columns, and [N] which rows the configured filters keep."""
    interactions, columns = _interactions(source, config)
    keep = np.ones(len(interactions), dtype=bool)
    for row_filter in config.interactions.filters:
        keep &= _filter_keeps(source, interactions, columns, row_filter, config)
    return interactions, keep


def _filter_keeps(source: _SourceTable, interactions: pd.DataFrame, columns: dict[str, str], row_filter: RowFilter,
                  config: DatasetConfig) -> np.ndarray:
    """[N] which rows pass ``row_filter``; a row with no value in the column never passes a comparison of numbers.

    The filter may name a column by its contract name or by its name in the file (``stars`` renamed
    to ``rating``): a user writes what they see in their own header.
    """
    renamed = {file_column: name for name, file_column in columns.items()}
    name = row_filter.column if row_filter.column in columns else renamed.get(row_filter.column, row_filter.column)
    if name not in columns and name not in interactions:
        raise config.fail("interactions.filter", f"{row_filter.text!r}: no column {name!r} in {source.path}; "
                                                 f"its columns are {list(source.rows.columns)}")
    if isinstance(row_filter.value, str):
        values = interactions[name] if name in interactions else _as_text(source.rows[columns[name]]).str.strip()
        return row_filter.keeps(values.to_numpy())
    if name in (TIMESTAMP, RATING):
        numbers = interactions[name].to_numpy(np.float64)
    else:
        numbers = _numbers(source, columns[name], missing_allowed=True)
    return row_filter.keeps(numbers) & ~np.isnan(numbers)


def _read_features(folder: pathlib.Path, table_name: str, id_name: str, config: DatasetConfig,
                   interacting_ids: pd.Series) -> tuple[pd.DataFrame, tuple[FeatureSpec, ...], int]:
    """A feature table with a row for every interacting id; its specs; how many ids it had to add."""
    table = getattr(config, table_name)
    path = _table_path(folder, table_name, config, required=False)
    if path is None:
        if table.features or table.columns:
            raise config.fail(table_name, f"there is no {table_name} file in {folder} to take features from")
        return pd.DataFrame({id_name: pd.unique(interacting_ids)}), (), 0
    source = _read_table(path)
    columns = _columns(source, table, config, table_name, required=(id_name,))
    for name in table.features:
        if name not in columns:
            raise config.fail(f"{table_name}.features.{name}", f"no column {name!r} in {path}; "
                                                               f"its columns are {list(columns)}")
    ids = _ids(source, columns[id_name])
    _check_unique(source, ids, columns[id_name])
    specs, values = [], {id_name: ids}
    for name, column in columns.items():
        kind = None if name == id_name else table.features.get(name) or infer_feature_kind(source.rows[column])
        if kind in (None, IGNORE):
            continue
        try:
            specs.append(FeatureSpec(name, kind))
        except ValueError as error:
            raise DataError(path, 1, column, f"{error}: rename the column or ignore it in dataset.yaml") from None
        values[name] = _cells(source, column, kind)
    missing_ids = pd.unique(interacting_ids[~interacting_ids.isin(ids)])
    features = pd.DataFrame(values)
    if len(missing_ids):
        features = pd.concat([features, _missing_rows(id_name, missing_ids, specs)], ignore_index=True)
    return features, tuple(specs), len(missing_ids)


def read_feature_file(path: str | os.PathLike, id_name: str, specs: Sequence[FeatureSpec]) -> pd.DataFrame:
    """A users or items file read with the kinds of ``specs`` (an export's), not inferred ones.

    Columns that are not among ``specs`` are ignored; every spec's column must be there.

    Raises:
      DataError: a missing column, an empty or repeated id, a value not of its kind (with its line).
    """
    source = _read_table(path)
    missing = [name for name in (id_name, *(spec.name for spec in specs)) if name not in source.rows.columns]
    if missing:
        raise DataError(path, 1, None, f"no column {' and no '.join(map(repr, missing))}: the header has "
                                       f"{list(source.rows.columns)}")
    ids = _ids(source, id_name)
    _check_unique(source, ids, id_name)
    return pd.DataFrame({id_name: ids, **{spec.name: _cells(source, spec.name, spec.kind) for spec in specs}})


def _missing_rows(id_name: str, ids: np.ndarray, specs: Sequence[FeatureSpec]) -> pd.DataFrame:
    """Rows for ``ids`` with every feature missing (``contracts.MISSING_VALUES``)."""
    return pd.DataFrame({id_name: ids, **{spec.name: [MISSING_VALUES[spec.kind]] * len(ids) for spec in specs}})


def _title(config: DatasetConfig, item_features: Sequence[FeatureSpec]) -> str | None:
    names = [spec.name for spec in item_features]
    title = config.items.title
    if title is None:
        return DEFAULT_TITLE if DEFAULT_TITLE in names else None
    if title not in names:
        raise config.fail("items.title", f"{title!r} is not an item feature; the item features are {names}")
    return title


# --- Cells ---------------------------------------------------------------------------------------

def _as_text(values: pd.Series) -> pd.Series:
    """Cells as strings, "" where missing; whole floats (Parquet's integers with gaps) without ".0"."""
    if pd.api.types.is_float_dtype(values):
        return values.map(lambda value: "" if math.isnan(value) else
                          str(int(value)) if value.is_integer() else repr(value))
    return values.fillna("").astype(str)


def _ids(source: _SourceTable, column: str) -> np.ndarray:
    ids = _as_text(source.rows[column]).str.strip()
    empty = (ids == "").to_numpy()
    if empty.any():
        raise source.fail(int(np.argmax(empty)), column, "the id is empty")
    return ids.to_numpy(dtype=object)


def _check_unique(source: _SourceTable, ids: np.ndarray, column: str) -> None:
    repeated = pd.Series(ids).duplicated().to_numpy()
    if repeated.any():
        row = int(np.argmax(repeated))
        first = int(np.argmax(ids == ids[row]))
        raise source.fail(row, column, f"{ids[row]!r} is already on line {source.line_of_row(first)}: "
                                       "each id has one row")


def _timestamps(source: _SourceTable, column: str) -> np.ndarray:
    seconds = unix_seconds(source.rows[column])
    source.raise_at_first(seconds.isna().to_numpy(), column, (
        "is not a time: the column holds Unix seconds or ISO 8601 dates and times (its first row says which)"))
    return np.floor(seconds.to_numpy()).astype(np.int64)


def _numbers(source: _SourceTable, column: str, *, missing_allowed: bool) -> np.ndarray:
    """[N] float64 of a column; NaN for blank cells where ``missing_allowed``, else they are errors."""
    values = source.rows[column]
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        numbers = values.to_numpy(np.float64)
        bad = np.zeros(len(numbers), dtype=bool) if missing_allowed else np.isnan(numbers)
    else:
        text = _as_text(values).str.strip()
        numbers = pd.to_numeric(text, errors="coerce").to_numpy(np.float64)
        bad = ~np.isfinite(numbers) & ((text != "").to_numpy() | (not missing_allowed))
    source.raise_at_first(bad, column, "is not a number")
    return numbers


def _cells(source: _SourceTable, column: str, kind: str) -> np.ndarray | list:
    """A feature column in the representation of ``InteractionData``'s docstring."""
    if kind == NUMERIC:
        return _numbers(source, column, missing_allowed=True)
    if kind == MULTI_CATEGORICAL:
        return [_value_set(cell) for cell in source.rows[column]]
    return _as_text(source.rows[column]).str.strip().to_numpy(dtype=object)


def _value_set(cell: object) -> tuple[str, ...]:
    if is_list_cell(cell):
        parts = [str(value) for value in cell]
    elif cell is None or (isinstance(cell, float) and math.isnan(cell)):
        parts = []
    else:
        parts = str(cell).split(MULTI_VALUE_SEPARATOR)
    return tuple(part.strip() for part in parts if part.strip())
