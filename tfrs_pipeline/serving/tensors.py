"""Tensors in and out of the server: ``TensorProto`` (gRPC) and JSON (REST) to numpy and back.

gRPC requests carry ``TensorProto`` messages whose dtype must be the signature's, as in TF Serving.
REST requests carry JSON, which has no dtypes, so values are converted to the dtype the signature
declares; strings may be sent as ``{"b64": "..."}`` as TF Serving's REST API allows.

A request's size is checked before anything is allocated: a ``TensorProto`` whose values do not
match its shape is refused (a 41-byte proto that declares [8M, 1] strings would otherwise cost
100 MB), and so is a batch above the server's ``--max_request_batch_size``.
"""
import base64
import binascii
import math

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from tfrs_pipeline.serving.errors import invalid_argument

# The repeated field holding a TensorProto's values when ``tensor_content`` is empty, by dtype.
_VALUE_FIELDS = {
    types_pb2.DT_STRING: "string_val", types_pb2.DT_FLOAT: "float_val", types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT32: "int_val", types_pb2.DT_INT16: "int_val", types_pb2.DT_INT8: "int_val",
    types_pb2.DT_UINT8: "int_val", types_pb2.DT_UINT16: "int_val", types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_BOOL: "bool_val", types_pb2.DT_HALF: "half_val", types_pb2.DT_BFLOAT16: "half_val",
    types_pb2.DT_UINT32: "uint32_val", types_pb2.DT_UINT64: "uint64_val",
}
# Numeric dtypes whose ``tensor_content`` numpy reads as is (little-endian, as every TF client writes it).
_NUMPY_DTYPES = {dtype.as_datatype_enum: dtype.as_numpy_dtype
                 for dtype in (tf.float32, tf.float64, tf.int32, tf.int64, tf.int16, tf.int8, tf.uint8, tf.bool)}
_DTYPE_ENUMS = {np.dtype(numpy_dtype): enum for enum, numpy_dtype in _NUMPY_DTYPES.items()}


def check_batch_size(name: str, batch_size: int, max_batch_size: int) -> None:
    """Refuses a batch above ``max_batch_size`` (0: no limit) as TF Serving's batcher does: INVALID_ARGUMENT."""
    if max_batch_size and batch_size > max_batch_size:
        raise invalid_argument(f"input '{name}': a batch of {batch_size} is larger than the maximum request batch "
                               f"size {max_batch_size} (--max_request_batch_size); split the request")


def from_tensor_proto(name: str, proto: tensor_pb2.TensorProto, max_batch_size: int = 0) -> np.ndarray:
    """The proto's array, after checking its shape against its values and ``max_batch_size`` (0: no limit)."""
    dims = [dim.size for dim in proto.tensor_shape.dim]
    if proto.tensor_shape.unknown_rank or any(size < 0 for size in dims):
        raise invalid_argument(f"input '{name}': a request tensor needs a known shape, got {dims}")
    if dims:
        check_batch_size(name, dims[0], max_batch_size)
    elements = math.prod(dims)
    if proto.tensor_content:
        expected_bytes = elements * (tf.as_dtype(proto.dtype).size if proto.dtype != types_pb2.DT_STRING else 0)
        if len(proto.tensor_content) != expected_bytes:
            raise invalid_argument(f"input '{name}': tensor_content has {len(proto.tensor_content)} bytes, "
                                   f"its shape {dims} and dtype need {expected_bytes}")
    elif proto.dtype in _VALUE_FIELDS:
        values = len(getattr(proto, _VALUE_FIELDS[proto.dtype]))
        if values != elements:
            raise invalid_argument(f"input '{name}': the shape {dims} holds {elements} values but "
                                   f"{values} were sent")
    return _array_of(name, proto, dims)


def _array_of(name: str, proto: tensor_pb2.TensorProto, dims: list[int]) -> np.ndarray:
    """The values of a checked proto, read straight from its fields for the encodings clients send.

    ``tf.make_ndarray`` handles every encoding but walks the values in Python; on a small model that
    walk is a visible share of a request, so strings and ``tensor_content`` are read directly.
    """
    if proto.dtype == types_pb2.DT_STRING and not proto.tensor_content:
        array = np.empty(len(proto.string_val), dtype=object)
        array[:] = proto.string_val
        return array.reshape(dims)
    if proto.tensor_content and proto.dtype in _NUMPY_DTYPES:
        return np.frombuffer(proto.tensor_content, dtype=_NUMPY_DTYPES[proto.dtype]).reshape(dims)
    try:
        return tf.make_ndarray(proto)
    except (TypeError, ValueError) as error:
        raise invalid_argument(f"input '{name}' is not a valid TensorProto: {error}") from None


def fill_tensor_proto(proto: tensor_pb2.TensorProto, array: np.ndarray) -> None:
    """Writes ``array`` into ``proto`` (a response's output, in place).

    Strings go to ``string_val`` and numbers to ``tensor_content``, the encoding ``tf.make_tensor_proto``
    chooses, without its per-value Python work or the copy into a separate message.
    """
    if array.dtype == object or array.dtype.kind in "SU":
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(value if isinstance(value, bytes) else str(value).encode("utf-8")
                                for value in array.ravel().tolist())
    else:
        proto.dtype = _DTYPE_ENUMS.get(array.dtype) or tf.as_dtype(array.dtype).as_datatype_enum
        proto.tensor_content = np.ascontiguousarray(array).tobytes()
    for size in array.shape:
        proto.tensor_shape.dim.add().size = size


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
        if not isinstance(value["b64"], str):
            raise ValueError(f"a b64 value must be a string, got {_preview(value['b64'])}")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except binascii.Error as error:
            raise ValueError(f"invalid base64 {_preview(value['b64'])}: {error}") from None
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
