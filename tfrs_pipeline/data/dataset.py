"""One entry point from ``--data_dir`` to ``InteractionData``, and the writer of the own-data contract.

``load_dataset`` looks at what it is given and picks the reader: a ``tfds`` name goes to TensorFlow
Datasets; a folder with an ``interactions.*`` file or a ``dataset.yaml`` / ``dataset.json`` is a
user's own data (``data/interactions.py``); any other folder or zip must hold a MovieLens release
(``data/movielens.py``). Whichever reader runs, the pipeline gets the same tables.

``write_interaction_folder`` writes any ``InteractionData`` in the own-data contract, with a
``dataset.json`` declaring the kinds, title and split, so that MovieLens converted to CSV (for a
test, or for the benchmark comparing the two routes) reads back as the same tables.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile

import pandas as pd

from tfrs_pipeline.contracts import MULTI_CATEGORICAL, MULTI_VALUE_SEPARATOR, FeatureSpec
from tfrs_pipeline.data import movielens
from tfrs_pipeline.data.errors import DataError
from tfrs_pipeline.data.interactions import (
    INTERACTIONS,
    ITEMS,
    USERS,
    InteractionData,
    is_interaction_folder,
    keep_first_users,
    read_interaction_folder,
)
from tfrs_pipeline.data.schema import CONFIG_FILES, INTERACTION_COLUMNS, ITEM_ID, TIME_CUT, USER_ID

OWN_DATA_LAYOUT = ("interactions.csv, .tsv or .parquet (user_id, item_id, timestamp), optionally items.*, "
                   "users.* and dataset.yaml")


def load_dataset(source: str | os.PathLike | None, *, max_users: int | None = None) -> InteractionData:
    """Reads a data set from wherever ``source`` says, into the generic contract.

    Args:
      source: a folder (own data, or a MovieLens release in it or in one of its subfolders), a
        MovieLens zip, ``tfds`` (MovieLens 1M through TensorFlow Datasets) or
        ``tfds:movielens/<release>``; None reads ``$TFRS_PIPELINE_DATA_DIR``, which takes the same forms.
      max_users: keep only the interactions and features of the ``max_users`` users with the
        smallest ids (numeric order where all ids are numbers), and the whole catalog.

    Returns:
      The tables, their schema and the counts of the policies that applied.

    Raises:
      DataError: no source, or one that holds no known layout (the message lists them), or bad input.
    """
    if max_users is not None and max_users < 1:
        raise ValueError(f"max_users must be at least 1, got {max_users}")
    source = _given_source(source)
    data = _read(source)
    return data if max_users is None else keep_first_users(data, max_users)


def _given_source(source: str | os.PathLike | None) -> str:
    if source is None:
        source = os.environ.get(movielens.DATA_DIR_ENV)
        if not source:
            raise DataError(None, None, None, (
                f"no data given: pass --data_dir=<folder> (own data or a MovieLens release; or "
                f"--data_dir={movielens.TFDS_SOURCE}) or set {movielens.DATA_DIR_ENV}"))
    return os.fspath(source)


def _read(source: str) -> InteractionData:
    release = movielens.tfds_release(source)
    if release is not None:
        return movielens.to_interaction_data(movielens.load_tfds(release), source)
    path = pathlib.Path(source)
    if path.is_dir() and is_interaction_folder(path):
        return read_interaction_folder(path)
    found = movielens.find_release(path)
    if found is None:
        raise DataError(path, None, None, (
            f"no data set found: expected own data ({OWN_DATA_LAYOUT}) or a MovieLens release "
            f"({movielens.RELEASE_LAYOUTS}), here or in a subfolder"))
    return movielens.to_interaction_data(found.read(), source)


def write_interaction_folder(data: InteractionData, folder: str | os.PathLike) -> None:
    """Writes ``data`` as an own-data folder: the three CSV files and a ``dataset.json``.

    The configuration declares every feature's kind, the title and the split, so nothing is
    inferred when the folder is read back and ``read_interaction_folder`` gives the same tables.
    The folder appears whole: it is written beside its final name and renamed.

    Args:
      data: the data set.
      folder: where to write it; must not exist, or be empty.

    Raises:
      FileExistsError: ``folder`` holds files.
      ValueError: a value of a multi-categorical feature holds the separator ``|``.
    """
    folder = pathlib.Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} is not empty")
    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = pathlib.Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        features = data.schema.features
        data.interactions[list(INTERACTION_COLUMNS)].to_csv(temporary / f"{INTERACTIONS}.csv", index=False)
        _feature_csv(data.items, ITEM_ID, features.item_features).to_csv(temporary / f"{ITEMS}.csv", index=False)
        _feature_csv(data.users, USER_ID, features.user_features).to_csv(temporary / f"{USERS}.csv", index=False)
        (temporary / CONFIG_FILES[1]).write_text(json.dumps(_config(data), indent=2) + "\n", encoding="utf-8")
        os.chmod(temporary, 0o755)  # mkdtemp makes it private
        os.replace(temporary, folder)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def _feature_csv(table: pd.DataFrame, id_column: str, specs: tuple[FeatureSpec, ...]) -> pd.DataFrame:
    """The table with multi-categorical cells joined by ``|`` (NaN and "" both write an empty cell)."""
    columns = {id_column: table[id_column]}
    for spec in specs:
        values = table[spec.name]
        if spec.kind == MULTI_CATEGORICAL:
            if any(MULTI_VALUE_SEPARATOR in value for value_set in values for value in value_set):
                raise ValueError(f"feature {spec.name!r}: a value holds {MULTI_VALUE_SEPARATOR!r}, the separator")
            values = values.map(MULTI_VALUE_SEPARATOR.join)
        columns[spec.name] = values
    return pd.DataFrame(columns)


def _config(data: InteractionData) -> dict:
    schema = data.schema
    items = {"features": {spec.name: spec.kind for spec in schema.features.item_features}}
    if schema.title_feature is not None:
        items["title"] = schema.title_feature
    split = {"kind": schema.split.kind}
    if schema.split.kind == TIME_CUT:
        split.update({"test_share": schema.split.test_share} if schema.split.test_start is None
                     else {"test_start": schema.split.test_start})
    return {"items": items, "users": {"features": {spec.name: spec.kind for spec in schema.features.user_features}},
            "split": split}
