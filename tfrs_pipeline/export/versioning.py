"""Atomic versioned folders: a model server only ever sees a complete ``<base_path>/<version>/``.

TF Serving (and our server) polls ``base_path`` and loads every folder whose name is all digits.
A SavedModel is many files written one after another, so writing it straight into ``<N>/`` would
let a poll catch it half-written. Instead each version is written to a hidden temporary folder in
the same directory (a name that is not all digits, so servers ignore it) and renamed to ``<N>``
in one step: ``rename`` within one file system is atomic, so the version appears whole or not at
all. A failed or interrupted write removes its temporary folder and leaves no visible trace.

One run exports several models that only make sense together (retrieval and ranking of the same
version). ``publish_together`` writes and syncs them all first, then renames them one after another
in microseconds under a journal, so a crash can no longer leave retrieval at N and ranking at N-1
for good: the next publication finishes (or drops) what the journal names, and removes the
temporary folders of writers that died.
"""
import json
import os
import pathlib
import re
import shutil
import tempfile
from typing import Callable, Mapping

TEMPORARY_PREFIX = ".tmp-"
JOURNAL_PREFIX = ".publishing-"
MAX_VERSION = 2 ** 63 - 1  # ModelSpec.version is an int64
_VERSION_NAME = re.compile(r"(0|[1-9][0-9]*)")  # ASCII digits, no leading zero: one name per number
_TEMPORARY_PID = re.compile(re.escape(TEMPORARY_PREFIX) + r"[^-]+-(\d+)-")


def version_of(folder_name: str) -> int | None:
    """The version a folder name stands for, or None if it is not a plain integer that fits an int64.

    ``"²"`` and ``"٣"`` are digits to ``str.isdigit`` but not versions; ``"06"`` would be a second
    name for 6; a number above int64 cannot travel in a ``ModelSpec``.
    """
    if not _VERSION_NAME.fullmatch(folder_name):
        return None
    version = int(folder_name)
    return version if version <= MAX_VERSION else None


def scan_versions(base_path: str | os.PathLike) -> tuple[list[int], list[str]]:
    """(the versions a server would load from ``base_path``, sorted; the folder names that look like
    versions but are not, which a server ignores with a warning)."""
    base = pathlib.Path(base_path)
    if not base.is_dir():
        return [], []
    versions, ignored = [], []
    for entry in base.iterdir():
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        version = version_of(entry.name)
        if version is not None:
            versions.append(version)
        elif entry.name[:1].isdigit():
            ignored.append(entry.name)
    return sorted(versions), sorted(ignored)


def existing_versions(base_path: str | os.PathLike) -> list[int]:
    """The versions a server would load from ``base_path``: its plain-integer folder names, sorted."""
    return scan_versions(base_path)[0]


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
    temporary = _temporary_folder(base, version if version is not None else "next")
    try:
        write_fn(str(temporary))
        return _publish(temporary, base, version)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def publish_together(writers: Mapping[str | os.PathLike, Callable[[str], None]], version: int) -> list[pathlib.Path]:
    """Writes one version of several models, then makes them visible together as ``<base_path>/<version>``.

    Every model is written and synced to disk before the first becomes visible; the renames then
    follow each other under a journal in the base paths' common parent. A crash during them leaves
    the journal, and the next call (or ``recover``) finishes the renames, so the models end at the same
    version.

    Args:
      writers: base path -> the function that writes that model's files into the folder it is given.
      version: the version number of all of them; none may exist yet.

    Returns:
      The published version folders, in the order of ``writers``.

    Raises:
      FileExistsError: a base path already has ``version``.
      Whatever a writer raises, after removing every temporary folder of the call.
    """
    _check_version_number(version)
    bases = [pathlib.Path(base_path) for base_path in writers]
    root = pathlib.Path(os.path.commonpath([base.absolute().parent for base in bases]))
    recover(root)
    for base in bases:
        base.mkdir(parents=True, exist_ok=True)
        if (base / str(version)).exists():
            raise FileExistsError(f"version {version} already exists in {base}; versions are never overwritten")
    temporaries = []
    try:
        for base, write_fn in zip(bases, writers.values()):
            temporaries.append(_temporary_folder(base, version))
            write_fn(str(temporaries[-1]))
            _sync_tree(temporaries[-1])
            os.chmod(temporaries[-1], 0o755)
    except BaseException:
        for temporary in temporaries:
            shutil.rmtree(temporary, ignore_errors=True)
        raise
    renames = [(str(temporary.absolute()), str((base / str(version)).absolute()))
               for temporary, base in zip(temporaries, bases)]
    journal = root / f"{JOURNAL_PREFIX}{version}-{os.getpid()}.json"
    _write_synced(journal, json.dumps(renames))
    _finish(journal, renames)
    return [base / str(version) for base in bases]


def recover(folder: str | os.PathLike) -> None:
    """Finishes the publications a crash interrupted in ``folder`` and removes dead writers' temporaries.

    ``folder`` is the parent of the base paths (an export folder). A journal's renames are completed
    when every model it names was fully written (its temporary folder or its version folder exists);
    then a temporary folder in a base path whose writing process no longer runs is deleted. Folders
    of writers still running are left alone.
    """
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        return
    for journal in sorted(folder.glob(f"{JOURNAL_PREFIX}*.json")):
        try:
            renames = json.loads(journal.read_text())
        except (OSError, ValueError):
            renames = []  # a journal cut short was written before any rename: nothing to finish
        if all(os.path.exists(temporary) or os.path.exists(target) for temporary, target in renames):
            _finish(journal, renames)
        else:
            journal.unlink(missing_ok=True)
    for entry in folder.glob(f"*/{TEMPORARY_PREFIX}*"):
        match = _TEMPORARY_PID.match(entry.name)
        if match and entry.is_dir() and not _process_runs(int(match[1])):
            shutil.rmtree(entry, ignore_errors=True)


def _finish(journal: pathlib.Path, renames: list[list[str]]) -> None:
    for temporary, target in renames:
        if os.path.exists(temporary) and not os.path.exists(target):
            os.rename(temporary, target)
        _sync_folder(pathlib.Path(target).parent)
    journal.unlink(missing_ok=True)
    _sync_folder(journal.parent)


def _temporary_folder(base: pathlib.Path, label) -> pathlib.Path:
    """A hidden folder beside the versions, named after its writer's process so a dead writer's is found."""
    return pathlib.Path(tempfile.mkdtemp(prefix=f"{TEMPORARY_PREFIX}{label}-{os.getpid()}-", dir=base))


def _process_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_synced(path: pathlib.Path, text: str) -> None:
    with open(path, "w") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    _sync_folder(path.parent)


def _sync_tree(folder: pathlib.Path) -> None:
    """Flushes every file and folder under ``folder`` to disk, so a rename never publishes unwritten data."""
    for directory, _, files in os.walk(folder):
        for name in files:
            descriptor = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        _sync_folder(pathlib.Path(directory))


def _sync_folder(folder: pathlib.Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _check_version_number(version: int) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or version < 0 or version > MAX_VERSION:
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
