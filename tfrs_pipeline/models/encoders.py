"""The causal transformer that turns an ordered item history into one query embedding per position.

Shared by the retrieval query tower (a user's rating history) and the session model (an anonymous
clickstream): both predict "the next item" from "the items so far", and both train on every
prefix at once, which a causal mask gives for the price of one forward pass.
"""
from __future__ import annotations

import tensorflow as tf


class TransformerBlock(tf.keras.layers.Layer):
    """Pre-norm self-attention + feed-forward block (pre-norm trains stably without warm-up)."""

    def __init__(self, dim: int, num_heads: int, dropout: float, **kwargs):
        super().__init__(**kwargs)
        self._attention_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6)
        self._attention = tf.keras.layers.MultiHeadAttention(
            num_heads=num_heads, key_dim=dim // num_heads, dropout=dropout
        )
        self._feed_forward_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6)
        self._feed_forward = tf.keras.Sequential(
            [
                tf.keras.layers.Dense(dim * 2, activation="gelu"),
                tf.keras.layers.Dropout(dropout),
                tf.keras.layers.Dense(dim),
            ]
        )
        self._dropout = tf.keras.layers.Dropout(dropout)

    def call(self, sequence: tf.Tensor, attention_mask: tf.Tensor, training: bool = False,
             last_only: bool = False) -> tf.Tensor:
        """[batch, length, dim], or with ``last_only`` [batch, 1, dim]: the last slot's output alone."""
        normed = self._attention_norm(sequence)
        queries, residual = (normed[:, -1:], sequence[:, -1:]) if last_only else (normed, sequence)
        if last_only:
            attention_mask = attention_mask[:, -1:]
        attended = self._attention(queries, normed, attention_mask=attention_mask, training=training)
        sequence = residual + self._dropout(attended, training=training)
        transformed = self._feed_forward(self._feed_forward_norm(sequence), training=training)
        return sequence + self._dropout(transformed, training=training)


class CausalTransformerEncoder(tf.keras.layers.Layer):
    """Encodes left-padded item embeddings [batch, length, dim] into per-position states.

    Sequences are left-padded so that the most recent item always sits in the last slot: serving
    reads the last position, training reads every position. Position embeddings are learned per slot
    (as in SASRec), so "the most recent item" has the same position at training and serving time.

    Args:
      max_length: number of slots; longer histories must be cut to their most recent items.
      dim: embedding width (inputs and outputs).
      num_blocks, num_heads, dropout: transformer shape.
    """

    def __init__(self, max_length: int, dim: int, num_blocks: int = 2, num_heads: int = 2,
                 dropout: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        self.max_length = max_length
        self._positions = tf.keras.layers.Embedding(max_length, dim)
        self._input_dropout = tf.keras.layers.Dropout(dropout)
        self._blocks = [TransformerBlock(dim, num_heads, dropout) for _ in range(num_blocks)]
        self._output_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6)

    def call(self, item_embeddings: tf.Tensor, padding_mask: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Returns [batch, length, dim]; position t has seen items 0..t only.

        Args:
          item_embeddings: [batch, length, dim], left-padded.
          padding_mask: [batch, length] bool, True where a real item is.
        """
        return self._encode(item_embeddings, padding_mask, training, last_only=False)

    def last_state(self, item_embeddings: tf.Tensor, padding_mask: tf.Tensor, training: bool = False) -> tf.Tensor:
        """[batch, dim]: ``call(...)[:, -1]`` without computing the other slots' outputs in the last block.

        Serving, evaluation and export read only the state after the most recent item. The last
        block still needs every slot's keys and values, but its attention and feed-forward run for
        one slot instead of all of them.
        """
        return self._encode(item_embeddings, padding_mask, training, last_only=True)[:, -1]

    def _encode(self, item_embeddings: tf.Tensor, padding_mask: tf.Tensor, training: bool,
                last_only: bool) -> tf.Tensor:
        length = tf.shape(item_embeddings)[1]
        slots = tf.range(self.max_length - length, self.max_length)
        sequence = item_embeddings * tf.math.sqrt(tf.cast(tf.shape(item_embeddings)[-1], tf.float32))
        sequence = self._input_dropout(sequence + self._positions(slots)[tf.newaxis], training=training)
        causal = tf.linalg.band_part(tf.ones([length, length], tf.bool), -1, 0)
        # A padded query row attends to nothing valid; let it see itself so softmax stays finite.
        attention_mask = tf.logical_and(causal[tf.newaxis], padding_mask[:, tf.newaxis, :])
        attention_mask = tf.logical_or(attention_mask, tf.eye(length, dtype=tf.bool)[tf.newaxis])
        keep = tf.cast(padding_mask, sequence.dtype)[..., tf.newaxis]
        last_block = len(self._blocks) - 1
        for position, block in enumerate(self._blocks):
            sequence = block(sequence * keep, attention_mask, training=training,
                             last_only=last_only and position == last_block)
        return self._output_norm(sequence) * (keep[:, -1:] if last_only else keep)


def most_recent_left_padded(item_ids: tf.Tensor, max_length: int) -> tf.Tensor:
    """[batch, max_length]: each row's last ``max_length`` non-empty ids, moved to the right end.

    Clients send histories padded with "" at the end and of any length; the encoder wants the most
    recent item in the last slot. Empty strings anywhere are dropped, so padding style cannot matter.
    """
    items = tf.ragged.boolean_mask(item_ids, tf.not_equal(item_ids, ""))
    recent_first = tf.reverse(items, axis=[1])[:, :max_length]
    return tf.reverse(recent_first.to_tensor(default_value="", shape=[None, max_length]), axis=[1])
