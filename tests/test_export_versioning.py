"""Versioned export folders appear whole or not at all, and version numbers only go up."""
import pathlib
import subprocess
import sys
import threading

import pytest

from tfrs_pipeline.export import versioning


def write_files(names):
    def write(folder):
        for name in names:
            (pathlib.Path(folder) / name).write_text(name)
    return write


def visible_entries(base: pathlib.Path) -> list[str]:
    return sorted(entry.name for entry in base.iterdir())


def test_versions_increase_from_one(tmp_path):
    base = tmp_path / "retrieval"
    assert versioning.next_version(base) == 1
    first = versioning.write_version(base, write_files(["saved_model.pb"]))
    second = versioning.write_version(base, write_files(["saved_model.pb"]))
    assert (first.name, second.name) == ("1", "2")
    assert (second / "saved_model.pb").read_text() == "saved_model.pb"
    assert versioning.next_version(base) == 3


def test_next_version_ignores_temporary_and_non_numeric_folders(tmp_path):
    for name in ["3", "10", ".tmp-11-abc", "latest", "7.bak"]:
        (tmp_path / name).mkdir()
    (tmp_path / "12").write_text("a file, not a version")
    assert versioning.existing_versions(tmp_path) == [3, 10]
    assert versioning.next_version(tmp_path) == 11


@pytest.mark.parametrize("interruption", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_an_interrupted_write_leaves_nothing_visible(tmp_path, interruption):
    versioning.write_version(tmp_path, write_files(["saved_model.pb"]))

    def write_half_then_fail(folder):
        (pathlib.Path(folder) / "saved_model.pb").write_text("half")
        raise interruption

    with pytest.raises(type(interruption)):
        versioning.write_version(tmp_path, write_half_then_fail)
    assert visible_entries(tmp_path) == ["1"]
    assert versioning.next_version(tmp_path) == 2


def test_the_write_happens_in_a_folder_a_server_ignores(tmp_path):
    seen_during_write = []

    def write(folder):
        seen_during_write.append((pathlib.Path(folder).name, versioning.existing_versions(tmp_path)))

    versioning.write_version(tmp_path, write, version=5)
    folder_name, versions_while_writing = seen_during_write[0]
    assert not folder_name.isdigit() and folder_name.startswith(versioning.TEMPORARY_PREFIX)
    assert versions_while_writing == []
    assert versioning.existing_versions(tmp_path) == [5]


def test_an_existing_version_is_never_overwritten(tmp_path):
    versioning.write_version(tmp_path, write_files(["original"]), version=4)
    with pytest.raises(FileExistsError, match="version 4 already exists"):
        versioning.write_version(tmp_path, write_files(["replacement"]), version=4)
    assert visible_entries(tmp_path / "4") == ["original"]
    assert visible_entries(tmp_path) == ["4"]


def test_concurrent_writers_get_distinct_versions(tmp_path):
    start = threading.Barrier(6)
    published = []

    def writer(index):
        def write(folder):
            start.wait()  # every writer has picked its temporary folder before any publishes
            (pathlib.Path(folder) / "writer").write_text(str(index))
        published.append(versioning.write_version(tmp_path, write))

    threads = [threading.Thread(target=writer, args=(index,)) for index in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(int(path.name) for path in published) == [1, 2, 3, 4, 5, 6]
    writers = sorted((path / "writer").read_text() for path in published)
    assert writers == [str(index) for index in range(6)]
    assert visible_entries(tmp_path) == [str(version) for version in range(1, 7)]


def test_a_version_number_must_be_a_non_negative_integer(tmp_path):
    with pytest.raises(ValueError, match="non-negative integer"):
        versioning.write_version(tmp_path, write_files([]), version=-1)


CRASH_BETWEEN_RENAMES = """
import os, sys
from tfrs_pipeline.export import versioning
real_rename, renames = os.rename, []
def rename_then_crash(source, target):
    real_rename(source, target)
    renames.append(target)
    if len(renames) == 1:
        os._exit(9)  # the process dies after the first model became visible
os.rename = rename_then_crash
root = sys.argv[1]
write = lambda folder: open(os.path.join(folder, "saved_model.pb"), "w").write("model")
versioning.publish_together({os.path.join(root, "retrieval"): write, os.path.join(root, "ranking"): write}, 1)
"""


def test_a_run_s_models_are_published_as_a_unit_even_across_a_crash(tmp_path):
    """Issue 19, item 6: a crash between the models' renames left retrieval at N and ranking at N-1 for good."""
    crashed = subprocess.run([sys.executable, "-c", CRASH_BETWEEN_RENAMES, str(tmp_path)], timeout=120)
    assert crashed.returncode == 9
    assert versioning.existing_versions(tmp_path / "retrieval") == [1]
    assert versioning.existing_versions(tmp_path / "ranking") == []  # what a server would see after the crash
    published = versioning.publish_together({tmp_path / "retrieval": write_files(["saved_model.pb"]),
                                             tmp_path / "ranking": write_files(["saved_model.pb"])}, 2)
    assert [folder.name for folder in published] == ["2", "2"]
    for name in ("retrieval", "ranking"):  # the next publication finished the crashed one, and left no debris
        assert visible_entries(tmp_path / name) == ["1", "2"]
        assert (tmp_path / name / "1" / "saved_model.pb").read_text() == "model"
    assert not list(tmp_path.glob(f"{versioning.JOURNAL_PREFIX}*"))


def test_a_failed_writer_publishes_none_of_the_run_s_models(tmp_path):
    def fail(folder):
        (pathlib.Path(folder) / "saved_model.pb").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        versioning.publish_together({tmp_path / "retrieval": write_files(["saved_model.pb"]),
                                     tmp_path / "ranking": fail}, 1)
    assert visible_entries(tmp_path / "retrieval") == [] and visible_entries(tmp_path / "ranking") == []


def test_odd_version_folder_names_are_not_versions(tmp_path):
    for name in ["1", "06", "²", "٣", str(2 ** 63), str(2 ** 63 - 1), "-3"]:
        (tmp_path / name).mkdir()
    assert versioning.scan_versions(tmp_path) == ([1, 2 ** 63 - 1], sorted(["06", "²", "٣", str(2 ** 63)]))
