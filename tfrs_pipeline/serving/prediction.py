"""The Predict path shared by the gRPC and REST front ends: find the version, check, (batch,) run, count.

Both front ends translate their wire format to numpy inputs and back; everything in between, so
every rule about versions, labels, checks and batching, lives here once.
"""
import threading
import time
from typing import Mapping, Sequence

import grpc
import numpy as np

from tfrs_pipeline.contracts import SERVING_SIGNATURE
from tfrs_pipeline.serving import tensors
from tfrs_pipeline.serving.batching import Batcher, BatchingOptions
from tfrs_pipeline.serving.errors import ServingError
from tfrs_pipeline.serving.metrics import ServerMetrics
from tfrs_pipeline.serving.model_manager import ModelManager
from tfrs_pipeline.serving.servable import Servable


class PredictionBackend:
    """Runs Predict requests on the versions a ``ModelManager`` serves, batching them if asked to.

    ``max_batch_size`` (0: no limit) caps the batch one request may carry; the gRPC front end also
    checks it before it decodes a tensor.
    """

    def __init__(self, manager: ModelManager, metrics: ServerMetrics, batching: BatchingOptions | None = None,
                 max_batch_size: int = 0):
        self.manager = manager
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self._batching = batching
        self._batchers: dict[tuple[int, str], Batcher] = {}
        self._batchers_lock = threading.Lock()

    def predict(self, model_name: str, version: int | None, label: str | None, signature_name: str,
                inputs: Mapping[str, np.ndarray], output_filter: Sequence[str], entrypoint: str
                ) -> tuple[Servable, dict[str, np.ndarray]]:
        """Answers one Predict request; raises ``ServingError`` with TF Serving's status code."""
        started = time.perf_counter()
        servable, status = None, grpc.StatusCode.UNKNOWN.name
        try:
            servable = self.manager.servable(model_name, version, label)
            for name, value in inputs.items():
                tensors.check_batch_size(name, value.shape[0] if value.ndim else 1, self.max_batch_size)
            output_names = servable.check_request(signature_name, inputs, output_filter)
            outputs = self._run(servable, signature_name or SERVING_SIGNATURE, inputs)
            status = grpc.StatusCode.OK.name
            return servable, {name: outputs[name] for name in output_names}
        except ServingError as error:
            status = error.code.name
            raise
        except Exception as error:  # an unexpected failure answers INTERNAL and leaves the server up
            status = grpc.StatusCode.INTERNAL.name
            raise ServingError(grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}") from error
        finally:
            # A name the server does not serve is no label: clients could grow the metrics without bound.
            self.metrics.record(model_name if self.manager.serves(model_name) else "",
                                servable.version if servable else None, "predict", entrypoint, status,
                                time.perf_counter() - started)

    def _run(self, servable: Servable, signature_name: str, inputs: Mapping[str, np.ndarray]):
        if self._batching is None:
            return servable.call(signature_name, inputs)
        key = (id(servable), signature_name)
        with self._batchers_lock:
            if key not in self._batchers:
                self._batchers[key] = Batcher(lambda batch: servable.call(signature_name, batch), self._batching)
            batcher = self._batchers[key]
        return batcher.run(inputs)

    def forget(self, servable: Servable) -> None:
        """Stops the batching threads of a servable that was taken out of service."""
        self._stop_batchers(lambda key: key[0] == id(servable))

    def close(self) -> None:
        """Stops every batching thread (the server is shutting down)."""
        self._stop_batchers(lambda key: True)

    def _stop_batchers(self, selected) -> None:
        with self._batchers_lock:
            batchers = [self._batchers.pop(key) for key in list(self._batchers) if selected(key)]
        for batcher in batchers:
            batcher.stop()
