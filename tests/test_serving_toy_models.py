"""Tiny real SavedModels with the export contract's signatures, for tests of the server's mechanics.

Tests about versions appearing, broken versions, labels and batching need models whose answers
reveal which version served them, and must not wait for a real training run. These are real
SavedModels (lookup tables and a matmul) with the signatures of docs/design.md: every score of
version ``v`` is offset by ``1000 * v``, so a response names the version that computed it.
"""
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from tfrs_pipeline.export.versioning import write_version
from tfrs_pipeline.serving.servable import Servable

USER_IDS = [str(user) for user in range(1, 9)]
ITEM_IDS = [str(item) for item in range(100, 130)]
TOP_K = 10
EMBEDDING_SIZE = 4


def _lookup(keys: list[str]) -> tf.lookup.StaticHashTable:
    initializer = tf.lookup.KeyValueTensorInitializer(tf.constant(keys), tf.range(len(keys), dtype=tf.int64))
    return tf.lookup.StaticHashTable(initializer, default_value=0)


class ToyRetrieval(tf.Module):
    def __init__(self, version: int):
        super().__init__()
        random = np.random.default_rng(0)
        self.users = _lookup(USER_IDS)
        self.user_embeddings = tf.Variable(random.normal(size=(len(USER_IDS), EMBEDDING_SIZE)), dtype=tf.float32)
        self.item_embeddings = tf.Variable(random.normal(size=(len(ITEM_IDS), EMBEDDING_SIZE)), dtype=tf.float32)
        self.item_ids = tf.constant(ITEM_IDS)
        self.offset = tf.constant(1000.0 * version)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id")])
    def serve(self, user_id):
        queries = tf.gather(self.user_embeddings, self.users.lookup(user_id))
        scores, indices = tf.math.top_k(tf.matmul(queries, self.item_embeddings, transpose_b=True), k=TOP_K)
        known_user = tf.reduce_any(tf.equal(user_id[:, tf.newaxis], tf.constant(USER_IDS)[tf.newaxis]), axis=1)
        return {"item_ids": tf.gather(self.item_ids, indices), "scores": scores + self.offset, "known_user": known_user}


class ToyRanking(tf.Module):
    def __init__(self, version: int):
        super().__init__()
        random = np.random.default_rng(1)
        self.users = _lookup(USER_IDS)
        self.items = _lookup(ITEM_IDS)
        self.user_embeddings = tf.Variable(random.normal(size=(len(USER_IDS), EMBEDDING_SIZE)), dtype=tf.float32)
        self.item_embeddings = tf.Variable(random.normal(size=(len(ITEM_IDS), EMBEDDING_SIZE)), dtype=tf.float32)
        self.offset = tf.constant(1000.0 * version)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id"),
                                  tf.TensorSpec([None, None], tf.string, name="item_ids")])
    def serve(self, user_id, item_ids):
        users = tf.gather(self.user_embeddings, self.users.lookup(user_id))
        items = tf.gather(self.item_embeddings, self.items.lookup(item_ids))
        return {"scores": tf.einsum("bd,bnd->bn", users, items) + self.offset}


def export_toy(base_path: pathlib.Path, model_class, version: int) -> pathlib.Path:
    """Writes one version the way the real export does: atomically, under ``base_path/<version>``."""
    module = model_class(version)
    return write_version(base_path, lambda folder: tf.saved_model.save(
        module, folder, signatures={"serving_default": module.serve}), version=version)


def export_broken(base_path: pathlib.Path, version: int) -> pathlib.Path:
    """A version folder whose SavedModel is corrupt: it must fail to load without harming the others."""
    return write_version(base_path, lambda folder: (pathlib.Path(folder) / "saved_model.pb").write_bytes(b"junk"),
                         version=version)


@pytest.fixture(scope="session")
def toy_exports(tmp_path_factory) -> pathlib.Path:
    """``retrieval/1``, ``retrieval/2`` and ``ranking/1``, written once per session (copy before changing)."""
    root = tmp_path_factory.mktemp("toy_exports")
    export_toy(root / "retrieval", ToyRetrieval, 1)
    export_toy(root / "retrieval", ToyRetrieval, 2)
    export_toy(root / "ranking", ToyRanking, 1)
    return root


def test_toy_models_follow_the_export_contract(toy_exports):
    retrieval = Servable("retrieval", 2, toy_exports / "retrieval" / "2")
    outputs = retrieval.call("serving_default", {"user_id": np.array([b"1", b"2"], dtype=object)})
    assert outputs["item_ids"].shape == (2, TOP_K) and outputs["scores"].shape == (2, TOP_K)
    assert set(outputs["item_ids"].ravel().astype(str)) <= set(ITEM_IDS)
    assert np.all(np.round(outputs["scores"] / 1000) == 2)
    ranking = Servable("ranking", 1, toy_exports / "ranking" / "1")
    scores = ranking.call("serving_default", {"user_id": np.array([b"1", b"2"], dtype=object),
                                              "item_ids": outputs["item_ids"]})["scores"]
    assert scores.shape == (2, TOP_K)
