"""Training examples as sharded TFRecords: the format the Beam preprocessing writes and `train` reads.

One ``tf.train.Example`` per training window (see `sequence_examples.training_windows`). Histories
are stored without their "" padding and padded again on reading, so the files do not depend on the
padding and the reader gives back exactly the dict the in-memory path builds: same columns, dtypes
and row order (users in the order of the user vocabulary, each user's windows from the most recent
end), which makes a run trained from TFRecords the same run as one trained from the raw files.

An output folder holds::

    manifest.json                  written last: a folder without it is incomplete and never read
    examples/train-SSSSS-of-NNNNN.tfrecord
    vocabularies/user_ids.txt      users with interactions, in the order examples are read back
    vocabularies/item_ids.txt      the catalog: the items file in its order, then items chosen but not listed
"""
from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterator, Mapping

import numpy as np
import tensorflow as tf

from tfrs_pipeline.contracts import HISTORY_TIMESTAMPS_INPUT
from tfrs_pipeline.data.errors import DataError

# /2: no user features (looked up at training time); /3: the history's timestamps
FORMAT = "tfrs_pipeline.training_windows/3"
MANIFEST = "manifest.json"
USER_VOCABULARY = "vocabularies/user_ids.txt"
ITEM_VOCABULARY = "vocabularies/item_ids.txt"
SEQUENCE_FEATURES = ("history_item_ids", "target_item_ids")
# Per-example scalar columns of `training_windows` and their dtypes in the examples dict.
SCALAR_FEATURES = {"user_id": object}
WINDOW = "window"  # 0 for a user's most recent window, 1 for the one before, ...
# The settings that decide which examples a folder holds; `train` refuses a folder made with others.
SPLIT_SETTINGS = ("max_length", "holdout", "max_users")
READ_BATCH = 8192


def encode_examples(examples: Mapping[str, np.ndarray]) -> Iterator[bytes]:
    """Serialized ``tf.train.Example`` of every row of an examples dict (rows of a user kept together).

    Args:
      examples: ``training_windows(...)``: the scalar columns of `SCALAR_FEATURES` and the
        left-padded [E, L] `SEQUENCE_FEATURES` and ``history_timestamps``.
    """
    window = 0
    for row in range(len(examples["user_id"])):
        window = window + 1 if row and examples["user_id"][row] == examples["user_id"][row - 1] else 0
        features = {WINDOW: _int64s([window])}
        for name in SEQUENCE_FEATURES:
            items = examples[name][row]
            features[name] = _bytes([item for item in items if item != ""])
        # The times of the history's items, without their padding: what the reader pads again.
        has_item = examples["history_item_ids"][row] != ""
        features[HISTORY_TIMESTAMPS_INPUT] = _int64s(examples[HISTORY_TIMESTAMPS_INPUT][row][has_item])
        for name in SCALAR_FEATURES:
            features[name] = _bytes([examples[name][row]])
        yield tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def read_training_examples(examples_dir: str | os.PathLike, expected_settings: Mapping[str, object],
                           timestamps: bool = False) -> dict:
    """Reads a preprocessed folder back into the examples dict the two-stage pipeline trains on.

    Args:
      examples_dir: a folder written by ``python -m tfrs_pipeline.data.beam_pipeline``.
      expected_settings: the run's value of every name in `SPLIT_SETTINGS`; examples made with other
        settings (another window length, holdout or user slice) would silently train another model.
      timestamps: read ``history_timestamps`` too (for a query tower with a time bias).

    Returns:
      ``user_id`` [E], ``history_item_ids`` and ``target_item_ids`` [E, max_length] ("" left padding),
      and with ``timestamps`` ``history_timestamps`` [E, max_length] (0 left padding), in the in-memory
      path's order and dtypes.

    Raises:
      DataError: no manifest, a manifest of another format or other settings, or missing shards.
    """
    folder = pathlib.Path(examples_dir)
    manifest = read_manifest(folder)
    for name in SPLIT_SETTINGS:
        if manifest["settings"].get(name) != expected_settings[name]:
            raise DataError(folder / MANIFEST, None, f"settings.{name}", (
                f"the examples were made with {name}={manifest['settings'].get(name)!r} but this run uses "
                f"{expected_settings[name]!r}: preprocess again with the run's settings"))
    shards = [str(folder / shard) for shard in manifest["shards"]]
    missing = [shard for shard in shards if not pathlib.Path(shard).is_file()]
    if missing:
        raise DataError(missing[0], None, None, f"a shard the manifest lists is missing ({len(missing)} in all)")
    user_rank = {user_id.encode(): rank for rank, user_id in enumerate(_read_lines(folder / USER_VOCABULARY))}
    # Each id decoded once and shared by every row that holds it, as the in-memory path's columns share
    # the table's strings, rather than a string object per occurrence (40M of them at 20M interactions).
    interned = {item_id.encode(): item_id for item_id in _read_lines(folder / ITEM_VOCABULARY)}
    interned.update({user_id: user_id.decode() for user_id in user_rank})
    num_examples, max_length = manifest["num_examples"], manifest["settings"]["max_length"]
    columns = {"user_id": np.empty(num_examples, dtype=object),
               **{name: np.full((num_examples, max_length), "", dtype=object) for name in SEQUENCE_FEATURES}}
    if timestamps:
        columns[HISTORY_TIMESTAMPS_INPUT] = np.zeros((num_examples, max_length), np.int64)
    sort_keys = np.empty((2, num_examples), np.int64)  # (user rank, window) of every row as read
    row = 0
    # Rows are parsed as they stream in and their records dropped: holding every parsed record until the
    # end raised the peak by 7.9 GB at 944K windows (measured), twice what the examples keep. Reading in
    # batches: one eager step per record costs more than parsing it.
    for batch in tf.data.TFRecordDataset(shards).batch(READ_BATCH).as_numpy_iterator():
        for serialized in batch:
            if row == num_examples:
                raise DataError(folder, None, None,
                                f"the manifest counts {num_examples} examples, the shards hold more")
            feature = tf.train.Example.FromString(serialized).features.feature
            user_id = feature["user_id"].bytes_list.value[0]
            columns["user_id"][row] = interned[user_id]
            sort_keys[:, row] = user_rank[user_id], feature[WINDOW].int64_list.value[0]
            for name in SEQUENCE_FEATURES:
                items = feature[name].bytes_list.value
                if items:
                    columns[name][row, max_length - len(items):] = [interned.get(item) or item.decode()
                                                                    for item in items]
            if timestamps:
                times = feature[HISTORY_TIMESTAMPS_INPUT].int64_list.value
                columns[HISTORY_TIMESTAMPS_INPUT][row, max_length - len(times):] = times
            row += 1
    if row != num_examples:
        raise DataError(folder, None, None, f"the manifest counts {num_examples} examples, the shards hold {row}")
    order = np.lexsort(sort_keys[::-1])  # by user rank, then window
    return {name: columns.pop(name)[order] for name in list(columns)}


def read_manifest(examples_dir: str | os.PathLike) -> dict:
    """The manifest of a preprocessed folder; a DataError when it is missing or of another format."""
    path = pathlib.Path(examples_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(path, None, None, (
            "no manifest: not a preprocessed examples folder, or its preprocessing did not finish")) from None
    except json.JSONDecodeError as error:
        raise DataError(path, error.lineno, None, f"not JSON: {error.msg}") from None
    if manifest.get("format") != FORMAT:
        raise DataError(path, None, "format", f"{manifest.get('format')!r} is not {FORMAT!r}: preprocess the data "
                                              f"again with this version (python -m tfrs_pipeline.data.beam_pipeline)")
    return manifest


def _read_lines(path: pathlib.Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        raise DataError(path, None, None, "vocabulary file not found") from None


def _bytes(values) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(value).encode() for value in values]))


def _int64s(values) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
