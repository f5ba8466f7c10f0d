"""The server's and client's own TensorProto codecs read and write what TensorFlow's do.

They replace ``tf.make_ndarray`` / ``tf.make_tensor_proto`` on the Predict path, so any TF Serving
client must read our answers, and we must read any client's requests, exactly as TensorFlow does.
"""
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2

from tfrs_pipeline.serving import tensors
from tfrs_pipeline.serving.errors import ServingError

ARRAYS = {
    "byte strings": np.array([[b"42", b""], [b"\xff\x00", b"sku-7"]], dtype=object),
    "text": np.array(["caf\u00e9", "garden"]),
    "float32": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
    "float64": np.array([1e-300, -2.5]),
    "int64": np.array([[-(2**62), 7]], dtype=np.int64),
    "int32": np.array([3, -4, 5], dtype=np.int32),
    "bool": np.array([True, False, True]),
    "scalar": np.array(2.5, dtype=np.float32),
    "empty batch": np.zeros((0, 200), dtype=np.float32),
}


def _tf_view(array: np.ndarray) -> np.ndarray:
    """What TensorFlow makes of an array: text becomes UTF-8 bytes."""
    return tf.make_ndarray(tf.make_tensor_proto(array))


@pytest.mark.parametrize("name", ARRAYS)
def test_our_encoding_reads_back_through_tensorflow_and_ours(name):
    array = ARRAYS[name]
    proto = tensor_pb2.TensorProto()
    tensors.fill_tensor_proto(proto, array)
    wire = tensor_pb2.TensorProto.FromString(proto.SerializeToString())
    expected = _tf_view(array)
    for decoded in (tf.make_ndarray(wire), tensors.from_tensor_proto(name, wire)):
        assert decoded.dtype == expected.dtype and decoded.shape == expected.shape
        assert np.array_equal(decoded, expected)


@pytest.mark.parametrize("name", ARRAYS)
def test_we_read_what_tensorflow_writes(name):
    proto = tf.make_tensor_proto(ARRAYS[name])
    decoded, expected = tensors.from_tensor_proto(name, proto), tf.make_ndarray(proto)
    assert decoded.dtype == expected.dtype and decoded.shape == expected.shape
    assert np.array_equal(decoded, expected)


def test_values_given_one_by_one_are_read_as_tensorflow_reads_them():
    """Clients in other languages often fill ``float_val``/``int64_val`` instead of ``tensor_content``."""
    proto = tensor_pb2.TensorProto(dtype=tf.float32.as_datatype_enum, float_val=[0.5, 1.5, 2.5, 3.5])
    proto.tensor_shape.dim.add().size = 2
    proto.tensor_shape.dim.add().size = 2
    assert np.array_equal(tensors.from_tensor_proto("x", proto), np.array([[0.5, 1.5], [2.5, 3.5]], np.float32))


def test_content_that_does_not_fit_the_shape_is_refused_before_it_is_read():
    proto = tf.make_tensor_proto(np.ones((2, 3), dtype=np.float32))
    proto.tensor_shape.dim[0].size = 3
    with pytest.raises(ServingError, match="tensor_content has 24 bytes"):
        tensors.from_tensor_proto("scores", proto)
