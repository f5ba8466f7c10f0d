"""TF Serving's batching and monitoring config messages, which ``tensorflow-serving-api`` does not ship.

``BatchingParameters`` (``session_bundle_config.proto``) and ``MonitoringConfig``
(``monitoring_config.proto``) are defined here field for field as in TF Serving (same package,
names, numbers and types), so the text files written for ``tensorflow_model_server`` parse the
same way with ``google.protobuf.text_format``. They live in a private descriptor pool, so a future
``tensorflow-serving-api`` that ships them cannot clash with these definitions.
"""
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

_FIELD = descriptor_pb2.FieldDescriptorProto
_PACKAGE = "tensorflow.serving"


def _field(name: str, number: int, field_type: int, type_name: str = "", repeated: bool = False) -> _FIELD:
    label = _FIELD.LABEL_REPEATED if repeated else _FIELD.LABEL_OPTIONAL
    field = _FIELD(name=name, number=number, type=field_type, label=label)
    if type_name:
        field.type_name = type_name
    return field


def _wrapper(name: str, number: int, wrapper: str) -> _FIELD:
    return _field(name, number, _FIELD.TYPE_MESSAGE, f".google.protobuf.{wrapper}")


def _build_pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    batching = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/servables/tensorflow/session_bundle_config.proto", package=_PACKAGE,
        syntax="proto3", dependency=["google/protobuf/wrappers.proto"])
    batching.message_type.add(name="BatchingParameters", field=[
        _wrapper("max_batch_size", 1, "Int64Value"),
        _wrapper("batch_timeout_micros", 2, "Int64Value"),
        _wrapper("max_enqueued_batches", 3, "Int64Value"),
        _wrapper("num_batch_threads", 4, "Int64Value"),
        _wrapper("thread_pool_name", 5, "StringValue"),
        _field("allowed_batch_sizes", 6, _FIELD.TYPE_INT64, repeated=True),
        _field("pad_variable_length_inputs", 7, _FIELD.TYPE_BOOL),
    ])
    pool.Add(batching)
    monitoring = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/config/monitoring_config.proto", package=_PACKAGE, syntax="proto3")
    monitoring.message_type.add(name="PrometheusConfig", field=[
        _field("enable", 1, _FIELD.TYPE_BOOL),
        _field("path", 2, _FIELD.TYPE_STRING),
    ])
    monitoring.message_type.add(name="MonitoringConfig", field=[
        _field("prometheus_config", 1, _FIELD.TYPE_MESSAGE, f".{_PACKAGE}.PrometheusConfig"),
    ])
    pool.Add(monitoring)
    return pool


_POOL = _build_pool()
BatchingParameters = message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{_PACKAGE}.BatchingParameters"))
MonitoringConfig = message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{_PACKAGE}.MonitoringConfig"))
