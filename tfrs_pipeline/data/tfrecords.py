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

from tfrs_pipeline.data.errors import DataError

FORMAT = "tfrs_pipeline.training_windows/2"  # /2: no user features (looked up at training time)
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
        left-padded [E, L] `SEQUENCE_FEATURES`.
    """
    window = 0
    for row in range(len(examples["user_id"])):
        window = window + 1 if row and examples["user_id"][row] == examples["user_id"][row - 1] else 0
        features = {WINDOW: _int64s([window])}
        for name in SEQUENCE_FEATURES:
            items = examples[name][row]
            features[name] = _bytes([item for item in items if item != ""])
        for name in SCALAR_FEATURES:
            features[name] = _bytes([examples[name][row]])
        yield tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def read_training_examples(examples_dir: str | os.PathLike, expected_settings: Mapping[str, object]) -> dict:
    """Reads a preprocessed folder back into the examples dict the two-stage pipeline trains on.

    Args:
      examples_dir: a folder written by ``python -m tfrs_pipeline.data.beam_pipeline``.
      expected_settings: the run's value of every name in `SPLIT_SETTINGS`; examples made with other
        settings (another window length, holdout or user slice) would silently train another model.

    Returns:
      ``user_id`` [E], ``history_item_ids`` and ``target_item_ids`` [E, max_length] ("" left padding),
      in the in-memory path's order and dtypes.

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
    # Read in batches: one eager step per record costs more than parsing it (20 of 28 s at 94K records).
    records = [tf.train.Example.FromString(record) for batch in
               tf.data.TFRecordDataset(shards).batch(READ_BATCH).as_numpy_iterator() for record in batch]
    user_rank = {user_id: rank for rank, user_id in enumerate(_read_lines(folder / USER_VOCABULARY))}
    keys = [(user_rank[_feature_value(record, "user_id")], _feature_value(record, WINDOW)) for record in records]
    records = [records[position] for position in sorted(range(len(records)), key=keys.__getitem__)]
    max_length = manifest["settings"]["max_length"]
    examples = {name: np.array([_feature_value(record, name) for record in records], dtype=dtype)
                for name, dtype in SCALAR_FEATURES.items()}
    for name in SEQUENCE_FEATURES:
        padded = np.full((len(records), max_length), "", dtype=object)
        for row, record in enumerate(records):
            items = [item.decode() for item in record.features.feature[name].bytes_list.value]
            if items:
                padded[row, max_length - len(items):] = items
        examples[name] = padded
    if len(records) != manifest["num_examples"]:
        raise DataError(folder, None, None, f"the manifest counts {manifest['num_examples']} examples, "
                                            f"the shards hold {len(records)}")
    return {name: examples[name] for name in ("user_id", *SEQUENCE_FEATURES, *list(SCALAR_FEATURES)[1:])}


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
        raise DataError(path, None, "format", f"{manifest.get('format')!r} is not {FORMAT!r}")
    return manifest


def _read_lines(path: pathlib.Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        raise DataError(path, None, None, "vocabulary file not found") from None


def _feature_value(record: tf.train.Example, name: str):
    feature = record.features.feature[name]
    kind = feature.WhichOneof("kind")
    value = getattr(feature, kind).value[0]
    return value.decode() if kind == "bytes_list" else value


def _bytes(values) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(value).encode() for value in values]))


def _int64s(values) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
