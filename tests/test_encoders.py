"""The causal transformer's shortcut for the last slot against its full pass."""
import numpy as np
import tensorflow as tf

from tfrs_pipeline.models.encoders import CausalTransformerEncoder
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


def test_session_query_is_the_last_slot_of_the_per_slot_queries():
    tf.keras.utils.set_random_seed(1)
    sessions = tf.constant([["", "", "a", "b", "a"], ["", "", "", "", "c"], ["b", "c", "a", "b", "c"]])
    model = SessionModel(["a", "b", "c"], np.ones(4), max_length=8, dim=8, num_blocks=2, num_heads=2,
                         num_negatives=None)
    per_slot = model.sequence_queries(sessions).numpy()
    np.testing.assert_allclose(model.query(sessions).numpy(), per_slot[:, -1], rtol=1e-5, atol=1e-5)
    assert not np.allclose(per_slot[0, -1], per_slot[1, -1])  # sessions differ, so must their queries
