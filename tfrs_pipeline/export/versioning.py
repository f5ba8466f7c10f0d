"""Atomic versioned folders: a model server only ever sees a complete ``<base_path>/<version>/``.

TF Serving (and our server) polls ``base_path`` and loads every folder whose name is all digits.
A SavedModel is many files written one after another, so writing it straight into ``<N>/`` would
let a poll catch it half-written. Instead each version is written to a hidden temporary folder in
the same directory (a name that is not all digits, so servers ignore it) and renamed to ``<N>``
in one step: ``rename`` within one file system is atomic, so the version appears whole or not at
all. A failed or interrupted write removes its temporary folder and leaves no visible trace.
"""
import os
import pathlib
import shutil
import tempfile
from typing import Callable

TEMPORARY_PREFIX = ".tmp-"


def existing_versions(base_path: str | os.PathLike) -> list[int]:
    """The versions a server would load from ``base_path``: its all-digit folder names, sorted."""
    base = pathlib.Path(base_path)
    if not base.is_dir():
        return []
    return sorted(int(entry.name) for entry in base.iterdir() if entry.name.isdigit() and entry.is_dir())


def next_version(base_path: str | os.PathLike) -> int:
    """One more than the highest existing version (1 for an empty or missing ``base_path``)."""
    versions = existing_versions(base_path)
    return versions[-1] + 1 if versions else 1


def write_version(
    base_path: str | os.PathLike,
    write_fn: Callable[[str], None],
    version: int | None = None,
) -> pathlib.Path:
    """Writes one version with ``write_fn(folder)`` and publishes it atomically as ``base_path/<version>``.

    Args:
      base_path: the model's base path, as named in the serving config; created if missing.
      write_fn: writes the version's files into the folder it is given (e.g. ``tf.saved_model.save``).
      version: the version number; by default the next one after the existing versions. When
        several writers race for the default, each retries with the following number, so they
        never collide.

    Returns:
      The published version folder.

    Raises:
      FileExistsError: ``version`` was given and already exists (versions are never overwritten).
      Whatever ``write_fn`` raises (KeyboardInterrupt included), after removing its partial output.
    """
    base = pathlib.Path(base_path)
    base.mkdir(parents=True, exist_ok=True)
    if version is not None:
        _check_version_number(version)
        if (base / str(version)).exists():
            raise FileExistsError(f"version {version} already exists in {base}; versions are never overwritten")
    label = version if version is not None else "next"
    temporary = pathlib.Path(tempfile.mkdtemp(prefix=f"{TEMPORARY_PREFIX}{label}-", dir=base))
    try:
        write_fn(str(temporary))
        return _publish(temporary, base, version)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def _check_version_number(version: int) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"a model version is a non-negative integer, got {version!r}")


def _publish(temporary: pathlib.Path, base: pathlib.Path, version: int | None) -> pathlib.Path:
    """Renames ``temporary`` to its version folder; ``os.rename`` of a directory fails if the target exists."""
    os.chmod(temporary, 0o755)  # mkdtemp makes it private; a server may run as another user
    while True:
        target = base / str(version if version is not None else next_version(base))
        if version is not None and target.exists():
            raise FileExistsError(f"version {version} already exists in {base}; versions are never overwritten")
        try:
            os.rename(temporary, target)
            return target
        except OSError:
            if version is not None or not target.exists():
                raise
            # Another writer published this number between our look and our rename: take the next.
