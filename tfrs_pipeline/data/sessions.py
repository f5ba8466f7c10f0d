"""Session clickstreams: anonymous sequences of item views, read from the two forms users have.

- ``srgnn``: the benchmark text form of SR-GNN / GCE-GNN (``../shared/data/diginetica``, ``tmall``):
  ``train_sessions.txt`` holds one training session per line, item ids separated by spaces in click
  order; ``test.tsv`` (optional) holds one test case per line, ``prefix item ids<TAB>next item id``.
- ``events``: a user's own raw events, one CSV file with a header row and one row per click. The
  columns are found by name, case-insensitively (``SESSION_COLUMNS``, ``ITEM_COLUMNS``,
  ``TIME_COLUMNS``, e.g. ``session_id,item_id,timestamp`` or DIGINETICA's
  ``sessionId;userId;itemId;timeframe;eventdate``; "," or ";" separated). Clicks are ordered by
  time within a session (ties keep file order); sessions whose first click falls in the last
  ``test_days`` days of the file become test sessions, and every prefix of a test session is a
  test case (prefix -> next item), as in SR-GNN's preprocessing. Timestamps are numbers (seconds)
  or dates.

Both forms become a ``SessionData``: training sessions, and test prefixes with their next items. Test
items never seen in training cannot be predicted by any model and are dropped (as SR-GNN does).
"""
from __future__ import annotations

import csv
import dataclasses
import os
import pathlib

import numpy as np
import pandas as pd

from tfrs_pipeline.data.errors import DataError

SESSION_FORMATS = ("auto", "srgnn", "events")
SRGNN_TRAIN_FILE = "train_sessions.txt"
SRGNN_TEST_FILE = "test.tsv"
SESSION_COLUMNS = ("session_id", "sessionid", "session")
ITEM_COLUMNS = ("item_id", "itemid", "item")
TIME_COLUMNS = ("timestamp", "time", "ts", "eventdate", "event_time", "date")
SECONDS_PER_DAY = 86_400


@dataclasses.dataclass(frozen=True)
class SessionData:
    """Sessions ready for training and evaluation (item ids are strings).

    Attributes:
      train_sessions: per training session, its item ids in click order (every one has 2 or more),
        oldest session first.
      test_prefixes: per test case, the session so far (at least one item).
      test_targets: [cases] the item clicked next.
      source: where the data came from, for messages and the run's record.
    """

    train_sessions: list[np.ndarray]
    test_prefixes: list[np.ndarray]
    test_targets: np.ndarray
    source: str

    @property
    def session_ids(self) -> np.ndarray:
        """[S] an id per training session (its row number), for the per-user example builders."""
        return np.arange(len(self.train_sessions)).astype(str).astype(object)


def load_sessions(data_dir: str | os.PathLike, session_format: str = "auto", test_days: float = 7.0) -> SessionData:
    """Reads a session folder (``srgnn``) or a raw events CSV file or folder (``events``).

    Args:
      data_dir: a folder holding ``train_sessions.txt`` (and ``test.tsv``), or a CSV of events, or
        a folder holding exactly one ``.csv`` file.
      session_format: ``srgnn``, ``events``, or ``auto`` (whichever the folder holds).
      test_days: for events, sessions starting in the last ``test_days`` days are test sessions.

    Raises:
      DataError: the folder holds neither form, or a file has a malformed line, a bad field or no session.
    """
    if session_format not in SESSION_FORMATS:
        raise DataError(data_dir, None, "session_format",
                        f"unknown session format {session_format!r}; expected one of {SESSION_FORMATS}")
    path = pathlib.Path(data_dir)
    if not path.exists():
        raise DataError(path, None, None, "no such file or folder")
    if session_format == "auto":
        session_format = "srgnn" if (path / SRGNN_TRAIN_FILE).is_file() else "events"
    if session_format == "srgnn":
        return _read_srgnn(path)
    return _read_events(_events_file(path), test_days)


def _read_srgnn(folder: pathlib.Path) -> SessionData:
    train_path = folder / SRGNN_TRAIN_FILE
    if not train_path.is_file():
        raise DataError(folder, None, None, f"no {SRGNN_TRAIN_FILE} here (SR-GNN session form)")
    train_sessions = []
    for line_number, line in _lines(train_path):
        items = _item_ids(train_path, line_number, "session", line)
        if len(items) < 2:
            raise DataError(train_path, line_number, "session",
                            f"a training session needs at least 2 items (a prefix and a next item), got {line!r}")
        train_sessions.append(items)
    if not train_sessions:
        raise DataError(train_path, None, None, "the file holds no session")
    prefixes, targets = [], []
    test_path = folder / SRGNN_TEST_FILE
    if test_path.is_file():
        for line_number, line in _lines(test_path):
            fields = line.split("\t")
            if len(fields) != 2:
                raise DataError(test_path, line_number, None,
                                f"expected 'prefix item ids<TAB>next item id', got {len(fields)} tab-separated fields")
            prefixes.append(_item_ids(test_path, line_number, "prefix", fields[0]))
            target = _item_ids(test_path, line_number, "next", fields[1])
            if len(target) != 1:
                raise DataError(test_path, line_number, "next", f"expected one item id, got {fields[1]!r}")
            targets.append(target[0])
    return _without_unseen_test_items(train_sessions, prefixes, np.asarray(targets, dtype=object), str(folder))


def _lines(path: pathlib.Path):
    """(1-based line number, stripped line) of every line: a blank line is an empty session, an error."""
    with open(path, encoding="utf-8") as file:
        for line_number, line in enumerate(file, start=1):
            yield line_number, line.rstrip("\r\n")


def _item_ids(path: pathlib.Path, line_number: int, field: str, text: str) -> np.ndarray:
    items = text.split()
    if not items:
        raise DataError(path, line_number, field, "empty session: no item ids")
    return np.asarray(items, dtype=object)


def _events_file(path: pathlib.Path) -> pathlib.Path:
    if path.is_file():
        return path
    csv_files = sorted(path.glob("*.csv"))
    if len(csv_files) != 1:
        raise DataError(path, None, None,
                        f"unknown session data: expected {SRGNN_TRAIN_FILE} (SR-GNN form) or one events .csv file, "
                        f"found {len(csv_files)} .csv files")
    return csv_files[0]


def _read_events(path: pathlib.Path, test_days: float) -> SessionData:
    with open(path, encoding="utf-8", newline="") as file:
        header_line = file.readline()
    delimiter = ";" if header_line.count(";") > header_line.count(",") else ","
    header = [name.strip().lower() for name in next(csv.reader([header_line], delimiter=delimiter), [])]
    columns = {role: _column(path, header, names) for role, names in
               (("session", SESSION_COLUMNS), ("item", ITEM_COLUMNS), ("time", TIME_COLUMNS))}
    events = pd.read_csv(path, sep=delimiter, dtype=str, keep_default_na=False, skipinitialspace=True,
                         usecols=[header.index(name) for name in columns.values()])
    events.columns = [name.strip().lower() for name in events.columns]
    events = events.rename(columns={name: role for role, name in columns.items()})
    for role in ("session", "item", "time"):
        blank = np.flatnonzero(events[role].str.strip() == "")
        if len(blank):
            raise DataError(path, int(blank[0]) + 2, columns[role], "the field is empty")
    events["seconds"] = _seconds(path, events["time"], columns["time"])
    events["file_order"] = np.arange(len(events))
    events["start"] = events.groupby("session")["seconds"].transform("min")
    # Sessions oldest first (session kNN favours recent ones), each one's clicks in time order.
    events = events.sort_values(["start", "session", "seconds", "file_order"], kind="stable")
    is_test = events["start"].to_numpy() > events["seconds"].max() - test_days * SECONDS_PER_DAY
    train = _grouped_items(events[~is_test])
    if not any(len(items) >= 2 for items in train):
        raise DataError(path, None, None, f"no training session of 2 or more clicks before the last {test_days} days")
    prefixes, targets = [], []
    for items in _grouped_items(events[is_test]):
        for end in range(1, len(items)):
            prefixes.append(items[:end])
            targets.append(items[end])
    return _without_unseen_test_items([items for items in train if len(items) >= 2], prefixes,
                                      np.asarray(targets, dtype=object), str(path))


def _column(path: pathlib.Path, header: list[str], names: tuple[str, ...]) -> str:
    for name in names:
        if name in header:
            return name
    raise DataError(path, 1, None, f"no column named any of {names} in the header {header}")


def _seconds(path: pathlib.Path, times: pd.Series, column: str) -> np.ndarray:
    """Seconds since the epoch; the first row decides whether the column holds numbers or dates."""
    numbers = pd.to_numeric(times, errors="coerce")
    if not np.isnan(numbers.iloc[0]):
        values, kind = numbers, "a number"
    else:
        values, kind = pd.to_datetime(times, errors="coerce", format="mixed"), "a date"
    bad = np.flatnonzero(values.isna().to_numpy())
    if len(bad):
        raise DataError(path, int(bad[0]) + 2, column, f"{times.iloc[bad[0]]!r} is not {kind} like the first row's")
    if kind == "a number":
        return values.to_numpy(np.float64)
    return (values - pd.Timestamp(0)).dt.total_seconds().to_numpy()


def _grouped_items(events: pd.DataFrame) -> list[np.ndarray]:
    return [group.to_numpy(dtype=object) for _, group in events.groupby("session", sort=False)["item"]]


def _without_unseen_test_items(train_sessions: list[np.ndarray], prefixes: list[np.ndarray], targets: np.ndarray,
                               source: str) -> SessionData:
    seen = set(np.concatenate(train_sessions))
    kept_prefixes, kept_targets = [], []
    for prefix, target in zip(prefixes, targets):
        known = np.asarray([item for item in prefix if item in seen], dtype=object)
        if target in seen and len(known):
            kept_prefixes.append(known)
            kept_targets.append(target)
    return SessionData(train_sessions, kept_prefixes, np.asarray(kept_targets, dtype=object), source)
