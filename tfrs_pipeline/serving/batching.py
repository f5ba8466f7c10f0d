"""Server-side batching: concurrent requests to the same signature run as one batch.

Running one batch of 16 users costs little more than running one user, so under load the server
merges requests that arrive within ``batch_timeout_micros`` of each other (up to
``max_batch_size`` rows), runs the signature once, and hands each request its own rows back. Only
requests whose inputs agree on every dimension but the first are merged; the others run alone.
Settings come from a TF Serving ``BatchingParameters`` file, with TF Serving's defaults.
"""
import dataclasses
import queue
import threading
import time
from typing import Callable, Mapping

import grpc
import numpy as np

from tfrs_pipeline.serving.errors import ServingError
from tfrs_pipeline.serving.server_protos import BatchingParameters

Inputs = Mapping[str, np.ndarray]
Outputs = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = 2

    @classmethod
    def from_proto(cls, parameters: BatchingParameters) -> "BatchingOptions":
        defaults = cls()
        return cls(**{field.name: getattr(parameters, field.name).value if parameters.HasField(field.name)
                      else getattr(defaults, field.name) for field in dataclasses.fields(cls)})


@dataclasses.dataclass
class _Task:
    inputs: Inputs
    rows: int
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    outputs: Outputs | None = None
    error: BaseException | None = None


class Batcher:
    """Merges concurrent calls of ``run_batch`` (one signature of one servable) into batches."""

    def __init__(self, run_batch: Callable[[Inputs], Outputs], options: BatchingOptions):
        self._run_batch = run_batch
        self._options = options
        self._queue: queue.Queue[_Task | None] = queue.Queue(
            maxsize=options.max_enqueued_batches * options.max_batch_size)
        self._threads = [threading.Thread(target=self._work, daemon=True, name="batch-thread")
                         for _ in range(options.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    def run(self, inputs: Inputs) -> Outputs:
        """Runs ``inputs`` as part of a batch; blocks until its own outputs are ready."""
        rows = _batch_rows(inputs)
        if rows is None or rows > self._options.max_batch_size:
            return self._run_batch(inputs)
        task = _Task(inputs, rows)
        try:
            self._queue.put_nowait(task)
        except queue.Full:
            raise ServingError(grpc.StatusCode.UNAVAILABLE, "the batching queue is full; retry later") from None
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.outputs

    def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(None)

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            for group in _groups_by_shape(self._collect(first)):
                self._run_group(group)

    def _collect(self, first: _Task) -> list[_Task]:
        tasks, rows = [first], first.rows
        deadline = time.monotonic() + self._options.batch_timeout_micros / 1e6
        while rows < self._options.max_batch_size:
            try:
                task = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if task is None:
                self._queue.put(None)  # leave the stop signal for this thread's next turn
                break
            if rows + task.rows > self._options.max_batch_size:
                self._run_group([task])
                continue
            tasks.append(task)
            rows += task.rows
        return tasks

    def _run_group(self, tasks: list[_Task]) -> None:
        try:
            merged = {name: np.concatenate([task.inputs[name] for task in tasks]) for name in tasks[0].inputs}
            outputs = self._run_batch(merged)
            total_rows = sum(task.rows for task in tasks)
            unbatched = sorted(name for name, value in outputs.items() if value.shape[:1] != (total_rows,))
            if unbatched:
                raise ServingError(grpc.StatusCode.INTERNAL, f"outputs {unbatched} are not batched along their "
                                   "first dimension; this signature cannot be served with --enable_batching")
            start = 0
            for task in tasks:
                task.outputs = {name: value[start:start + task.rows] for name, value in outputs.items()}
                start += task.rows
        except BaseException as error:  # every waiting request must wake up, with the error
            for task in tasks:
                task.error = error
        finally:
            for task in tasks:
                task.done.set()


def _batch_rows(inputs: Inputs) -> int | None:
    """The common first dimension of all inputs, or None when the request cannot be merged."""
    first_dims = {value.shape[0] if value.ndim else None for value in inputs.values()}
    if len(first_dims) != 1 or None in first_dims:
        return None
    return first_dims.pop()


def _groups_by_shape(tasks: list[_Task]) -> list[list[_Task]]:
    groups: dict[tuple, list[_Task]] = {}
    for task in tasks:
        key = tuple(sorted((name, value.shape[1:], value.dtype.str) for name, value in task.inputs.items()))
        groups.setdefault(key, []).append(task)
    return list(groups.values())
