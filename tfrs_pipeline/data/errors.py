"""The one error that bad user input raises, wherever it enters the pipeline.

A user who points the pipeline at a malformed file needs to know which file, which line and which
field to fix, not which TensorFlow op choked on it three layers down. Every reader in this project
(MovieLens, session clickstreams, configuration) validates where the input enters and raises
`DataError`, so callers catch one class and show its message as is.
"""
from __future__ import annotations

import os


class DataError(ValueError):
    """Bad input data, located as precisely as the reader can.

    Attributes:
      path: the file (or folder, or zip member as ``archive.zip/member``) at fault, or None when the
        input was never located (for example no data folder was given at all).
      line: 1-based line number in `path`, or None when the problem is not on one line.
      field: the name of the field at fault, or None.
      problem: what is wrong, in words, quoting the offending value.

    ``str(error)`` reads like ``/data/ratings.dat:17: field 'timestamp': 'abc' is not an integer``.
    """

    def __init__(
        self,
        path: str | os.PathLike | None,
        line: int | None,
        field: str | None,
        problem: str,
    ) -> None:
        self.path = os.fspath(path) if path is not None else None
        self.line = line
        self.field = field
        self.problem = problem
        super().__init__(self._message())

    def _message(self) -> str:
        location = self.path or ""
        if self.line is not None:
            location += f":{self.line}"
        parts = [location] if location else []
        if self.field is not None:
            parts.append(f"field {self.field!r}")
        parts.append(self.problem)
        return ": ".join(parts)

    def __reduce__(self):
        # ValueError pickles by its message alone; keep the structured attributes (multiprocessing, Beam).
        return (type(self), (self.path, self.line, self.field, self.problem))
