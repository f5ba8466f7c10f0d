"""The generic data contract every data set is read into: interactions, items and users tables.

A user's own folder holds ``interactions.csv`` (or ``.tsv``, ``.parquet``) and optionally
``items.csv`` and ``users.csv``; MovieLens releases and TFDS are adapters onto the same tables
(``data/movielens.py``). Everything downstream (split, catalog, towers, export) reads only
``InteractionData`` and its schema.
"""
from __future__ import annotations

import dataclasses

import pandas as pd

from tfrs_pipeline.data.schema import DatasetSchema


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
