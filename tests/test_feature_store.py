"""The online feature store beside an export: what it holds, events that change answers, bad input.

Runs on the session's small MovieLens export (``conftest.small_export``) and its real server; each
test that writes to the store works on a copy of the export's feature repository.
"""
import shutil
import sqlite3
import threading

import numpy as np
import pandas as pd
import pytest
from conftest import SMALL_RUN
from feast import FeatureStore
from feast.repo_config import RepoConfig

from tfrs_pipeline import recommend
from tfrs_pipeline.catalog import read_items_file
from tfrs_pipeline.contracts import DESCRIPTION_FILE, FEATURE_REPO_DIR, HISTORY_INPUT, ITEMS_FILE
from tfrs_pipeline.data.dataset import load_dataset
from tfrs_pipeline.data.split import hold_out, user_sequences
from tfrs_pipeline.features import __main__ as features_command
from tfrs_pipeline.features import store as feature_store
from tfrs_pipeline.features.events import push_events, served_item_ids
from tfrs_pipeline.features.store import FeatureStoreError, OnlineFeatureStore
from tfrs_pipeline.serving.client import (
    QUERY_STORE,
    QUERY_STORE_FEATURES_ONLY,
    QUERY_UNKNOWN_USER,
    QUERY_USER_ID,
    GrpcTransport,
)
from test_serving_client import fresh_client, in_process_fresh, served_small_export  # noqa: F401


@pytest.fixture
def repo(small_export, tmp_path):
    """A copy of the export's feature repository, with the files beside it that it reads."""
    export_dir, _ = small_export
    copy = tmp_path / "export"
    copy.mkdir()
    for name in (DESCRIPTION_FILE, ITEMS_FILE):
        shutil.copy(export_dir / name, copy / name)
    shutil.copytree(export_dir / FEATURE_REPO_DIR, copy / FEATURE_REPO_DIR)
    return copy / FEATURE_REPO_DIR


@pytest.fixture(scope="module")
def evaluated(shared_data_dir):
    """The small run's data and split, read as the run reads them: what the model was evaluated with."""
    data = load_dataset(shared_data_dir / "ml-1m", max_users=SMALL_RUN["max_users"])
    return data, hold_out(user_sequences(data.interactions), data.schema.split)


def test_the_store_holds_each_users_evaluated_features_and_history_at_the_time_of_the_test(small_export, evaluated):
    """Train/serve consistency: online, each user's features and recent history are those the model's
    evaluation used for them; a point-in-time read at their test item's time gives the same, and a read
    before their last item gives nothing from later."""
    export_dir, _ = small_export
    data, split = evaluated
    tested = split.tested_history()
    store = OnlineFeatureStore(export_dir / FEATURE_REPO_DIR)
    users = data.users.set_index("user_id")
    specs = data.schema.features.user_features
    for user, items in zip(store.users(tested.user_ids), tested.item_ids):
        assert user.known and user.history_item_ids == list(items[-SMALL_RUN["max_length"]:])
        assert user.features == {spec.name: users.loc[user.user_id, spec.name] for spec in specs}

    test_times = [int(times[-1]) + 1 for times in tested.timestamps]  # the held-out item comes after the history
    before_last = [int(times[-1]) - 1 for times in tested.timestamps]
    entities = pd.DataFrame({"user_id": np.concatenate([tested.user_ids, tested.user_ids]),
                             "event_timestamp": pd.to_datetime(test_times + before_last, unit="s", utc=True)})
    rows = FeatureStore(repo_path=str(export_dir / FEATURE_REPO_DIR)).get_historical_features(
        entity_df=entities, features=[f"{feature_store.HISTORY_VIEW}:{HISTORY_INPUT}"]).to_df()
    at_test = rows[rows["event_timestamp"].isin(entities["event_timestamp"][:len(tested)])]
    history_of = {user_id: list(items[-SMALL_RUN["max_length"]:]) for user_id, items in
                  zip(tested.user_ids, tested.item_ids)}
    assert len(at_test) == len(tested)
    assert all(list(row[HISTORY_INPUT]) == history_of[row["user_id"]] for _, row in at_test.iterrows())
    before = rows[~rows.index.isin(at_test.index)]
    assert before[HISTORY_INPUT].isna().all()  # no history from after the time asked about


def test_pushed_events_change_the_served_answer_to_what_the_models_give_in_process(
        served_small_export, repo, in_process_fresh, tmp_path):
    export_dir, _, running = served_small_export
    store = OnlineFeatureStore(repo)
    client = fresh_client(export_dir, GrpcTransport(f"127.0.0.1:{running.server.grpc_port}"))
    before = client.recommend_from_store(store, "1", k=10)
    assert before.query == QUERY_STORE and before.source == "two_stage" and len(before.items) == 10
    user = store.users(["1"])[0]
    catalog, _ = read_items_file(export_dir / ITEMS_FILE)
    watched = [item for item in catalog.item_ids[200:] if item not in user.history_item_ids][:3]
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id,timestamp\n" + "".join(
        f"1,{item},{user.last_event_seconds + 60 * (position + 1)}\n" for position, item in enumerate(watched)))

    assert features_command.main(["push", f"--repo={repo}", f"--events={events}"]) == 0
    updated = store.users(["1"])[0]
    assert updated.history_item_ids == (user.history_item_ids + watched)[-store.history_length:]
    after = client.recommend_from_store(store, "1", k=10)
    expected_ids, expected_scores = in_process_fresh(updated.features, updated.history_item_ids, 10)
    assert [item.item_id for item in after.items] == expected_ids != [item.item_id for item in before.items]
    assert [item.score for item in after.items] == pytest.approx(expected_scores, abs=1e-4)
    assert not set(expected_ids) & set(watched)
    client.transport.close()


def test_new_users_from_events_or_features_and_users_the_store_does_not_know(served_small_export, repo, tmp_path):
    export_dir, _, running = served_small_export
    store = OnlineFeatureStore(repo)
    catalog, _ = read_items_file(export_dir / ITEMS_FILE)
    events = pd.DataFrame({"user_id": ["newcomer", "newcomer"], "item_id": list(catalog.item_ids[:2]),
                           "timestamp": [2_000_000_000, 2_000_000_100]})
    report = push_events(store, events, served_item_ids(store))
    assert (report.events, report.users, report.new_users, report.late_events) == (2, 1, 1, 0)
    # A user who signed up (a row in the users table) but did nothing yet.
    users_table = repo / feature_store.DATA_FOLDER / feature_store.TABLES[feature_store.USER_FEATURES_VIEW]
    users = pd.read_parquet(users_table)
    signed_up = users.iloc[:1].assign(user_id="signed_up")
    pd.concat([users, signed_up]).to_parquet(users_table)
    assert features_command.main(["materialize", f"--repo={repo}"]) == 0

    client = fresh_client(export_dir, GrpcTransport(f"127.0.0.1:{running.server.grpc_port}"))
    newcomer = client.recommend_from_store(store, "newcomer", k=5)
    assert newcomer.query == QUERY_STORE and newcomer.source == "two_stage"
    assert not {item.item_id for item in newcomer.items} & set(catalog.item_ids[:2])  # replayed, then excluded
    features_only = client.recommend_from_store(store, "signed_up", k=5)
    assert features_only.query == QUERY_STORE_FEATURES_ONLY and features_only.source == "two_stage"
    unknown = client.recommend_from_store(store, "nobody", k=5)
    assert unknown.query == QUERY_UNKNOWN_USER and unknown.source == "popular_fallback"
    assert [item.item_id for item in unknown.items] == list(catalog.item_ids[:5]) and "nobody" in unknown.error
    client.transport.close()


def test_bad_events_are_refused_with_their_line_and_late_ones_skipped(repo, tmp_path, capsys):
    store = OnlineFeatureStore(repo)
    user = store.users(["2"])[0]
    catalog, _ = read_items_file(repo.parent / ITEMS_FILE)
    unknown_item = tmp_path / "unknown_item.csv"
    unknown_item.write_text(f"user_id,item_id,timestamp\n2,{catalog.item_ids[0]},{user.last_event_seconds + 1}\n"
                            f"2,no-such-item,{user.last_event_seconds + 2}\n")
    assert features_command.main(["push", f"--repo={repo}", f"--events={unknown_item}"]) == 2
    error = capsys.readouterr().err
    assert "unknown_item.csv:3: field 'item_id'" in error and "'no-such-item'" in error
    assert "nothing was written" in error
    assert store.users(["2"])[0].history_item_ids == user.history_item_ids

    bad_time = tmp_path / "bad_time.csv"
    bad_time.write_text("user_id,item_id,timestamp\n2,1,yesterday\n")
    assert features_command.main(["push", f"--repo={repo}", f"--events={bad_time}"]) == 2
    assert "bad_time.csv:2: field 'timestamp'" in capsys.readouterr().err

    late = tmp_path / "late.csv"
    late.write_text(f"user_id,item_id,timestamp\n2,{catalog.item_ids[0]},{user.last_event_seconds - 10}\n"
                    f"2,{catalog.item_ids[1]},{user.last_event_seconds + 10}\n")
    assert features_command.main(["push", f"--repo={repo}", f"--events={late}"]) == 0
    captured = capsys.readouterr()
    assert "1 late events skipped" in captured.out and "skipped" in captured.err
    assert store.users(["2"])[0].history_item_ids[-2:] == [user.history_item_ids[-1], catalog.item_ids[1]]


def test_a_missing_or_locked_store_gets_a_clear_error_and_the_snapshot_answers(served_small_export, repo, capsys):
    export_dir, _, running = served_small_export
    server = f"--server=127.0.0.1:{running.server.grpc_port}"
    assert recommend.main([server, f"--feature_repo={repo.parent / 'nowhere'}", "--user_id=1"]) == 2
    assert "no feature repository" in capsys.readouterr().err

    store = OnlineFeatureStore(repo)
    client = fresh_client(export_dir, GrpcTransport(f"127.0.0.1:{running.server.grpc_port}"))
    locker = sqlite3.connect(repo / feature_store.SQLITE_ONLINE_STORE["path"])
    locker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(FeatureStoreError, match="locked"):
            store.users(["1"])
        answer = client.recommend_from_store(store, "1", k=5)
    finally:
        locker.rollback()
        locker.close()
    assert answer.query == QUERY_USER_ID and answer.source == "two_stage"
    assert "feature store unavailable" in answer.error
    assert [item.item_id for item in answer.items] == [item.item_id for item in client.recommend("1", k=5).items]
    assert client.recommend_from_store(store, "1", k=5).query == QUERY_STORE  # the store is back
    client.transport.close()


def test_the_recommend_command_reads_the_store(served_small_export, small_export, capsys):
    export_dir, _, running = served_small_export
    code = recommend.main([f"--server=127.0.0.1:{running.server.grpc_port}", "--timeout_s=30", "--k=3",
                           f"--feature_repo={export_dir / FEATURE_REPO_DIR}", "--user_id=1"])
    printed = capsys.readouterr().out.splitlines()
    assert code == 0 and printed[0] == "Top 3 for user 1 (arm: latest, two_stage, query from feature_store)"
    assert len(printed) == 4 and all("score" in line for line in printed[1:])


def test_production_switches_the_online_store_to_redis_by_configuration_only():
    local, production = (RepoConfig(**feature_store.config(online)) for online in
                         (None, feature_store.REDIS_ONLINE_STORE))
    assert local.online_store.type == "sqlite" and production.online_store.type == "redis"
    assert production.online_store.connection_string == feature_store.REDIS_ONLINE_STORE["connection_string"]
    assert {key: value for key, value in feature_store.config(feature_store.REDIS_ONLINE_STORE).items()
            if key != "online_store"} == {key: value for key, value in feature_store.config().items()
                                          if key != "online_store"}


def test_concurrent_reads_see_whole_histories(repo):
    """Readers never see a half-written history while a push is under way."""
    store = OnlineFeatureStore(repo)
    user = store.users(["3"])[0]
    catalog, _ = read_items_file(repo.parent / ITEMS_FILE)
    pushed = [item for item in catalog.item_ids[:40] if item not in user.history_item_ids][:20]
    seen, done = [], threading.Event()

    def read() -> None:
        reader = OnlineFeatureStore(repo)
        while not done.is_set():
            seen.append(tuple(reader.users(["3"])[0].history_item_ids))

    thread = threading.Thread(target=read)
    thread.start()
    for position, item in enumerate(pushed):
        push_events(store, pd.DataFrame({"user_id": ["3"], "item_id": [item],
                                         "timestamp": [user.last_event_seconds + position + 1]}), set(catalog.item_ids))
    done.set()
    thread.join()
    valid = {tuple((user.history_item_ids + pushed[:count])[-store.history_length:])
             for count in range(len(pushed) + 1)}
    assert seen and set(seen) <= valid
