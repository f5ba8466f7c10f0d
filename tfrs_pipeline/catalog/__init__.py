"""The item catalog: item ids <-> the indices models use, interaction counts, display titles.

Models index items 1..N and keep 0 for "unknown" (padding, an id the catalog has never seen), so
every task, evaluation and export maps ids through one ``Catalog``. The catalog also writes the
export's items file (``contracts.ITEMS_FILE``: id, title, popularity, most popular first), which
clients read for titles and for the popular fallback; reading it needs no training code.
"""
from __future__ import annotations

import csv
import io
import os
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from tfrs_pipeline.atomic import write_text_atomically
from tfrs_pipeline.contracts import ITEMS_COLUMNS


class Catalog:
    """Items indexed 1..N in the given order; index 0 is the unknown item.

    Args:
      item_ids: the catalog's ids (unique), in the order that defines indices 1..N.
      titles: what people see for each item; the id where None.
    """

    def __init__(self, item_ids: Sequence[str], titles: Sequence[str] | None = None):
        self.item_ids = np.asarray(item_ids, dtype=object)
        self.titles = self.item_ids if titles is None else np.asarray(titles, dtype=object)
        if len(self.titles) != len(self.item_ids):
            raise ValueError(f"{len(self.item_ids)} item ids but {len(self.titles)} titles")
        self._index_of = {item_id: position + 1 for position, item_id in enumerate(self.item_ids)}
        if len(self._index_of) != len(self.item_ids):
            raise ValueError("catalog item ids must be unique")

    @classmethod
    def by_popularity(cls, item_id_arrays: Iterable[np.ndarray]) -> Catalog:
        """Every item of ``item_id_arrays``, most frequent first."""
        counts = pd.Series(np.concatenate(list(item_id_arrays))).value_counts(sort=True)
        return cls(counts.index.to_numpy(dtype=object))

    def __len__(self) -> int:
        return len(self.item_ids)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._index_of

    def indices(self, item_ids: Sequence[str]) -> np.ndarray:
        """Catalog indices of ``item_ids`` (0 for ids the catalog does not hold)."""
        return np.fromiter((self._index_of.get(item_id, 0) for item_id in item_ids), np.int64, len(item_ids))

    def counts(self, item_id_arrays: Iterable[np.ndarray]) -> np.ndarray:
        """[N + 1] how often each catalog index occurs in ``item_id_arrays`` (unknown ids count at 0)."""
        arrays = [np.asarray(items) for items in item_id_arrays]
        flat = np.concatenate(arrays) if arrays else np.array([], dtype=object)
        return np.bincount(self.indices(flat), minlength=len(self) + 1).astype(np.float64)

    def write_items_file(self, path: str | os.PathLike, popularity: np.ndarray) -> None:
        """Writes ``ITEMS_COLUMNS`` (id, title, popularity [N + 1]), most popular first, atomically."""
        table = pd.DataFrame({"item_id": self.item_ids, "title": self.titles, "popularity": popularity[1:]})
        table = table.sort_values("popularity", ascending=False, kind="stable")[list(ITEMS_COLUMNS)]
        text = io.StringIO()
        table.to_csv(text, sep="\t", index=False, quoting=csv.QUOTE_MINIMAL)
        write_text_atomically(path, text.getvalue())


def read_items_file(path: str | os.PathLike) -> tuple[Catalog, np.ndarray]:
    """The catalog of an items file (most popular first) and its [N + 1] popularity."""
    table = pd.read_csv(path, sep="\t", dtype={"item_id": str, "title": str}, keep_default_na=False)
    missing = set(ITEMS_COLUMNS) - set(table.columns)
    if missing:
        raise ValueError(f"{path}: expected the columns {', '.join(ITEMS_COLUMNS)}; "
                         f"missing {', '.join(sorted(missing))}")
    popularity = np.concatenate([[0.0], table["popularity"].to_numpy(np.float64)])
    return Catalog(table["item_id"].to_numpy(dtype=object), table["title"].to_numpy(dtype=object)), popularity
