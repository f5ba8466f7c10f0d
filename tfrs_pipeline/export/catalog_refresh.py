"""New items without retraining: embed them with the frozen item tower and publish a larger index.

The item tower embeds an item from its features, and items nobody interacted with share the unknown
item's id row (``models/item_tower.py``), so an item added after training is embedded exactly as a
cold item of the training catalog would be. A refresh loads the latest retrieval version, embeds
the new items with its own ``embed_items`` function, indexes old and new items together, checks the
ScaNN index against exact search on the export's real user queries, and publishes the result as the
next retrieval version: the same query towers and user snapshot (loaded and saved again, not
retrained) with the larger catalog search. A running server picks the version up like any other.

The ranking model is not refreshed: it scores an item it has never seen as the unknown item, so
new items reach a two-stage answer by their retrieval score alone until the next training run. Nor
is the one-call ``recommender`` (its ranking half is not saved as functions a refresh could reuse):
clients see new items through the two calls (``recommender_model=None``) until the next training run.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np
import tensorflow as tf

from tfrs_pipeline import index
from tfrs_pipeline.catalog import Catalog, read_items_file
from tfrs_pipeline.contracts import (
    DESCRIPTION_FILE,
    ITEM_ID_INPUT,
    ITEM_IDS_OUTPUT,
    ITEMS_FILE,
    RETRIEVAL_BRUTE_FORCE_MODEL,
    RETRIEVAL_MODEL,
    SERVING_SIGNATURE,
    ExportDescription,
)
from tfrs_pipeline.data.interactions import read_feature_file
from tfrs_pipeline.export import savedmodels, versioning
from tfrs_pipeline.features.arrays import examples_as_tensors, feature_arrays

REFRESHED_MODELS = {RETRIEVAL_MODEL: "scann", RETRIEVAL_BRUTE_FORCE_MODEL: "brute_force"}  # model -> top-k kind


@dataclasses.dataclass(frozen=True)
class RefreshReport:
    """What a refresh did: the version it published (None if there was nothing new) and its index check."""

    version: int | None
    new_items: int
    known_items: int  # rows of the items file the catalog already held (left as they are)
    index_check: dict

    def __str__(self) -> str:
        if self.version is None:
            return f"no new items: all {self.known_items} items are in the catalog already; nothing published"
        return (f"published retrieval version {self.version} with {self.new_items} new items "
                f"({self.known_items} already known); ScaNN top-10 agreement with exact search "
                f"{self.index_check['top10_agreement']:.4f}")


def refresh_catalog(export_dir: str | os.PathLike, items_path: str | os.PathLike,
                    target_recall: float = 0.99) -> RefreshReport:
    """Adds the items of ``items_path`` that the export lacks to a new retrieval version.

    Args:
      export_dir: the export (``--export_dir`` of the training run).
      items_path: ``item_id`` and every item feature of the export (its ``schema.json``), CSV, TSV or Parquet.
      target_recall: the share of queries whose ScaNN top-10 must equal exact search.

    Returns:
      The report (the published version, counts, the index check).

    Raises:
      DataError: a bad items file (a missing feature column, an empty or repeated id, a bad value).
    """
    export_dir = pathlib.Path(export_dir)
    description = ExportDescription.read(export_dir / DESCRIPTION_FILE)
    specs = description.features.item_features
    catalog, popularity = read_items_file(export_dir / ITEMS_FILE)
    items = read_feature_file(items_path, ITEM_ID_INPUT, specs)
    new = items[~items[ITEM_ID_INPUT].isin(set(catalog.item_ids))].reset_index(drop=True)
    if new.empty:
        return RefreshReport(None, 0, len(items), {})
    # Both retrieval exports of a version share one query side (towers and snapshot): load it once.
    base = index.load_top_k(str(export_dir / RETRIEVAL_MODEL /
                                str(versioning.existing_versions(export_dir / RETRIEVAL_MODEL)[-1])))
    new_embeddings = base.queries.embed_items(
        {ITEM_ID_INPUT: tf.constant(new[ITEM_ID_INPUT].to_numpy().astype(str)),
         **{name: tf.constant(values) for name, values in examples_as_tensors(feature_arrays(new, specs)).items()}})
    item_ids = np.concatenate([base.search.item_ids.numpy().astype(str), new[ITEM_ID_INPUT].to_numpy().astype(str)])
    embeddings = tf.concat([base.search.candidate_embeddings, new_embeddings], axis=0)
    k = int(base.signatures[SERVING_SIGNATURE](user_id=tf.constant([""]))[ITEM_IDS_OUTPUT].shape[1])  # the served k
    layers, check = index.build_checked_indexes(index.catalog_positions(len(item_ids)), embeddings,
                                                base.queries.user_queries[1:], k, target_recall)
    version = max(versioning.next_version(export_dir / name) for name in REFRESHED_MODELS)

    def writer(kind: str):
        refreshed = savedmodels.RetrievalExport(base.queries,
                                                savedmodels.CatalogSearch(layers[kind], item_ids, embeddings, k),
                                                description.features.user_features,
                                                description.history_timestamps)
        return lambda path: savedmodels.save_retrieval(refreshed, path, kind == "scann")

    # Both retrieval exports appear together (issue 19, item 6), never one version apart.
    versioning.publish_together({export_dir / name: writer(kind) for name, kind in REFRESHED_MODELS.items()},
                                version)
    titles = (new[description.title_feature] if description.title_feature in new else new[ITEM_ID_INPUT]).astype(str)
    Catalog([*catalog.item_ids, *new[ITEM_ID_INPUT]], [*catalog.titles, *titles]).write_items_file(
        export_dir / ITEMS_FILE, np.concatenate([popularity, np.zeros(len(new))]))
    return RefreshReport(version, len(new), len(items) - len(new), check)
