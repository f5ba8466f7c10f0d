"""Feature tables as the arrays TensorFlow takes, and each kind's input signature.

Pandas cells hold a feature's values as the data layer normalised them (``InteractionData``); a
model, a training batch and a SavedModel signature take them as dense arrays: strings [N],
"" padded string sets [N, width], float32 [N] with NaN for missing. Converting in one place keeps
training, evaluation and the export's snapshot feeding the towers the same values.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import tensorflow as tf

from tfrs_pipeline.contracts import CATEGORICAL, MISSING_VALUES, MULTI_CATEGORICAL, NUMERIC, FeatureSpec


def feature_array(values: pd.Series | Sequence, kind: str) -> np.ndarray:
    """One feature column as an array: str [N] (object), "" padded str [N, width], or float32 [N]."""
    if kind == NUMERIC:
        return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(np.float32)
    if kind == MULTI_CATEGORICAL:
        value_sets = [tuple(value) if isinstance(value, (tuple, list, np.ndarray)) else () for value in values]
        width = max([1, *(len(value_set) for value_set in value_sets)])
        padded = np.full((len(value_sets), width), "", dtype=object)
        for row, value_set in enumerate(value_sets):
            padded[row, :len(value_set)] = [str(value) for value in value_set]
        return padded
    return np.asarray(["" if value is None or value != value else str(value) for value in values], dtype=object)


def feature_arrays(table: pd.DataFrame, specs: Sequence[FeatureSpec]) -> dict[str, np.ndarray]:
    """``feature_array`` of every spec's column of ``table``, in row order."""
    return {spec.name: feature_array(table[spec.name], spec.kind) for spec in specs}


def missing_rows(specs: Sequence[FeatureSpec], rows: int = 1) -> dict[str, np.ndarray]:
    """Arrays of ``rows`` rows holding no value at all (what an unknown user or item has)."""
    return {spec.name: feature_array([MISSING_VALUES[spec.kind]] * rows, spec.kind) for spec in specs}


def concatenate_rows(first: dict[str, np.ndarray], second: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rows of ``first`` then ``second``; set and history columns are padded to the wider of the two
    ("" for ids, 0 for numbers such as the history's timestamps)."""
    joined = {}
    for name, values in first.items():
        other = second[name]
        if values.ndim == 2:
            width = max(values.shape[1], other.shape[1])
            padding = 0 if values.dtype.kind in "iuf" else ""
            values, other = (np.pad(array, ((0, 0), (0, width - array.shape[1])), constant_values=padding)
                             for array in (values, other))
        joined[name] = np.concatenate([values, other])
    return joined


def examples_as_tensors(examples: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays with object (string) columns as ``str`` arrays, which TensorFlow takes."""
    return {name: (values.astype(str) if values.dtype == object else values) for name, values in examples.items()}


def input_spec(spec: FeatureSpec) -> tf.TensorSpec:
    """The signature input of a feature: named as its column, typed by its kind."""
    if spec.kind == NUMERIC:
        return tf.TensorSpec([None], tf.float32, name=spec.name)
    if spec.kind == MULTI_CATEGORICAL:
        return tf.TensorSpec([None, None], tf.string, name=spec.name)
    return tf.TensorSpec([None], tf.string, name=spec.name)


class FeatureRows:
    """A feature table looked up by id, in numpy: the user features of a training or evaluation batch.

    Ids the table does not hold get the missing row, so a batch never fails on one unknown id.

    Args:
      ids: [N] the table's ids.
      arrays: ``feature_arrays`` of the table, rows aligned with ``ids``.
      specs: the features' specs.
    """

    def __init__(self, ids: Sequence[str], arrays: dict[str, np.ndarray], specs: Sequence[FeatureSpec]):
        self.specs = tuple(specs)
        self._row_of = {identifier: row + 1 for row, identifier in enumerate(ids)}
        self.arrays = concatenate_rows(missing_rows(self.specs), arrays)  # row 0: unknown

    @classmethod
    def from_table(cls, table: pd.DataFrame, id_column: str, specs: Sequence[FeatureSpec]) -> FeatureRows:
        return cls(table[id_column].to_numpy(dtype=object), feature_arrays(table, specs), specs)

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        """[len(ids)] table rows, 0 for unknown ids."""
        return np.fromiter((self._row_of.get(identifier, 0) for identifier in ids), np.int64, len(ids))

    def lookup(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Every feature of ``ids``, as arrays with one row per id."""
        rows = self.rows(ids)
        return {name: values[rows] for name, values in self.arrays.items()}


MAX_CATEGORY_VALUES = 64  # a categorical feature with more values is an identity, not a category


def category_matrix(arrays: dict[str, np.ndarray], specs: Sequence[FeatureSpec], num_rows: int) -> np.ndarray:
    """[num_rows, C] multi-hot membership in the values of the items' small categorical features.

    What a list's diversity is measured in and what the ranker matches against a user's history
    (genres of a film, departments of a shop); features with more than ``MAX_CATEGORY_VALUES``
    values are left out. C is 0 when the schema has no such feature; ``num_rows`` is given because
    an item table without features has no array to count its rows from.
    """
    columns = []
    for spec in specs:
        if spec.kind not in (CATEGORICAL, MULTI_CATEGORICAL):
            continue
        values = arrays[spec.name].reshape(len(arrays[spec.name]), -1)
        distinct = sorted(set(values.ravel()) - {""})
        if len(distinct) > MAX_CATEGORY_VALUES:
            continue
        for value in distinct:
            columns.append((values == value).any(axis=1))
    return np.stack(columns, axis=1).astype(np.float32) if columns else np.zeros((num_rows, 0), np.float32)
