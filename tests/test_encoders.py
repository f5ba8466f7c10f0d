"""The causal transformer: its shortcut for the last slot, its relative and time attention biases, its attention
against Keras's, its dropout."""
import numpy as np
import pytest
import tensorflow as tf

from tfrs_pipeline.models.encoders import (
    TIME_BUCKETS,
    BitDropout,
    CausalSelfAttention,
    CausalTransformerEncoder,
    most_recent_left_padded,
    most_recent_timestamps,
    time_buckets,
)
from tfrs_pipeline.models.session import SessionModel


def test_last_state_is_the_full_pass_last_slot_for_left_padded_rows():
    rng = np.random.default_rng(0)
    encoder = CausalTransformerEncoder(max_length=12, dim=16, num_blocks=3, num_heads=2, dropout=0.2)
    lengths = np.array([10, 3, 1, 0])  # the last row is all padding
    padding_mask = tf.constant(np.arange(10)[np.newaxis, :] >= 10 - lengths[:, np.newaxis])
    items = tf.constant(rng.normal(size=(4, 10, 16)), tf.float32) * tf.cast(padding_mask, tf.float32)[..., None]
    full = encoder(items, padding_mask).numpy()
    last = encoder.last_state(items, padding_mask).numpy()
    assert last.shape == (4, 16)
    np.testing.assert_allclose(last, full[:, -1], rtol=1e-5, atol=1e-5)
    assert np.abs(full[:3, -1]).max() > 0.1  # real rows carry a state; the test would pass on zeros otherwise


def test_relative_attention_bias_reads_distances_that_trimmed_padding_leaves_unchanged():
    """Length-bucketed batches trim leading padding; the bias must read the same distance either way."""
    rng = np.random.default_rng(3)
    encoder = CausalTransformerEncoder(max_length=12, dim=16, num_blocks=2, num_heads=2, dropout=0.0,
                                       relative_attention_bias=True)
    lengths = np.array([6, 2])
    padding_mask = np.arange(9)[np.newaxis, :] >= 9 - lengths[:, np.newaxis]
    items = rng.normal(size=(2, 9, 16)).astype(np.float32) * padding_mask[..., None]
    encoder(tf.constant(items), tf.constant(padding_mask))
    encoder._relative_bias.assign(rng.normal(size=(2, 12)).astype(np.float32))
    wide = encoder(tf.constant(items), tf.constant(padding_mask)).numpy()
    trimmed = encoder(tf.constant(items[:, 3:]), tf.constant(padding_mask[:, 3:])).numpy()
    np.testing.assert_allclose(trimmed, wide[:, 3:], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(encoder.last_state(tf.constant(items[:, 3:]), tf.constant(padding_mask[:, 3:])),
                               wide[:, -1], rtol=1e-5, atol=1e-5)


def test_relative_attention_bias_on_one_distance_makes_each_slot_read_the_item_that_far_back():
    rng = np.random.default_rng(4)
    encoder = CausalTransformerEncoder(max_length=8, dim=8, num_blocks=1, num_heads=2, dropout=0.0,
                                       relative_attention_bias=True)
    padding_mask = tf.ones([1, 8], tf.bool)
    items = rng.normal(size=(1, 8, 8)).astype(np.float32)
    encoder(tf.constant(items), padding_mask)
    encoder._relative_bias.assign(np.where(np.arange(8) == 2, 0.0, -50.0)[np.newaxis].repeat(2, 0).astype(np.float32))

    def last_state_after_changing(slot: int) -> np.ndarray:
        changed = items.copy()
        changed[0, slot] = rng.normal(size=8)
        return encoder.last_state(tf.constant(changed), padding_mask).numpy()

    before = encoder.last_state(tf.constant(items), padding_mask).numpy()
    assert np.abs(last_state_after_changing(5) - before).max() > 1e-2  # two steps back from slot 7: read
    np.testing.assert_allclose(last_state_after_changing(4), before, atol=1e-5)  # three steps back: not read
    np.testing.assert_allclose(last_state_after_changing(6), before, atol=1e-5)  # one step back: not read


def test_time_attention_bias_on_one_bucket_makes_each_slot_read_the_items_that_long_before():
    """Bucket b holds gaps of 2^b - 1 to 2^(b+1) - 2 seconds: with every other bucket's logit far below,
    the last slot reads only the items rated within that gap of it, however many slots back they sit."""
    rng = np.random.default_rng(5)
    encoder = CausalTransformerEncoder(max_length=8, dim=8, num_blocks=1, num_heads=2, dropout=0.0,
                                       time_attention_bias=True)
    padding_mask = tf.ones([1, 8], tf.bool)
    items = rng.normal(size=(1, 8, 8)).astype(np.float32)
    # Slots 0-4 a day before the last three; those three a minute apart.
    timestamps = tf.constant([[0, 10, 20, 30, 40, 86_400, 86_460, 86_520]], tf.int64)
    encoder(tf.constant(items), padding_mask, timestamps)
    day = int(np.log2(1 + 86_480))  # the last slot's gap to slot 4 (86,480 s); to slot 0 (86,520 s) too
    encoder._time_bias.assign(np.where(np.arange(32) == day, 0.0, -50.0)[:, np.newaxis].repeat(2, 1)
                              .astype(np.float32))

    def last_state_after_changing(slot: int) -> np.ndarray:
        changed = items.copy()
        changed[0, slot] = rng.normal(size=8)
        return encoder.last_state(tf.constant(changed), padding_mask, timestamps).numpy()

    before = encoder.last_state(tf.constant(items), padding_mask, timestamps).numpy()
    for slot in range(5):  # the day before: read
        assert np.abs(last_state_after_changing(slot) - before).max() > 1e-3, slot
    for slot in (5, 6):  # one and two minutes before: not read
        np.testing.assert_allclose(last_state_after_changing(slot), before, atol=1e-5)
    with pytest.raises(ValueError, match="timestamps"):
        encoder.last_state(tf.constant(items), padding_mask)


def test_the_most_recent_timestamps_stay_with_their_items_whatever_the_padding():
    history = tf.constant([["a", "", "b", "c", ""], ["", "", "", "", ""], ["d", "e", "f", "g", "h"]])
    timestamps = tf.constant([[1, 99, 2, 3, 99], [99] * 5, [4, 5, 6, 7, 8]], tf.int64)
    recent = most_recent_left_padded(history, 3).numpy().astype(str).tolist()
    times = most_recent_timestamps(history, timestamps, 3).numpy().tolist()
    assert recent == [["a", "b", "c"], ["", "", ""], ["f", "g", "h"]]
    assert times == [[1, 2, 3], [0, 0, 0], [6, 7, 8]]


def test_time_buckets_are_the_base_2_logarithm_of_one_plus_the_gap():
    gaps = tf.constant([0, 1, 2, 3, 6, 7, 86_400, 2**40], tf.int64)
    assert time_buckets(gaps).numpy().tolist() == [0, 1, 1, 2, 2, 3, 16, TIME_BUCKETS - 1]


def test_session_query_is_the_last_slot_of_the_per_slot_queries():
    tf.keras.utils.set_random_seed(1)
    sessions = tf.constant([["", "", "a", "b", "a"], ["", "", "", "", "c"], ["b", "c", "a", "b", "c"]])
    model = SessionModel(["a", "b", "c"], np.ones(4), max_length=8, dim=8, num_blocks=2, num_heads=2,
                         num_negatives=None)
    per_slot = model.sequence_queries(sessions).numpy()
    np.testing.assert_allclose(model.query(sessions).numpy(), per_slot[:, -1], rtol=1e-5, atol=1e-5)
    assert not np.allclose(per_slot[0, -1], per_slot[1, -1])  # sessions differ, so must their queries


def test_attention_computes_what_keras_multi_head_attention_does_with_the_same_weights():
    """The lean attention replaced Keras's; given Keras's weights it must answer what Keras answers."""
    rng = np.random.default_rng(2)
    dim, heads, length = 8, 2, 6
    sequence = tf.constant(rng.normal(size=(3, length, dim)), tf.float32)
    may_see = np.tril(np.ones((length, length), bool))[np.newaxis].repeat(3, axis=0)
    may_see[1, :, :2] = np.eye(length, dtype=bool)[:, :2]  # row 1: the first two slots are padding
    keras_attention = tf.keras.layers.MultiHeadAttention(num_heads=heads, key_dim=dim // heads)
    expected = keras_attention(sequence, sequence, attention_mask=tf.constant(may_see)).numpy()

    attention = CausalSelfAttention(dim, heads, dropout=0.0)
    mask_logits = tf.where(tf.constant(may_see), 0.0, -1e9)[:, tf.newaxis]
    attention(sequence, mask_logits)
    query, key, value, output = (keras_attention._query_dense, keras_attention._key_dense,
                                 keras_attention._value_dense, keras_attention._output_dense)
    attention._query_key_value.set_weights([
        np.concatenate([dense.kernel.numpy().reshape(dim, dim) for dense in (query, key, value)], axis=1),
        np.concatenate([dense.bias.numpy().reshape(dim) for dense in (query, key, value)]),
    ])
    attention._output.set_weights([output.kernel.numpy().reshape(dim, dim), output.bias.numpy()])

    np.testing.assert_allclose(attention(sequence, mask_logits).numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(attention(sequence, mask_logits[:, :, -1:], last_only=True).numpy(),
                               expected[:, -1:], rtol=1e-5, atol=1e-5)
    assert np.abs(expected).max() > 0.1


def test_bit_dropout_drops_its_rate_keeps_the_mean_and_repeats_under_a_seed():
    ones = tf.ones([1000, 1001])  # an odd count: the last 32-bit word is half used
    dropout = BitDropout(0.2)
    tf.keras.utils.set_random_seed(3)
    first, second = dropout(ones, training=True).numpy(), dropout(ones, training=True).numpy()
    assert set(np.unique(first)) == {0.0, np.float32(65536 / (65536 - 13107))}
    assert abs((first == 0).mean() - 0.2) < 0.003
    assert abs(first.mean() - 1.0) < 0.005
    assert (first != second).mean() > 0.2  # every call draws anew
    tf.keras.utils.set_random_seed(3)
    np.testing.assert_array_equal(dropout(ones, training=True).numpy(), first)
    np.testing.assert_array_equal(dropout(ones).numpy(), ones.numpy())  # inference leaves values alone
