"""The candidate tower: a movie's id, title words, genres and year become one embedding.

The tower keeps a snapshot of the catalog's preprocessed features, so any item id (a candidate,
or an item in a user's history) can be embedded from its id alone, with the same weights. Tying the
history's input embeddings to the candidate embeddings is what SASRec does; the feature part lets
rarely rated movies borrow strength from their genres and title words.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

TITLE_LENGTH = 12
YEAR_BUCKETS = list(range(1920, 2005, 5))


class ItemTower(tf.keras.Model):
    """Embeds items from raw features (``call``) or from ids through the catalog snapshot (``embed_ids``).

    Args:
      item_ids: the catalog's ids, in the order that defines item indices 1..N (0 is "unknown").
      titles: the catalog's titles, e.g. "Toy Story (1995)"; the year in brackets is a feature.
      genres: per item, a list of genre label ids in [0, num_genres).
      num_genres: size of the genre vocabulary.
      dim: embedding width.
    """

    def __init__(self, item_ids: Sequence[str], titles: Sequence[str], genres: Sequence[Sequence[int]],
                 num_genres: int, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.num_genres = num_genres
        self.id_lookup = tf.keras.layers.StringLookup(vocabulary=list(item_ids), mask_token=None, num_oov_indices=1)
        self.title_vectorizer = tf.keras.layers.TextVectorization(
            max_tokens=20_000, output_sequence_length=TITLE_LENGTH)
        self.title_vectorizer.adapt(_title_words(tf.constant(list(titles))))
        self.year_buckets = tf.keras.layers.Discretization(bin_boundaries=YEAR_BUCKETS)
        self._id_embedding = tf.keras.layers.Embedding(len(item_ids) + 1, dim)
        self._title_embedding = tf.keras.layers.Embedding(
            self.title_vectorizer.vocabulary_size(), dim, mask_zero=True)
        self._year_embedding = tf.keras.layers.Embedding(len(YEAR_BUCKETS) + 2, dim)  # + unknown year
        self._feature_projection = tf.keras.layers.Dense(dim)
        self._catalog = self._preprocess(
            tf.constant(["[UNK]", *item_ids]), tf.constant(["", *titles]), _pad_genres([[], *genres]))

    def _preprocess(self, movie_id: tf.Tensor, movie_title: tf.Tensor, movie_genres: tf.Tensor) -> dict:
        year = tf.strings.to_number(
            tf.strings.regex_replace(movie_title, r"^.*\((\d{4})\)\s*$|^.*$", r"0\1"), tf.float32)  # "0" when there is no year
        return {
            "index": self.id_lookup(movie_id),
            "title_tokens": self.title_vectorizer(_title_words(movie_title)),
            "genres": tf.reduce_sum(tf.one_hot(movie_genres, self.num_genres), axis=-2),
            "year_bucket": tf.where(year > 0, self.year_buckets(year) + 1, 0),
        }

    def _embed(self, preprocessed: dict) -> tf.Tensor:
        title_words = self._title_embedding(preprocessed["title_tokens"])
        word_mask = tf.cast(preprocessed["title_tokens"] > 0, tf.float32)[..., tf.newaxis]
        title = tf.reduce_sum(title_words * word_mask, -2) / tf.maximum(tf.reduce_sum(word_mask, -2), 1.0)
        features = tf.concat(
            [title, preprocessed["genres"], self._year_embedding(preprocessed["year_bucket"])], axis=-1)
        return self._id_embedding(preprocessed["index"]) + self._feature_projection(features)

    def call(self, features: dict) -> tf.Tensor:
        """Embeds raw features: ``movie_id`` [N], ``movie_title`` [N], ``movie_genres`` [N, G] (-1 padded)."""
        return self._embed(self._preprocess(features["movie_id"], features["movie_title"], features["movie_genres"]))

    def embed_catalog(self) -> tf.Tensor:
        """Embeddings of every catalog item, [N + 1, dim]; row 0 is the unknown item."""
        return self._embed(self._catalog)

    def embed_indices(self, indices: tf.Tensor) -> tf.Tensor:
        """Embeds catalog indices of any shape through the snapshot of preprocessed features."""
        return self._embed({name: tf.gather(values, indices) for name, values in self._catalog.items()})

    def indices(self, item_ids: tf.Tensor) -> tf.Tensor:
        """Catalog indices of string ids (0 for unknown ids and for "" padding)."""
        return self.id_lookup(item_ids)


def _title_words(movie_title: tf.Tensor) -> tf.Tensor:
    """The title without its trailing "(year)", which is a feature of its own."""
    return tf.strings.regex_replace(movie_title, r"\s*\(\d{4}\)\s*$", "")


def _pad_genres(genres: Sequence[Sequence[int]]) -> tf.Tensor:
    width = max(1, max(len(item_genres) for item_genres in genres))
    padded = np.full((len(genres), width), -1, np.int64)
    for row, item_genres in enumerate(genres):
        padded[row, : len(item_genres)] = item_genres
    return tf.constant(padded)
