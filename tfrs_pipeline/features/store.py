"""The online feature store: each user's features and recent history, read with every request.

An export's user snapshot is frozen at training time: a user who just watched three films gets the
answer they had at export, and at tens of millions of users the snapshot cannot live in every
replica. So every export also writes a Feast feature repository beside its models, and the two-stage
client can read a user's features and most recent items from its online store per request and send
them to the models' ``query_features`` signatures. Events (``features/events.py``) append to the
histories as they happen, so the next answer reflects them with no retraining.

``<export_dir>/feature_repo/`` (``contracts.FEATURE_REPO_DIR``) holds:

- ``feature_store.yaml``: Feast's local provider, a SQLite online store and a file offline store, all
  embedded (no server). Production changes the ``online_store`` entry to Redis (``REDIS_ONLINE_STORE``)
  and nothing else.
- ``features.py``: the definitions for Feast's own CLI (``feast apply``, ``feast ui``); it calls
  ``feature_definitions``, which builds them from the export's description (``../schema.json``).
- ``data/``: the offline tables written at export (``users``, ``histories``, ``items`` as Parquet,
  each row with its ``event_timestamp``), the events pushed since (``events/``), the registry and
  the SQLite online store.

Points in time: a history row is stamped with the time of its last item, so a point-in-time join
(``get_historical_features``) at the time of a user's next interaction returns exactly the history
before it, and nothing from later. User and item features are static in the data contract; they are
stamped with the Unix epoch, valid at any time a training example or a request asks about.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import pathlib
import sqlite3
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import yaml

from tfrs_pipeline.atomic import write_bytes_atomically, write_text_atomically
from tfrs_pipeline.contracts import (
    DESCRIPTION_FILE,
    HISTORY_INPUT,
    HISTORY_TIMESTAMPS_INPUT,
    ITEM_ID_INPUT,
    MISSING_VALUES,
    MULTI_CATEGORICAL,
    NUMERIC,
    USER_ID_INPUT,
    ExportDescription,
    FeatureSpec,
)

PROJECT = "tfrs_pipeline"
CONFIG_FILE = "feature_store.yaml"
DEFINITIONS_FILE = "features.py"
DATA_FOLDER = "data"
EVENTS_FOLDER = "events"
TIMESTAMP_COLUMN = "event_timestamp"
USER_ID = USER_ID_INPUT  # the user entity's join key: the signatures' user id input
ITEM_ID = ITEM_ID_INPUT  # the item entity's join key
USER_FEATURES_VIEW = "user_features"
HISTORY_VIEW = "user_history"
ITEM_FEATURES_VIEW = "item_features"
HISTORY_PUSH_SOURCE = "user_history_push"
LAST_EVENT_FEATURE = "last_event_seconds"  # Unix seconds of the history's latest item: orders late events
HISTORY_LENGTH_FILE = "history_length"  # in data/: the most recent items a history keeps
TABLES = {USER_FEATURES_VIEW: "users.parquet", HISTORY_VIEW: "histories.parquet", ITEM_FEATURES_VIEW: "items.parquet"}
# Wide enough for any data set's timestamps and the static features' epoch; pandas' timestamps end in 2262.
_MATERIALIZE_FROM = datetime.datetime(1900, 1, 1, tzinfo=datetime.timezone.utc)
_MATERIALIZE_TO = datetime.datetime(2200, 1, 1, tzinfo=datetime.timezone.utc)

SQLITE_ONLINE_STORE = {"type": "sqlite", "path": f"{DATA_FOLDER}/online_store.db"}
REDIS_ONLINE_STORE = {"type": "redis", "connection_string": "redis:6379"}
"""The production online store: replace ``online_store`` in ``feature_store.yaml`` with this (your Redis address)."""

_DEFINITIONS_SOURCE = '''"""Feast definitions of this export's features, for Feast's CLI (`feast apply`, `feast ui`).

Written by tfrs_pipeline at export; `python -m tfrs_pipeline.features materialize --repo=.` applies
the same definitions and loads the online store.
"""
import pathlib

from tfrs_pipeline.features.store import feature_definitions

for _definition in feature_definitions(pathlib.Path(__file__).parent):
    globals()[_definition.name] = _definition
'''


class FeatureStoreError(RuntimeError):
    """The feature repository is missing, unreadable or locked; the message says which and what to do."""


def config(online_store: dict[str, Any] | None = None) -> dict[str, Any]:
    """The repository's ``feature_store.yaml`` as a dict (paths relative to the repository)."""
    return {"project": PROJECT, "provider": "local", "registry": f"{DATA_FOLDER}/registry.db",
            "online_store": online_store or SQLITE_ONLINE_STORE, "offline_store": {"type": "file"},
            "entity_key_serialization_version": 3}


def write_feature_repository(repo: str | os.PathLike, description: ExportDescription, users: pd.DataFrame,
                             histories: pd.DataFrame, items: pd.DataFrame, history_length: int) -> pathlib.Path:
    """Writes the configuration, the definitions and the offline tables of an export's feature repository.

    An existing online store and its pushed events are kept: ``materialize`` then replaces the
    exported users' rows and replays the events that came after them.

    Args:
      repo: the repository folder (``<export_dir>/feature_repo``), created if missing.
      description: the export's description; it must be written at ``repo/../schema.json`` too,
        where ``feature_definitions`` reads it.
      users: ``user_id`` and a column per user feature (``InteractionData.users``' cells).
      histories: ``user_id``, ``history_item_ids`` (each user's items, oldest first), their
        ``history_timestamps`` (Unix seconds) and ``last_event_seconds`` (those of the last one).
      items: ``item_id`` and a column per item feature.
      history_length: the most recent items a history keeps (the query tower's slots).

    Returns:
      The repository folder.
    """
    repo = pathlib.Path(repo)
    (repo / DATA_FOLDER).mkdir(parents=True, exist_ok=True)
    features = description.features
    # The store holds the histories' times only where the export's towers read them.
    kept = list(description.history_inputs)
    recent = histories.drop(columns=[HISTORY_TIMESTAMPS_INPUT], errors="ignore").assign(
        **{name: [list(values[-history_length:]) for values in histories[name]] for name in kept})
    tables = {
        USER_FEATURES_VIEW: _feature_table(users, USER_ID, features.user_features),
        HISTORY_VIEW: recent.assign(**{TIMESTAMP_COLUMN: _timestamps(histories[LAST_EVENT_FEATURE])}),
        ITEM_FEATURES_VIEW: _feature_table(items, ITEM_ID, features.item_features),
    }
    for view, table in tables.items():
        write_bytes_atomically(repo / DATA_FOLDER / TABLES[view], table.to_parquet(index=False))
    write_text_atomically(repo / CONFIG_FILE, yaml.safe_dump(config(), sort_keys=False))
    write_text_atomically(repo / DEFINITIONS_FILE, _DEFINITIONS_SOURCE)
    write_text_atomically(repo / DATA_FOLDER / HISTORY_LENGTH_FILE, f"{history_length}\n")
    return repo


def history_table(user_ids: Sequence[str], item_ids: Sequence[Sequence[str]],
                  timestamps: Sequence[np.ndarray]) -> pd.DataFrame:
    """``write_feature_repository``'s histories from per-user items and times (users without items left out)."""
    kept = [row for row, items in enumerate(item_ids) if len(items)]
    return pd.DataFrame({USER_ID: [str(user_ids[row]) for row in kept],
                         HISTORY_INPUT: [[str(item) for item in item_ids[row]] for row in kept],
                         HISTORY_TIMESTAMPS_INPUT: [[int(time) for time in timestamps[row]] for row in kept],
                         LAST_EVENT_FEATURE: [int(timestamps[row][-1]) for row in kept]})


def _timestamps(seconds: pd.Series | np.ndarray) -> pd.Series:
    return pd.Series(pd.to_datetime(np.asarray(seconds, np.int64), unit="s", utc=True))


def _feature_table(table: pd.DataFrame, id_column: str, specs: Sequence[FeatureSpec]) -> pd.DataFrame:
    """The id, each feature as Parquet holds it (sets as lists), valid from the Unix epoch on (static)."""
    columns = {id_column: table[id_column].astype(str).to_numpy()}
    for spec in specs:
        values = table[spec.name]
        columns[spec.name] = ([list(value) for value in values] if spec.kind == MULTI_CATEGORICAL
                              else values.to_numpy(np.float64) if spec.kind == NUMERIC else values.astype(str))
    return pd.DataFrame({**columns, TIMESTAMP_COLUMN: pd.Timestamp(0, tz="UTC")})


def feature_definitions(repo: str | os.PathLike) -> list:
    """The Feast objects of a repository: entities, the push source and the three feature views.

    A view whose side has no declared feature (a data set without a users file) is left out.
    """
    from feast import Entity, FeatureView, Field, FileSource, PushSource, ValueType
    from feast.types import Array, Float64, Int64, String

    repo = pathlib.Path(repo)
    description = ExportDescription.read(repo.parent / DESCRIPTION_FILE)
    types = {MULTI_CATEGORICAL: Array(String), NUMERIC: Float64}
    user = Entity(name="user", join_keys=[USER_ID], value_type=ValueType.STRING)
    item = Entity(name="item", join_keys=[ITEM_ID], value_type=ValueType.STRING)

    def source(view: str) -> FileSource:
        return FileSource(name=f"{view}_source", path=f"{DATA_FOLDER}/{TABLES[view]}",
                          timestamp_field=TIMESTAMP_COLUMN)

    def view(name: str, entity: Entity, specs: Sequence[FeatureSpec]) -> FeatureView:
        return FeatureView(name=name, entities=[entity], source=source(name), online=True, schema=[
            Field(name=spec.name, dtype=types.get(spec.kind, String)) for spec in specs])

    history_push = PushSource(name=HISTORY_PUSH_SOURCE, batch_source=source(HISTORY_VIEW))
    history_fields = [Field(name=HISTORY_INPUT, dtype=Array(String)), Field(name=LAST_EVENT_FEATURE, dtype=Int64)]
    if description.history_timestamps:
        history_fields.append(Field(name=HISTORY_TIMESTAMPS_INPUT, dtype=Array(Int64)))
    history = FeatureView(name=HISTORY_VIEW, entities=[user], source=history_push, online=True,
                          schema=history_fields)
    definitions = [user, item, history_push, history]
    features = description.features
    if features.user_features:
        definitions.append(view(USER_FEATURES_VIEW, user, features.user_features))
    if features.item_features:
        definitions.append(view(ITEM_FEATURES_VIEW, item, features.item_features))
    return definitions


def read_history_length(repo: str | os.PathLike) -> int:
    """The most recent items a history of this repository keeps."""
    return int((pathlib.Path(repo) / DATA_FOLDER / HISTORY_LENGTH_FILE).read_text())


@dataclasses.dataclass(frozen=True)
class OnlineUser:
    """What the online store holds for one user, as the ``query_features`` signatures take it.

    Attributes:
      user_id: the user.
      known: whether the store holds any row for the user (features or history).
      features: each declared user feature -> its value (``contracts.MISSING_VALUES`` where none).
      history_item_ids: the user's most recent items, oldest first (empty if none).
      last_event_seconds: Unix seconds of the history's latest item (None without a history).
      history_timestamps: Unix seconds of each history item, where the export's towers read time
        (``ExportDescription.history_timestamps``); else empty.
    """

    user_id: str
    known: bool
    features: dict[str, Any]
    history_item_ids: list[str]
    last_event_seconds: int | None
    history_timestamps: list[int] = dataclasses.field(default_factory=list)


class OnlineFeatureStore:
    """Reads users' features and histories from an export's feature repository, and writes histories.

    Args:
      repo: the feature repository (``<export_dir>/feature_repo``).

    Raises:
      FeatureStoreError: there is no repository there, or it was never materialized.
    """

    def __init__(self, repo: str | os.PathLike):
        self.repo = _existing_repository(repo)
        self.description = ExportDescription.read(self.repo.parent / DESCRIPTION_FILE)
        self.history_length = read_history_length(self.repo)
        from feast import FeatureStore

        with _store_errors(self.repo):
            self._store = FeatureStore(repo_path=str(self.repo))
            self._store.get_feature_view(HISTORY_VIEW)  # a repository never applied has no registry yet
        self._feature_refs = ([f"{USER_FEATURES_VIEW}:{spec.name}" for spec in self.user_specs]
                              + [f"{HISTORY_VIEW}:{name}" for name in (*self.description.history_inputs,
                                                                       LAST_EVENT_FEATURE)])

    @property
    def user_specs(self) -> tuple[FeatureSpec, ...]:
        return self.description.features.user_features

    def users(self, user_ids: Sequence[str]) -> list[OnlineUser]:
        """Each user's features and recent history, read from the online store in one call.

        Raises:
          FeatureStoreError: the online store cannot be read (locked by a writer past SQLite's wait,
            deleted, corrupt).
        """
        with _store_errors(self.repo):
            rows = self._store.get_online_features(
                features=self._feature_refs, entity_rows=[{USER_ID: str(user_id)} for user_id in user_ids]).to_dict()
        return [self._online_user(rows, position, str(user_id)) for position, user_id in enumerate(user_ids)]

    def _online_user(self, rows: dict[str, list], position: int, user_id: str) -> OnlineUser:
        values = {name: column[position] for name, column in rows.items()}
        known = any(values[name] is not None for name in values if name != USER_ID)
        features = {spec.name: _cell(spec, values.get(spec.name)) for spec in self.user_specs}
        last_event = values.get(LAST_EVENT_FEATURE)
        return OnlineUser(user_id, known, features, list(values.get(HISTORY_INPUT) or []),
                          None if last_event is None else int(last_event),
                          [int(time) for time in values.get(HISTORY_TIMESTAMPS_INPUT) or []])

    def write_histories(self, histories: pd.DataFrame) -> None:
        """Writes ``user_id``, ``history_item_ids``, ``last_event_seconds`` (and, where the export's towers
        read time, ``history_timestamps``) rows to the online store (push)."""
        from feast.data_source import PushMode

        table = histories.assign(**{TIMESTAMP_COLUMN: _timestamps(histories[LAST_EVENT_FEATURE]).to_numpy()})
        with _store_errors(self.repo):
            self._store.push(HISTORY_PUSH_SOURCE, table, to=PushMode.ONLINE)


def materialize(repo: str | os.PathLike) -> None:
    """Registers the repository's definitions and loads the online store from its offline tables.

    Every exported user's row replaces what the online store held for them;
    ``events.materialize_and_replay`` then replays the events pushed since.
    """
    from feast import FeatureStore

    repo = _existing_repository(repo)
    with _store_errors(repo):
        store = FeatureStore(repo_path=str(repo))
        store.apply(feature_definitions(repo))
        store.materialize(_MATERIALIZE_FROM, _MATERIALIZE_TO)


def _existing_repository(repo: str | os.PathLike) -> pathlib.Path:
    """``repo`` as a path, once it is known to hold a feature repository."""
    repo = pathlib.Path(repo)
    if not (repo / CONFIG_FILE).is_file():
        raise FeatureStoreError(f"no feature repository at {repo}: an export writes one in "
                                f"<export_dir>/feature_repo ({CONFIG_FILE} is missing)")
    return repo


def _cell(spec: FeatureSpec, value: Any) -> Any:
    """A value read online as a users-table cell of its kind (None, Feast's missing, becomes the kind's)."""
    if value is None:
        return MISSING_VALUES[spec.kind]
    if spec.kind == MULTI_CATEGORICAL:
        return tuple(value)
    return float(value) if spec.kind == NUMERIC else value


@contextlib.contextmanager
def _store_errors(repo: pathlib.Path) -> Iterator[None]:
    """Turns SQLite's and Feast's failures into a FeatureStoreError that names the repository."""
    from feast.errors import FeastObjectNotFoundException

    try:
        yield
    except sqlite3.OperationalError as error:
        if "locked" not in str(error):
            raise FeatureStoreError(f"cannot read the online store of {repo}: {error}") from error
        raise FeatureStoreError(f"the online store of {repo} is locked by another writer: {error}") from error
    except (sqlite3.Error, FeastObjectNotFoundException, OSError) as error:
        raise FeatureStoreError(f"cannot use the feature repository {repo}: {error} (run python -m "
                                f"tfrs_pipeline.features materialize --repo={repo})") from error
