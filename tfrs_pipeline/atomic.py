"""Files written whole or not at all: a temporary file beside the target, then one rename.

A reader (the server polling its config, a client reading ``items.tsv``, the report reading
``metrics.json``) must never see half a file, and a crash must never leave one. A rename within one
folder is atomic on POSIX file systems, so every file the project publishes goes through here.
Versioned model folders have their own, folder-level publishing (``export/versioning.py``).
"""
from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any


def write_bytes_atomically(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` through a synced temporary file in the same folder and a rename."""
    path = pathlib.Path(path)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as file:
            os.fchmod(file.fileno(), 0o644)  # mkstemp makes it private; a server or client may run as another user
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        pathlib.Path(temporary).unlink(missing_ok=True)
        raise


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """``write_bytes_atomically`` of ``text`` in UTF-8."""
    write_bytes_atomically(path, text.encode("utf-8"))


def write_json_atomically(path: str | os.PathLike, value: Any) -> None:
    """``value`` as indented JSON, written atomically."""
    write_text_atomically(path, json.dumps(value, indent=2) + "\n")
