"""Interactions as they happen, appended to users' recent histories in the online store.

A push reads the current history of each user it names, appends the new items in time order, keeps
the most recent ones the repository holds, and writes the rows back (a Feast push to the online
store). The next request reads the new history, so the answer changes with no retraining. Every
push is also logged as Parquet in the repository's ``data/events/``: the record the next training
run can take in, and what ``materialize`` replays after reloading the exported tables.

Stated policies for events that do not fit:

- a user the store does not know: the event starts that user's history (a new user);
- an item the export's catalog does not hold: an error naming the file and line, and nothing is
  written (``python -m tfrs_pipeline.catalog refresh`` adds items to the catalog first);
- an event older than the latest item the store holds for its user (late, or already applied): it
  is skipped and counted, so the history stays in time order and a replay applies nothing twice.

One process pushes to an embedded SQLite store at a time; with Redis, the same read-append-write
runs in whatever stream job owns a user's events.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import time
import uuid
from typing import Callable, Container

import numpy as np
import pandas as pd

from tfrs_pipeline.atomic import write_bytes_atomically
from tfrs_pipeline.catalog import read_items_file
from tfrs_pipeline.contracts import HISTORY_INPUT, HISTORY_TIMESTAMPS_INPUT, ITEMS_FILE
from tfrs_pipeline.data.errors import DataError
from tfrs_pipeline.data.interactions import headerless_line, read_interactions_file
from tfrs_pipeline.data.schema import TIMESTAMP
from tfrs_pipeline.features.store import (
    DATA_FOLDER,
    EVENTS_FOLDER,
    ITEM_ID,
    LAST_EVENT_FEATURE,
    USER_ID,
    OnlineFeatureStore,
    materialize,
)


@dataclasses.dataclass(frozen=True)
class PushReport:
    """What a push did: events applied, users whose history changed, of them new, late events skipped."""

    events: int
    users: int
    new_users: int
    late_events: int

    def __str__(self) -> str:
        return (f"{self.events} events appended to {self.users} users' histories ({self.new_users} new users); "
                f"{self.late_events} late events skipped")


def read_events(path: str | os.PathLike) -> tuple[pd.DataFrame, Callable[[int], int]]:
    """An events file: the interactions contract's columns (user_id, item_id, timestamp), CSV, TSV or Parquet.

    Returns:
      The events and the file line of each row.

    Raises:
      DataError: a missing column, an empty id, a time that does not parse (with its line).
    """
    return read_interactions_file(path)


def served_item_ids(store: OnlineFeatureStore) -> set[str]:
    """The items the export serves (its items file, which ``catalog refresh`` extends)."""
    return set(read_items_file(store.repo.parent / ITEMS_FILE)[0].item_ids)


def push_events(store: OnlineFeatureStore, events: pd.DataFrame, known_items: Container[str], *,
                source: str = "events", line_of_row: Callable[[int], int] = headerless_line,
                log: bool = True) -> PushReport:
    """Appends ``events`` to their users' recent histories in the online store.

    Args:
      store: the online store.
      events: ``user_id``, ``item_id``, ``timestamp`` (Unix seconds), one row per interaction.
      known_items: the catalog's item ids (``served_item_ids``).
      source: the events' file, named in errors.
      line_of_row: the line of each row in ``source``.
      log: whether to append the events to the repository's event log (a replay does not).

    Raises:
      DataError: an event names an item the catalog does not hold (nothing is written).
      FeatureStoreError: the online store cannot be read or written.
    """
    unknown = ~events[ITEM_ID].map(lambda item_id: item_id in known_items).to_numpy(bool)
    if unknown.any():
        row = int(np.argmax(unknown))
        raise DataError(source, line_of_row(row), ITEM_ID, (
            f"{events[ITEM_ID].iloc[row]!r} is not in the export's catalog ({int(unknown.sum())} events name unknown "
            f"items; add items with python -m tfrs_pipeline.catalog refresh); nothing was written"))
    ordered = events.sort_values([USER_ID, TIMESTAMP], kind="stable")
    user_ids = list(pd.unique(ordered[USER_ID]))
    stored = {user.user_id: user for user in store.users(user_ids)}
    rows, late = [], 0
    for user_id, user_events in ordered.groupby(USER_ID, sort=False):
        user = stored[user_id]
        newer = (user_events[TIMESTAMP] > user.last_event_seconds if user.last_event_seconds is not None
                 else np.ones(len(user_events), bool))
        late += int((~np.asarray(newer)).sum())
        appended = user_events[np.asarray(newer)]
        if len(appended):
            history = [*user.history_item_ids, *appended[ITEM_ID]][-store.history_length:]
            row = {USER_ID: user_id, HISTORY_INPUT: history, LAST_EVENT_FEATURE: int(appended[TIMESTAMP].iloc[-1])}
            if store.description.history_timestamps:
                times = [*user.history_timestamps, *map(int, appended[TIMESTAMP])]
                row[HISTORY_TIMESTAMPS_INPUT] = times[-store.history_length:]
            rows.append(row)
    if rows:
        store.write_histories(pd.DataFrame(rows))
    if log and len(events):
        _log(store.repo, events)
    new_users = sum(not stored[row[USER_ID]].known for row in rows)
    return PushReport(len(events) - late, len(rows), new_users, late)


def _log(repo: pathlib.Path, events: pd.DataFrame) -> None:
    """Appends the events to the repository's log, one Parquet file per push, named in time order."""
    folder = repo / DATA_FOLDER / EVENTS_FOLDER
    folder.mkdir(exist_ok=True)
    name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
    write_bytes_atomically(folder / name, events[[USER_ID, ITEM_ID, TIMESTAMP]].to_parquet(index=False))


def materialize_and_replay(repo: str | os.PathLike) -> PushReport:
    """Loads the online store from the exported tables, then replays the logged events that came after them.

    Events the export's history already holds (trained on, or older) are late and skipped, so a
    replay never applies an event twice.
    """
    materialize(repo)
    store = OnlineFeatureStore(repo)
    logs = sorted((pathlib.Path(repo) / DATA_FOLDER / EVENTS_FOLDER).glob("*.parquet"))
    if not logs:
        return PushReport(0, 0, 0, 0)
    events = pd.concat([pd.read_parquet(path) for path in logs], ignore_index=True)
    return push_events(store, events, served_item_ids(store), log=False)
