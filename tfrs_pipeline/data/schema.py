"""DatasetSchema: what a data set's tables hold, and how a folder declares it.

Convention first, configuration when needed: the reader infers each feature's kind from its values
(``infer_feature_kind``) and an optional ``dataset.yaml`` / ``dataset.json`` beside the files
(``read_dataset_config``) names the files, renames columns, overrides or drops feature kinds,
filters interactions, names the title column and chooses the split. The schema travels with the
tables (``InteractionData.schema``), so models, exports and clients are built from it and never
from a data set's column names.

A configuration, every key optional::

    interactions:
      file: events.csv                      # default: interactions.csv, .tsv or .parquet
      columns: {user_id: customer, item_id: sku, timestamp: ts, rating: stars}
      filter: "rating >= 4"                 # or a list; COLUMN OP VALUE, OP in >= > <= < == !=
    items:
      file: products.parquet                # default: items.csv, .tsv or .parquet
      columns: {item_id: sku}               # also renames features: {name in the model: column}
      features: {price: numeric, description: text, internal_code: ignore}
      title: name                           # default: the feature called "title", if any
    users:
      features: {age: numeric}
    split: {kind: time_cut, test_start: "2003-01-01"}   # or test_share: 0.1; default leave_last_out
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import operator
import os
import pathlib
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from tfrs_pipeline.contracts import CATEGORICAL, FEATURE_KINDS, MULTI_CATEGORICAL, NUMERIC, TEXT, FeatureSchema
from tfrs_pipeline.data.errors import DataError

LEAVE_LAST_OUT = "leave_last_out"  # each user's last interaction (ties: file order) is the test item
TIME_CUT = "time_cut"  # interactions at or after a global time are the test period
SPLIT_KINDS = (LEAVE_LAST_OUT, TIME_CUT)

# The contract's column names (``InteractionData``): what ``columns:`` in a configuration renames to.
USER_ID = "user_id"
ITEM_ID = "item_id"
TIMESTAMP = "timestamp"
RATING = "rating"
INTERACTION_COLUMNS = (USER_ID, ITEM_ID, TIMESTAMP, RATING)

IGNORE = "ignore"  # a feature kind in a configuration: leave the column out
CONFIG_FILES = ("dataset.yaml", "dataset.json")

# Text: several words per value on average, mostly distinct values (titles, descriptions), rather
# than a label repeated across rows ("Science Fiction & Fantasy").
TEXT_MIN_MEAN_WORDS = 3.0
TEXT_MIN_DISTINCT_SHARE = 0.5
_NUMBER = r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?"
_LEADING_ZERO = r"[+-]?0\d"  # "02139", "007": codes that a number would mangle


@dataclasses.dataclass(frozen=True)
class SplitRule:
    """How the held-out test interactions are chosen.

    Attributes:
      kind: ``leave_last_out`` or ``time_cut``.
      test_start: ``time_cut`` only: Unix seconds where the test period starts; None means the time
        that leaves ``test_share`` of the interactions after it.
      test_share: ``time_cut`` only, when ``test_start`` is None.
    """

    kind: str = LEAVE_LAST_OUT
    test_start: int | None = None
    test_share: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in SPLIT_KINDS:
            raise ValueError(f"split kind must be one of {SPLIT_KINDS}, got {self.kind!r}")
        if not 0 < self.test_share < 1:
            raise ValueError(f"split test_share must be in (0, 1), got {self.test_share}")


@dataclasses.dataclass(frozen=True)
class DatasetSchema:
    """The features of a data set, the column shown as an item's title, and its split rule.

    Attributes:
      features: user and item features (names are column names of ``users`` / ``items``).
      title_feature: the ``items`` column shown to people as an item's name, or None (the id is shown).
      split: how the test interactions are chosen.
    """

    features: FeatureSchema = FeatureSchema()
    title_feature: str | None = None
    split: SplitRule = SplitRule()


def infer_feature_kind(values: pd.Series | Sequence[Any]) -> str:
    """The kind of a feature column, judged from its values (missing and blank cells are skipped).

    - ``numeric``: a numeric column, or every value is a number written without leading zeros
      ("02139" is a zip code, not 2139);
    - ``text``: several words per value on average (``TEXT_MIN_MEAN_WORDS``) and mostly distinct
      values (``TEXT_MIN_DISTINCT_SHARE``): titles, descriptions;
    - ``multi_categorical``: some value holds ``|``-separated parts ("Comedy|Drama"), or the cells
      are lists (Parquet);
    - ``categorical``: anything else, including a column with no value at all.
    """
    values = pd.Series(values)
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return NUMERIC
    present = values[values.notna()]
    if present.map(is_list_cell).any():
        return MULTI_CATEGORICAL
    text = present.astype(str).str.strip()
    text = text[text != ""]
    if text.empty:
        return CATEGORICAL
    if text.str.fullmatch(_NUMBER).all() and not text.str.match(_LEADING_ZERO).any():
        return NUMERIC
    if (text.str.split().str.len().mean() >= TEXT_MIN_MEAN_WORDS
            and text.nunique() >= TEXT_MIN_DISTINCT_SHARE * len(text)):
        return TEXT
    if text.str.contains("|", regex=False).any():
        return MULTI_CATEGORICAL
    return CATEGORICAL


def is_list_cell(value: Any) -> bool:
    """Whether a cell holds several values itself (a Parquet list column), not a string to split."""
    return isinstance(value, (list, tuple, np.ndarray))


def unix_seconds(values: pd.Series) -> pd.Series:
    """Times as Unix seconds (float64; NaN where a value is missing or does not parse).

    Numbers are seconds already. Otherwise values are ISO 8601 dates or times ("2003-01-01",
    "2003-01-01T08:30:00+02:00"); a time without a zone is UTC. Within a column the first value
    decides which of the two the column holds, so a stray date among numbers is reported, not guessed.
    """
    if pd.api.types.is_datetime64_any_dtype(values):
        return _datetime_seconds(pd.to_datetime(values, utc=True))
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values.astype(np.float64)
    text = values.fillna("").astype(str).str.strip()
    numbers = pd.to_numeric(text, errors="coerce").astype(np.float64)
    numbers[~np.isfinite(numbers)] = np.nan  # "inf" is no time
    if len(text) and not np.isnan(numbers.iloc[0]):
        return numbers
    return _datetime_seconds(pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce"))


def _datetime_seconds(times: pd.Series) -> pd.Series:
    return (times - pd.Timestamp(0, tz="UTC")).dt.total_seconds()


# --- dataset.yaml / dataset.json -----------------------------------------------------------------

_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq, "!=": operator.ne,
}
_FILTER = re.compile(r"\s*([^\s<>=!]+)\s*(>=|<=|==|!=|>|<)\s*([^\s<>=!].*?)?\s*")


@dataclasses.dataclass(frozen=True)
class RowFilter:
    """``COLUMN OP VALUE``: keeps the interactions whose ``COLUMN`` compares true with ``VALUE``.

    Attributes:
      column: a contract column (``rating``, ``timestamp``, ...) or another column of the file.
      operator: one of ``>=``, ``>``, ``<=``, ``<``, ``==``, ``!=``.
      value: a number (compared with the column's numbers; for ``timestamp``, Unix seconds, also
        when written as a date) or a string (``==`` and ``!=`` only).
      text: the filter as written, for messages.
    """

    column: str
    operator: str
    value: float | str
    text: str

    def keeps(self, values: np.ndarray) -> np.ndarray:
        """[N] bool: which of ``values`` (numbers, or strings for a string value) pass."""
        return np.asarray(_OPERATORS[self.operator](values, self.value), dtype=bool)


@dataclasses.dataclass(frozen=True)
class TableConfig:
    """What a configuration says about one table; empty means "the conventions".

    Attributes:
      file: the file's name in the folder, or None to look for ``<table>.csv|.tsv|.parquet``.
      columns: name in the pipeline -> the file's column holding it (ids and features alike).
      features: feature name (as renamed) -> a kind of ``contracts.FEATURE_KINDS``, or ``ignore``.
      filters: interactions only: every filter must keep a row for it to stay.
      title: items only: the feature shown as an item's name.
    """

    file: str | None = None
    columns: Mapping[str, str] = dataclasses.field(default_factory=dict)
    features: Mapping[str, str] = dataclasses.field(default_factory=dict)
    filters: tuple[RowFilter, ...] = ()
    title: str | None = None


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """A folder's ``dataset.yaml`` / ``dataset.json``, checked; the defaults when there is none.

    Attributes:
      path: the configuration file (named in errors about its keys), or None.
      interactions, items, users: what it says about each table.
      split: the split rule it chooses.
    """

    path: str | None = None
    interactions: TableConfig = dataclasses.field(default_factory=TableConfig)
    items: TableConfig = dataclasses.field(default_factory=TableConfig)
    users: TableConfig = dataclasses.field(default_factory=TableConfig)
    split: SplitRule = dataclasses.field(default_factory=SplitRule)

    def fail(self, key: str | None, problem: str) -> DataError:
        """The error for a bad value of ``key`` (dotted, e.g. ``items.title``), to raise."""
        return DataError(self.path, None, key, problem)


_TABLE_KEYS = {
    "interactions": ("file", "columns", "filter"),
    "items": ("file", "columns", "features", "title"),
    "users": ("file", "columns", "features"),
}
_SPLIT_KEYS = ("kind", "test_start", "test_share")


def read_dataset_config(folder: str | os.PathLike) -> DatasetConfig:
    """Reads and checks the folder's ``dataset.yaml`` or ``dataset.json``, if it has one.

    Args:
      folder: the data folder.

    Returns:
      The configuration; ``DatasetConfig()`` (the conventions) when the folder has neither file.

    Raises:
      DataError: both files, a file that does not parse, an unknown key or a bad value; the
        message names the file and the key (``items.features.price``).
    """
    present = [pathlib.Path(folder) / name for name in CONFIG_FILES if (pathlib.Path(folder) / name).is_file()]
    if not present:
        return DatasetConfig()
    if len(present) > 1:
        raise DataError(folder, None, None, f"holds both {CONFIG_FILES[0]} and {CONFIG_FILES[1]}: keep one")
    path = present[0]
    config = DatasetConfig(path=str(path))
    value = _parse_config_file(path)
    if value is None:
        return config
    _check_keys(config, _mapping(config, value, ""), (*_TABLE_KEYS, "split"))
    tables = {name: _table_config(config, name, value.get(name)) for name in _TABLE_KEYS}
    return dataclasses.replace(config, **tables, split=_split_rule(config, value.get("split")))


def _parse_config_file(path: pathlib.Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(path, error.lineno, None, f"is not valid JSON: {error.msg}") from None
    try:
        import yaml  # Only .yaml needs it (an install requirement, but the JSON form works without).
    except ImportError:
        raise DataError(path, None, None, "reading YAML needs PyYAML (pip install pyyaml); "
                                          "or write the same keys as dataset.json") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise DataError(path, None if mark is None else mark.line + 1, None,
                        f"is not valid YAML: {getattr(error, 'problem', error)}") from None


def _table_config(config: DatasetConfig, table: str, value: Any) -> TableConfig:
    if value is None:
        return TableConfig()
    value = _mapping(config, value, table)
    _check_keys(config, value, _TABLE_KEYS[table], table)
    columns = {name: _string(config, column, f"{table}.columns.{name}")
               for name, column in _mapping(config, value.get("columns", {}), f"{table}.columns").items()}
    if table == "interactions":
        _check_keys(config, columns, INTERACTION_COLUMNS, "interactions.columns")
    features = {name: _feature_kind(config, kind, f"{table}.features.{name}")
                for name, kind in _mapping(config, value.get("features", {}), f"{table}.features").items()}
    written_filters = value.get("filter", [])
    written_filters = [written_filters] if isinstance(written_filters, str) else written_filters
    if not isinstance(written_filters, list):
        raise config.fail(f"{table}.filter", f"expected a filter such as 'rating >= 4' or a list of them, "
                                             f"got {written_filters!r}")
    return TableConfig(
        file=None if value.get("file") is None else _string(config, value["file"], f"{table}.file"),
        columns=columns,
        features=features,
        filters=tuple(_row_filter(config, text, f"{table}.filter") for text in written_filters),
        title=None if value.get("title") is None else _string(config, value["title"], f"{table}.title"),
    )


def _feature_kind(config: DatasetConfig, kind: Any, key: str) -> str:
    if kind not in (*FEATURE_KINDS, IGNORE):
        raise config.fail(key, f"{kind!r} is not a feature kind; expected one of {(*FEATURE_KINDS, IGNORE)}")
    return kind


def _row_filter(config: DatasetConfig, text: Any, key: str) -> RowFilter:
    """Parses ``COLUMN OP VALUE`` (never evaluated as code)."""
    match = _FILTER.fullmatch(text) if isinstance(text, str) else None
    if match is None or not match.group(3):
        raise config.fail(key, f"{text!r} is not COLUMN OP VALUE with OP one of {tuple(_OPERATORS)}, "
                               "e.g. 'rating >= 4'")
    column, op, written = match.groups()
    quoted = len(written) >= 2 and written[0] == written[-1] and written[0] in "'\""
    if quoted:
        value: float | str = written[1:-1]
    elif column == TIMESTAMP:
        value = _time(config, written, key)
    else:
        value = float(written) if re.fullmatch(_NUMBER, written) else written
    if isinstance(value, str) and op not in ("==", "!="):
        raise config.fail(key, f"{text!r}: {op} needs a number (strings compare with == or != only)")
    return RowFilter(column, op, value, text)


def _split_rule(config: DatasetConfig, value: Any) -> SplitRule:
    if value is None:
        return SplitRule()
    value = _mapping(config, value, "split")
    _check_keys(config, value, _SPLIT_KEYS, "split")
    kind = value.get("kind", TIME_CUT if {"test_start", "test_share"} & set(value) else LEAVE_LAST_OUT)
    if kind == LEAVE_LAST_OUT and {"test_start", "test_share"} & set(value):
        raise config.fail("split", "test_start and test_share choose a time_cut split, not leave_last_out")
    test_share = value.get("test_share", SplitRule.test_share)
    if isinstance(test_share, bool) or not isinstance(test_share, (int, float)):
        raise config.fail("split.test_share", f"expected a number between 0 and 1, got {test_share!r}")
    test_start = value.get("test_start")
    test_start = None if test_start is None else int(_time(config, test_start, "split.test_start"))
    try:
        return SplitRule(kind, test_start, float(test_share))
    except ValueError as error:
        raise config.fail("split", str(error)) from None


def _time(config: DatasetConfig, value: Any, key: str) -> float:
    """Unix seconds of a number, an ISO 8601 string or a date YAML has already parsed."""
    if isinstance(value, (datetime.date, datetime.datetime)):
        value = pd.Timestamp(value).isoformat()
    seconds = np.nan if isinstance(value, bool) else unix_seconds(pd.Series([value])).iloc[0]
    if np.isnan(seconds):
        raise config.fail(key, f"{value!r} is not Unix seconds or an ISO 8601 date or time")
    return float(seconds)


def _mapping(config: DatasetConfig, value: Any, key: str) -> dict:
    if not isinstance(value, dict):
        raise config.fail(key or None, f"expected a mapping of keys to values, got {value!r}")
    return value


def _string(config: DatasetConfig, value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise config.fail(key, f"expected a name, got {value!r}")
    return value


def _check_keys(config: DatasetConfig, value: Mapping, allowed: Sequence[str], key: str = "") -> None:
    for name in value:
        if name not in allowed:
            raise config.fail(f"{key}.{name}" if key else str(name),
                              f"unknown key; {key or 'the file'} takes {', '.join(allowed)}")
