"""One loaded model version: its SavedModel signatures, checked and run like TF Serving runs them.

The signatures' contract (input and output names, dtypes, shapes) is read from the SavedModel's
own ``SignatureDef``s, the same data TF Serving returns from GetModelMetadata, so requests are
checked against exactly what the exporter declared and a bad request is an INVALID_ARGUMENT that
names the input, never a TensorFlow traceback.

A version is loaded as TF Serving loads it (a ``SavedModelBundle``): its MetaGraph in a graph and
session of its own, run by the signatures' tensor names. Everything the version holds goes with the
session when the last request on it is done. ``tf.saved_model.load`` instead instantiates the
functions in the process-wide eager context, which keeps their kernels after the model is dropped:
each ScaNN retrieval version loaded that way kept its searcher, and one OS thread, for good.

Each signature runs through a session callable made on its first request (``Session.make_callable``,
TF Serving's ``RunCallable``): ``Session.run`` would map its feed and fetch dicts in Python on every
request, work that costs a small model a noticeable share of its time.
"""
import pathlib
import threading
from typing import Callable, Mapping, Sequence

import grpc
import numpy as np
import tensorflow as tf
from scann import scann_ops  # noqa: F401  (registers the ScaNN ops, so ScaNN-indexed exports load)
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2, saved_model_pb2

from tfrs_pipeline.contracts import SERVING_SIGNATURE
from tfrs_pipeline.serving.errors import ServingError, invalid_argument


class Servable:
    """A SavedModel version ready to serve: ``run`` checks a request's inputs and calls a signature."""

    def __init__(self, name: str, version: int, path: str | pathlib.Path,
                 session_config: config_pb2.ConfigProto | None = None):
        """``session_config``: how the version's session runs its graphs (``session_config_for``)."""
        self.name = name
        self.version = version
        self.path = pathlib.Path(path)
        self.signature_defs = _read_signature_defs(self.path)
        graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=graph, config=session_config)
        with graph.as_default():
            tf.compat.v1.saved_model.loader.load(self._session, ["serve"], str(self.path))
        self._runners: dict[str, Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]] = {}
        self._runners_lock = threading.Lock()

    def signature_def(self, signature_name: str) -> meta_graph_pb2.SignatureDef:
        signature_name = signature_name or SERVING_SIGNATURE
        if signature_name not in self.signature_defs:
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"Serving signature name: \"{signature_name}\" not found in signature def of model "
                               f"{self.name} version {self.version}; it has {sorted(self.signature_defs)}")
        return self.signature_defs[signature_name]

    def check_request(self, signature_name: str, inputs: Mapping[str, np.ndarray],
                      output_filter: Sequence[str] = ()) -> list[str]:
        """Raises INVALID_ARGUMENT naming the input or output if a request does not fit the signature.

        Returns:
          The names of the outputs to answer with: ``output_filter``, or all outputs when it is empty.
        """
        signature_def = self.signature_def(signature_name)
        expected = signature_def.inputs
        missing = sorted(set(expected) - set(inputs))
        unknown = sorted(set(inputs) - set(expected))
        if missing or unknown:
            problems = ([f"missing {missing}"] if missing else []) + ([f"unknown {unknown}"] if unknown else [])
            raise invalid_argument(f"signature '{signature_name or SERVING_SIGNATURE}' expects inputs "
                                   f"{_describe(expected)}; " + "; ".join(problems))
        for input_name, tensor_info in expected.items():
            _check_tensor(input_name, inputs[input_name], tensor_info)
        unknown_outputs = sorted(set(output_filter) - set(signature_def.outputs))
        if unknown_outputs:
            raise invalid_argument(f"output tensor alias not found in signature: {unknown_outputs}; "
                                   f"outputs are {sorted(signature_def.outputs)}")
        return list(output_filter) or sorted(signature_def.outputs)

    def call(self, signature_name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs a signature on inputs that passed ``check_request``; returns all its outputs."""
        runner = self._runners.get(signature_name) or self._make_runner(signature_name)
        try:
            return runner(inputs)
        except tf.errors.InvalidArgumentError as error:
            raise invalid_argument(f"model {self.name} version {self.version}: {error.message}") from None

    def warm_up(self) -> list[str]:
        """Runs each signature once on a one-row request of empty strings and zeros, as TF Serving
        replays a model's warm-up requests before it serves the version.

        A signature's first run builds its executor and lets TensorFlow optimize its graph, seconds
        for a large model; done here, before the version is available, no client waits for it.
        Returns the signatures that refused such a request (their first client request does that work).
        """
        return [signature_name for signature_name, signature_def in self.signature_defs.items()
                if not self._answers(signature_name, _placeholder_request(signature_def))]

    def _answers(self, signature_name: str, inputs: dict[str, np.ndarray] | None) -> bool:
        if inputs is None:  # an input of unknown rank: no placeholder fits it
            return False
        try:
            self.call(signature_name, inputs)
        except (ServingError, tf.errors.OpError):
            return False
        return True

    def _make_runner(self, signature_name: str) -> Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]:
        signature_def = self.signature_def(signature_name)
        input_names, output_names = sorted(signature_def.inputs), sorted(signature_def.outputs)
        input_dtypes = [_numpy_dtype(signature_def.inputs[name]) for name in input_names]
        with self._runners_lock:
            if signature_name not in self._runners:
                run = self._session.make_callable([signature_def.outputs[name].name for name in output_names],
                                                  feed_list=[signature_def.inputs[name].name for name in input_names])

                def runner(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
                    values = run(*(np.asarray(inputs[name], dtype=dtype) for name, dtype in zip(input_names,
                                                                                               input_dtypes)))
                    return dict(zip(output_names, values))
                self._runners[signature_name] = runner
            return self._runners[signature_name]


def session_config_for(graph_rewrites: bool = True, intra_op_threads: int = 0, inter_op_threads: int = 0,
                       thread_spinning: bool = False) -> config_pb2.ConfigProto:
    """A session configuration for every loaded version.

    Args:
      graph_rewrites: let TensorFlow's graph optimizer (Grappler) rewrite each signature's graph on its
        first run, as TF Serving does; without it that run costs little time or memory.
      intra_op_threads: threads one op may split its work over; 0: one per CPU.
      inter_op_threads: threads that run a graph's ready ops; 0: one per CPU, -1: the caller's thread.
        TensorFlow makes both pools once per process, from the first session's settings, so every
        version shares them: several single-threaded server processes, each with its own port, keep
        their models' work off each other's cores (docs/benchmarks.md, "two processes").
      thread_spinning: let those pools' threads spin a while for more work before they sleep. A server
        shares its cores with its gRPC threads, which a spinning thread keeps waiting: off by default.
    """
    config = config_pb2.ConfigProto(intra_op_parallelism_threads=intra_op_threads,
                                    inter_op_parallelism_threads=inter_op_threads)
    config.graph_options.rewrite_options.disable_meta_optimizer = not graph_rewrites
    config.experimental.disable_thread_spinning = not thread_spinning
    return config


def _placeholder_request(signature_def: meta_graph_pb2.SignatureDef) -> dict[str, np.ndarray] | None:
    """One row of "" and 0 per input (every unknown dimension 1); None if an input's rank is unknown."""
    inputs = {}
    for name, tensor_info in signature_def.inputs.items():
        if tensor_info.tensor_shape.unknown_rank:
            return None
        shape = [1 if dim.size < 0 else dim.size for dim in tensor_info.tensor_shape.dim]
        dtype = _numpy_dtype(tensor_info)
        inputs[name] = np.full(shape, b"" if dtype is object else 0, dtype=dtype)
    return inputs


def _numpy_dtype(tensor_info: meta_graph_pb2.TensorInfo):
    dtype = tf.as_dtype(tensor_info.dtype)
    return object if dtype == tf.string else dtype.as_numpy_dtype


def _read_signature_defs(path: pathlib.Path) -> dict[str, meta_graph_pb2.SignatureDef]:
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((path / "saved_model.pb").read_bytes())
    serving_graphs = [graph for graph in saved_model.meta_graphs if "serve" in graph.meta_info_def.tags]
    if not serving_graphs:
        raise ValueError(f"{path}: the SavedModel has no MetaGraph tagged 'serve'")
    signatures = serving_graphs[0].signature_def
    return {name: signatures[name] for name in signatures if not name.startswith("__")}


def _check_tensor(name: str, value: np.ndarray, tensor_info: meta_graph_pb2.TensorInfo) -> None:
    expected_dtype = tf.as_dtype(tensor_info.dtype)
    actual_dtype = tf.string if value.dtype == object or value.dtype.kind in "SU" else tf.as_dtype(value.dtype)
    if actual_dtype != expected_dtype:
        raise invalid_argument(f"input '{name}' expects dtype {expected_dtype.name} but {actual_dtype.name} "
                               "was provided")
    shape = tensor_info.tensor_shape
    if shape.unknown_rank:
        return
    expected_dims = [dim.size for dim in shape.dim]
    if len(expected_dims) != value.ndim or any(size not in (-1, actual)
                                               for size, actual in zip(expected_dims, value.shape)):
        raise invalid_argument(f"input '{name}' expects shape {_shape_text(expected_dims)} but got "
                               f"{list(value.shape)}")


def _describe(tensor_infos: Mapping[str, meta_graph_pb2.TensorInfo]) -> str:
    return ", ".join(f"{name} ({tf.as_dtype(info.dtype).name} {_shape_text([d.size for d in info.tensor_shape.dim])})"
                     for name, info in sorted(tensor_infos.items()))


def _shape_text(dims: Sequence[int]) -> str:
    return "[" + ", ".join("batch" if index == 0 and size == -1 else ("?" if size == -1 else str(size))
                           for index, size in enumerate(dims)) + "]"
