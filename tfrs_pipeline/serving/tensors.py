"""Tensors in and out of the server: ``TensorProto`` (gRPC) and JSON (REST) to numpy and back.

gRPC requests carry ``TensorProto`` messages whose dtype must be the signature's, as in TF Serving.
REST requests carry JSON, which has no dtypes, so values are converted to the dtype the signature
declares; strings may be sent as ``{"b64": "..."}`` as TF Serving's REST API allows.
"""
import base64

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2

from tfrs_pipeline.serving.errors import invalid_argument


def from_tensor_proto(name: str, proto: tensor_pb2.TensorProto) -> np.ndarray:
    try:
        return tf.make_ndarray(proto)
    except (TypeError, ValueError) as error:
        raise invalid_argument(f"input '{name}' is not a valid TensorProto: {error}") from None


def to_tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    return tf.make_tensor_proto(array)


def from_json(name: str, value, dtype: tf.DType) -> np.ndarray:
    """Converts a JSON value (nested lists) to an array of the signature's ``dtype``."""
    try:
        if dtype == tf.string:
            return np.array(_json_strings(value), dtype=object)
        array = np.array(value, dtype=dtype.as_numpy_dtype)
    except (TypeError, ValueError) as error:
        raise invalid_argument(f"input '{name}': cannot read {_preview(value)} as {dtype.name}: {error}") from None
    if array.dtype == object:
        raise invalid_argument(f"input '{name}': the nested lists are ragged; a tensor needs equal lengths")
    return array


def _json_strings(value):
    if isinstance(value, list):
        strings = [_json_strings(item) for item in value]
        lengths = {len(item) if isinstance(item, list) else -1 for item in strings}
        if len(lengths) > 1:
            raise ValueError("the nested lists are ragged; a tensor needs equal lengths")
        return strings
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    if isinstance(value, str):
        return value.encode("utf-8")
    raise ValueError(f"expected a string, got {_preview(value)}")


def to_json(array: np.ndarray):
    """An output array as JSON: numbers as numbers, UTF-8 strings as strings, other bytes as ``{"b64": ...}``."""
    if array.dtype == object or array.dtype.kind == "S":
        return _strings_to_json(array.tolist())
    return array.tolist()


def _strings_to_json(value):
    if isinstance(value, list):
        return [_strings_to_json(item) for item in value]
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(value).decode("ascii")}


def _preview(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
