"""The causal transformer that turns an ordered item history into one query embedding per position.

Shared by the retrieval query tower (a user's rating history) and the session model (an anonymous
clickstream): both predict "the next item" from "the items so far", and both train on every
prefix at once, which a causal mask gives for the price of one forward pass.

Training this encoder is most of the README command's time, so its attention and dropout are
written for the CPU rather than taken from Keras: Keras's ``MultiHeadAttention`` projects queries,
keys and values with three einsums and turns the boolean mask into an additive one in every block,
and Keras's dropout draws a float32 uniform per element, which over the [batch, heads, length,
length] attention probabilities made dropout the largest cost of a training step after the matmuls
(docs/benchmarks.md, "a lean encoder").
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

# Keep decisions are drawn as 16 random bits each: a rate is honoured to 1 / 65,536.
_DROPOUT_LEVELS = 2**16
_MASKED = -1e9  # added to the attention logits of the slots a position must not see
# Time between two interactions, bucketed by its base-2 logarithm in seconds: bucket b holds gaps of
# 2^b - 1 to 2^(b+1) - 2 seconds; the last one every gap from about 68 years on.
TIME_BUCKETS = 32


class BitDropout(tf.keras.layers.Layer):
    """Inverted dropout whose keep decisions are 16-bit integers, two per 32-bit random word.

    The same regularizer as ``tf.keras.layers.Dropout`` with half the random draws: Keras's costs a
    float32 uniform per element, and the attention probabilities are the encoder's largest tensors.
    Each call draws its own seed from TensorFlow's global seed, so runs repeat.
    """

    def __init__(self, rate: float, **kwargs):
        super().__init__(**kwargs)
        self._threshold = int(round(rate * _DROPOUT_LEVELS))

    def call(self, inputs: tf.Tensor, training: bool = False) -> tf.Tensor:
        if not training or self._threshold == 0:
            return inputs
        shape = tf.shape(inputs)
        count = tf.reduce_prod(shape)
        seed = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32)
        words = tf.random.stateless_uniform([(count + 1) // 2], seed, minval=None, maxval=None, dtype=tf.uint32)
        levels = tf.reshape(tf.bitcast(words, tf.uint16), [-1])[:count]
        keep = tf.reshape(levels >= self._threshold, shape)
        return tf.where(keep, inputs * (_DROPOUT_LEVELS / (_DROPOUT_LEVELS - self._threshold)), 0.0)


class CausalSelfAttention(tf.keras.layers.Layer):
    """Multi-head self-attention under an additive mask, with dropout on the attention probabilities.

    Queries, keys and values come from one matmul; the mask arrives as logits to add (0 or
    ``_MASKED``), built once per encoder pass instead of once per block.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float, **kwargs):
        super().__init__(**kwargs)
        self._dim, self._num_heads = dim, num_heads
        self._head_dim = dim // num_heads  # the config checks that heads divide the width
        self._query_key_value = tf.keras.layers.Dense(3 * dim)
        self._output = tf.keras.layers.Dense(dim)
        self._dropout = BitDropout(dropout)

    def call(self, sequence: tf.Tensor, mask_logits: tf.Tensor, training: bool = False,
             last_only: bool = False) -> tf.Tensor:
        """[batch, length, dim] (or [batch, 1, dim] for the last slot alone) attending over ``sequence``.

        Args:
          sequence: [batch, length, dim].
          mask_logits: [batch, 1 or heads, queries, length]: 0 (or the relative bias) where a query slot may
            see a key slot, ``_MASKED`` elsewhere.
        """
        queries, keys, values = tf.split(self._query_key_value(sequence), 3, axis=-1)
        if last_only:
            queries = queries[:, -1:]
        queries, keys, values = (self._split_heads(part) for part in (queries, keys, values))
        logits = tf.matmul(queries * self._head_dim**-0.5, keys, transpose_b=True) + mask_logits
        probabilities = self._dropout(tf.nn.softmax(logits), training=training)
        attended = tf.transpose(tf.matmul(probabilities, values), [0, 2, 1, 3])  # [batch, queries, heads, head_dim]
        return self._output(tf.reshape(attended, tf.concat([tf.shape(attended)[:2], [self._dim]], axis=0)))

    def _split_heads(self, part: tf.Tensor) -> tf.Tensor:
        """[batch, slots, dim] -> [batch, heads, slots, head_dim]."""
        shape = tf.shape(part)
        return tf.transpose(tf.reshape(part, [shape[0], shape[1], self._num_heads, self._head_dim]), [0, 2, 1, 3])


class TransformerBlock(tf.keras.layers.Layer):
    """Pre-norm self-attention + feed-forward block (pre-norm trains stably without warm-up)."""

    def __init__(self, dim: int, num_heads: int, dropout: float, **kwargs):
        super().__init__(**kwargs)
        self._attention_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6)
        self._attention = CausalSelfAttention(dim, num_heads, dropout)
        self._feed_forward_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6)
        self._feed_forward = tf.keras.Sequential(
            [
                tf.keras.layers.Dense(dim * 2, activation="gelu"),
                BitDropout(dropout),
                tf.keras.layers.Dense(dim),
            ]
        )
        self._dropout = BitDropout(dropout)

    def call(self, sequence: tf.Tensor, mask_logits: tf.Tensor, training: bool = False,
             last_only: bool = False) -> tf.Tensor:
        """[batch, length, dim], or with ``last_only`` [batch, 1, dim]: the last slot's output alone."""
        residual = sequence[:, -1:] if last_only else sequence
        if last_only:
            mask_logits = mask_logits[:, :, -1:]
        attended = self._attention(self._attention_norm(sequence), mask_logits, training=training,
                                   last_only=last_only)
        sequence = residual + self._dropout(attended, training=training)
        transformed = self._feed_forward(self._feed_forward_norm(sequence), training=training)
        return sequence + self._dropout(transformed, training=training)


class CausalTransformerEncoder(tf.keras.layers.Layer):
    """Encodes left-padded item embeddings [batch, length, dim] into per-position states.

    Sequences are left-padded so that the most recent item always sits in the last slot: serving
    reads the last position, training reads every position. Position embeddings are learned per slot
    (as in SASRec), so "the most recent item" has the same position at training and serving time.

    Slot embeddings say where an item sits in the window, not how far apart two items are, and every
    position but the last learns from them only through the queries' and keys' dot products. A
    relative attention bias (as in T5 and HSTU) adds one learned logit per head and distance (query
    slot minus key slot, shared by all blocks), so "how much the item k steps back counts" is a
    prior every position of every window shares and learns from. A time bias (HSTU's other half)
    adds one learned logit per head and bucket of the time between the two interactions, so an item
    of the same sitting and one of a year before are told apart however many slots lie between them.

    Args:
      max_length: number of slots; longer histories must be cut to their most recent items.
      dim: embedding width (inputs and outputs).
      num_blocks, num_heads, dropout: transformer shape.
      relative_attention_bias: add the learned bias per head and distance to the attention logits.
      time_attention_bias: add the learned bias per head and time bucket (``time_buckets``); every
        call then takes the history's timestamps.
    """

    def __init__(self, max_length: int, dim: int, num_blocks: int = 2, num_heads: int = 2,
                 dropout: float = 0.2, relative_attention_bias: bool = False, time_attention_bias: bool = False,
                 **kwargs):
        super().__init__(**kwargs)
        self.max_length = max_length
        self._positions = tf.keras.layers.Embedding(max_length, dim)
        self._relative_bias = (self.add_weight(name="relative_attention_bias", shape=[num_heads, max_length],
                                               initializer="zeros") if relative_attention_bias else None)
        self._time_bias = (self.add_weight(name="time_attention_bias", shape=[TIME_BUCKETS, num_heads],
                                           initializer="zeros") if time_attention_bias else None)
        self._input_dropout = BitDropout(dropout)
        self._blocks = [TransformerBlock(dim, num_heads, dropout) for _ in range(num_blocks)]
        self._output_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6)

    @property
    def uses_time(self) -> bool:
        """Whether calls take the history's timestamps (a time bias)."""
        return self._time_bias is not None

    def call(self, item_embeddings: tf.Tensor, padding_mask: tf.Tensor, timestamps: tf.Tensor | None = None,
             training: bool = False) -> tf.Tensor:
        """Returns [batch, length, dim]; position t has seen items 0..t only.

        Args:
          item_embeddings: [batch, length, dim], left-padded.
          padding_mask: [batch, length] bool, True where a real item is.
          timestamps: [batch, length] int64 Unix seconds of the items (any value where padding); only
            with a time bias, which requires them.
        """
        return self._encode(item_embeddings, padding_mask, timestamps, training, last_only=False)

    def last_state(self, item_embeddings: tf.Tensor, padding_mask: tf.Tensor, timestamps: tf.Tensor | None = None,
                   training: bool = False) -> tf.Tensor:
        """[batch, dim]: ``call(...)[:, -1]`` without computing the other slots' outputs in the last block.

        Serving, evaluation and export read only the state after the most recent item. The last
        block still needs every slot's keys and values, but its attention and feed-forward run for
        one slot instead of all of them.
        """
        return self._encode(item_embeddings, padding_mask, timestamps, training, last_only=True)[:, -1]

    def _encode(self, item_embeddings: tf.Tensor, padding_mask: tf.Tensor, timestamps: tf.Tensor | None,
                training: bool, last_only: bool) -> tf.Tensor:
        length = tf.shape(item_embeddings)[1]
        slots = tf.range(self.max_length - length, self.max_length)
        sequence = item_embeddings * tf.math.sqrt(tf.cast(tf.shape(item_embeddings)[-1], tf.float32))
        sequence = self._input_dropout(sequence + self._positions(slots)[tf.newaxis], training=training)
        causal = tf.linalg.band_part(tf.ones([length, length], tf.bool), -1, 0)
        # A padded query row attends to nothing valid; let it see itself so softmax stays finite.
        attention_mask = tf.logical_and(causal[tf.newaxis], padding_mask[:, tf.newaxis, :])
        attention_mask = tf.logical_or(attention_mask, tf.eye(length, dtype=tf.bool)[tf.newaxis])
        mask_logits = tf.where(attention_mask, 0.0, _MASKED)[:, tf.newaxis]  # [batch, 1 (every head), length, length]
        if self._relative_bias is not None:  # [batch, heads, length, length] from here
            mask_logits += self._relative_logits(length)[tf.newaxis]
        if self._time_bias is not None:
            if timestamps is None:
                raise ValueError("this encoder has a time bias: pass the history's timestamps")
            mask_logits += self._time_logits(timestamps)
        keep = tf.cast(padding_mask, sequence.dtype)[..., tf.newaxis]
        last_block = len(self._blocks) - 1
        for position, block in enumerate(self._blocks):
            sequence = block(sequence * keep, mask_logits, training=training,
                             last_only=last_only and position == last_block)
        return self._output_norm(sequence) * (keep[:, -1:] if last_only else keep)

    def _time_logits(self, timestamps: tf.Tensor) -> tf.Tensor:
        """[batch, heads, length, length]: the bias of each (query slot, key slot) by the time between them.

        Keys after the query (hidden by the causal mask) and out-of-order timestamps read bucket 0.
        """
        gaps = tf.maximum(timestamps[:, :, tf.newaxis] - timestamps[:, tf.newaxis, :], 0)
        return tf.transpose(tf.gather(self._time_bias, time_buckets(gaps)), [0, 3, 1, 2])

    def _relative_logits(self, length: tf.Tensor) -> tf.Tensor:
        """[heads, length, length]: the bias of each (query slot, key slot) by their distance.

        Distances are those within the window passed (trimmed or not), so trimming leading padding
        leaves them unchanged; the causal mask hides the negative ones, which read distance 0.
        """
        slots = tf.range(length)
        distances = tf.clip_by_value(slots[:, tf.newaxis] - slots[tf.newaxis, :], 0, self.max_length - 1)
        return tf.gather(self._relative_bias, distances, axis=1)


def time_buckets(gap_seconds: tf.Tensor) -> tf.Tensor:
    """int32 bucket of each gap (>= 0 seconds): floor(log2(1 + gap)), at most ``TIME_BUCKETS - 1``."""
    log2_gaps = tf.math.log(tf.cast(gap_seconds, tf.float32) + 1.0) * np.float32(1 / np.log(2))
    return tf.minimum(tf.cast(log2_gaps, tf.int32), TIME_BUCKETS - 1)


def most_recent_left_padded(item_ids: tf.Tensor, max_length: int) -> tf.Tensor:
    """[batch, max_length]: each row's last ``max_length`` non-empty ids, moved to the right end.

    Clients send histories padded with "" at the end and of any length; the encoder wants the most
    recent item in the last slot. Empty strings anywhere are dropped, so padding style cannot matter.
    """
    return _most_recent(item_ids, tf.not_equal(item_ids, ""), max_length, "")


def most_recent_timestamps(item_ids: tf.Tensor, timestamps: tf.Tensor, max_length: int) -> tf.Tensor:
    """[batch, max_length] int64: the timestamps of ``most_recent_left_padded(item_ids, max_length)``'s
    items, slot for slot (0 where it pads); ``timestamps`` is [batch, width of item_ids]."""
    return _most_recent(timestamps, tf.not_equal(item_ids, ""), max_length, tf.constant(0, tf.int64))


def _most_recent(values: tf.Tensor, kept: tf.Tensor, max_length: int, padding) -> tf.Tensor:
    recent_first = tf.reverse(tf.ragged.boolean_mask(values, kept), axis=[1])[:, :max_length]
    return tf.reverse(recent_first.to_tensor(default_value=padding, shape=[None, max_length]), axis=[1])
