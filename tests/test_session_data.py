"""Reading session clickstreams: both forms, and the errors a user's bad files raise."""
import pytest

from tfrs_pipeline.data.errors import DataError
from tfrs_pipeline.data.sessions import load_sessions
from tfrs_pipeline.train import main

EVENTS_HEADER = "sessionId;userId;itemId;timeframe;eventdate\n"


def write(folder, name, text):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder


def test_benchmark_form_reads_sessions_and_drops_test_items_never_trained_on(shared_data_dir, tmp_path):
    lines = (shared_data_dir / "tmall" / "train_sessions.txt").read_text().splitlines()[:300]
    test_lines = (shared_data_dir / "tmall" / "test.tsv").read_text().splitlines()[:3000]
    folder = write(tmp_path, "train_sessions.txt", "\n".join(lines) + "\n")
    write(folder, "test.tsv", "\n".join(test_lines) + "\n")
    data = load_sessions(folder)
    assert [list(session) for session in data.train_sessions] == [line.split() for line in lines]
    seen = {item for line in lines for item in line.split()}
    assert 0 < len(data.test_targets) < len(test_lines)
    assert set(data.test_targets) <= seen
    assert all(set(prefix) <= seen and len(prefix) for prefix in data.test_prefixes)


def test_raw_events_are_ordered_by_time_and_the_last_days_are_the_test_set(tmp_path):
    day = 86_400
    rows = [  # session, item, time: session "a" is written out of order, and "b" (earlier) after "a"
        ("a", "i2", 2 * day + 5), ("a", "i1", 2 * day), ("a", "i3", 2 * day + 9),
        ("b", "i1", 1 * day), ("b", "i3", 1 * day + 1),
        ("c", "i2", 20 * day), ("c", "i3", 20 * day + 1), ("c", "i9", 20 * day + 2), ("c", "i1", 20 * day + 3),
    ]
    text = "session_id,item_id,timestamp\n" + "".join(f"{s},{i},{t}\n" for s, i, t in rows)
    data = load_sessions(write(tmp_path, "clicks.csv", text), test_days=7)
    assert [list(session) for session in data.train_sessions] == [["i1", "i3"], ["i1", "i2", "i3"]]  # oldest first
    # Session "c" gives 3 cases; "i9" was never trained on, so it leaves the prefixes and is no target.
    assert [list(prefix) for prefix in data.test_prefixes] == [["i2"], ["i2", "i3"]]
    assert list(data.test_targets) == ["i3", "i1"]


def test_raw_events_accept_diginetica_column_names_and_dates(tmp_path):
    text = EVENTS_HEADER + "1;NA;10;0;2016-01-01\n1;NA;11;5;2016-01-02\n2;NA;11;0;2016-03-01\n2;NA;10;3;2016-03-01\n"
    data = load_sessions(write(tmp_path, "events.csv", text), session_format="events")
    assert [list(session) for session in data.train_sessions] == [["10", "11"]]
    assert list(data.test_targets) == ["10"]


@pytest.mark.parametrize("train_text, test_text, line, field", [
    ("1 2\n3\n", None, 2, "session"),  # a session needs a next item
    ("1 2\n\n3 4\n", None, 2, "session"),  # empty session
    ("1 2\n3 4\n", "1\t2\n1 2 3\n", 2, None),  # no tab
    ("1 2\n3 4\n", "1\t2\n\t3\n", 2, "prefix"),
    ("1 2\n3 4\n", "1\t2 3\n", 1, "next"),
])
def test_malformed_benchmark_lines_name_file_line_and_field(tmp_path, train_text, test_text, line, field):
    write(tmp_path, "train_sessions.txt", train_text)
    if test_text is not None:
        write(tmp_path, "test.tsv", test_text)
    with pytest.raises(DataError) as error:
        load_sessions(tmp_path)
    assert error.value.path.endswith("test.tsv" if test_text else "train_sessions.txt")
    assert (error.value.line, error.value.field) == (line, field)


def test_bad_event_fields_and_unknown_forms_are_data_errors(tmp_path):
    bad_time = write(tmp_path / "bad_time", "e.csv", "session_id,item_id,timestamp\n1,5,100\n1,6,soon\n")
    with pytest.raises(DataError, match="'soon' is not a number") as error:
        load_sessions(bad_time)
    assert (error.value.line, error.value.field) == (3, "timestamp")
    with pytest.raises(DataError, match="no column named") as error:
        load_sessions(write(tmp_path / "no_item", "e.csv", "session_id,product,timestamp\n1,5,100\n"))
    assert error.value.line == 1
    with pytest.raises(DataError, match="unknown session data"):
        load_sessions(write(tmp_path / "nothing", "notes.txt", "hello\n"))
    with pytest.raises(DataError, match="unknown session format"):
        load_sessions(bad_time, session_format="parquet")


def test_the_train_command_reports_bad_session_data_without_a_traceback(tmp_path, capsys):
    folder = write(tmp_path, "train_sessions.txt", "1 2\n7\n")
    assert main(["--task=session", f"--data_dir={folder}", f"--export_dir={tmp_path / 'export'}"]) == 2
    assert "train_sessions.txt:2: field 'session'" in capsys.readouterr().err
