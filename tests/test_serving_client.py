"""The two-stage client and ``python -m tfrs_pipeline.recommend`` against a real server on loopback."""
import json
import shutil
import threading

import numpy as np
import pytest

from tfrs_pipeline import recommend
from tfrs_pipeline.catalog import Catalog, read_items_file
from tfrs_pipeline.contracts import CANARY_LABEL, ITEMS_FILE, RANKING_MODEL, RETRIEVAL_MODEL, STABLE_LABEL
from tfrs_pipeline.export.serving_config import ModelEntry, build_config, write_config
from tfrs_pipeline.serving.client import LATEST, GrpcTransport, PredictError, RestTransport, TwoStageClient, ab_arm
from test_serving_server import RunningServer, free_port
from test_serving_toy_models import ITEM_IDS, ToyRanking, export_toy, toy_exports  # noqa: F401


@pytest.fixture(scope="module")
def labelled_server(toy_exports, tmp_path_factory):
    """retrieval and ranking at versions 1 (stable) and 2 (canary); toy scores are offset by 1000 * version."""
    root = tmp_path_factory.mktemp("client")
    shutil.copytree(toy_exports, root / "exports")
    export_toy(root / "exports" / RANKING_MODEL, ToyRanking, 2)
    labels = {STABLE_LABEL: 1, CANARY_LABEL: 2}
    config = build_config([ModelEntry(name, str(root / "exports" / name), num_versions=2, version_labels=labels)
                           for name in (RETRIEVAL_MODEL, RANKING_MODEL)])
    running = RunningServer(write_config(config, root / "models.config"))
    yield running
    running.close()


@pytest.fixture(scope="module")
def items_file(tmp_path_factory):
    """The toy catalog's items file as an export writes it: ``ITEM_IDS`` are listed most popular first."""
    path = tmp_path_factory.mktemp("items") / ITEMS_FILE
    popularity = np.concatenate([[0.0], np.arange(len(ITEM_IDS), 0, -1)])  # [N + 1]: index 0 is "unknown"
    Catalog(ITEM_IDS, [f"Item number {item}" for item in ITEM_IDS]).write_items_file(path, popularity)
    return path


def grpc_client(server, **options) -> TwoStageClient:
    """A client with a deadline generous enough for a machine busy with other tests."""
    return TwoStageClient(GrpcTransport(f"127.0.0.1:{server.server.grpc_port}"), **{"timeout_s": 10, **options})


def test_two_stage_recommendations_over_grpc_and_rest_agree(labelled_server, items_file):
    catalog, _ = read_items_file(items_file)
    over_grpc = grpc_client(labelled_server, catalog=catalog).recommend("3", k=5)
    over_rest = TwoStageClient(RestTransport(labelled_server.rest_url), catalog, timeout_s=10).recommend("3", k=5)
    assert over_grpc.source == "two_stage" and over_grpc.arm == STABLE_LABEL and over_grpc.error == ""
    assert len(over_grpc.items) == 5
    assert [item.title for item in over_grpc.items] == [f"Item number {item.item_id}" for item in over_grpc.items]
    scores = [item.score for item in over_grpc.items]
    assert scores == sorted(scores, reverse=True) and all(round(score / 1000) == 1 for score in scores)
    assert [(item.item_id, item.title) for item in over_rest.items] == [
        (item.item_id, item.title) for item in over_grpc.items]
    assert [item.score for item in over_rest.items] == pytest.approx(scores)


def test_ab_routing_sends_a_stable_fraction_of_users_to_the_canary_label(labelled_server):
    users = [str(user) for user in range(1, 201)]
    arms = {user: ab_arm(user, 0.3) for user in users}
    assert arms == {user: ab_arm(user, 0.3) for user in users}  # stable across calls
    assert 0.2 < sum(arm == CANARY_LABEL for arm in arms.values()) / len(users) < 0.4
    assert all(ab_arm(user, 0.0) == STABLE_LABEL for user in users)
    assert all(ab_arm(user, 1.0) == CANARY_LABEL for user in users)

    answers = grpc_client(labelled_server, canary_fraction=0.3).recommend_many(users[:40], k=3)
    assert [answer.user_id for answer in answers] == users[:40]
    for answer in answers:
        assert answer.arm == arms[answer.user_id]
        served_version = round(answer.items[0].score / 1000)  # the ranking version that scored it
        assert served_version == {STABLE_LABEL: 1, CANARY_LABEL: 2}[answer.arm]


def test_ranking_failure_keeps_the_retrieval_order(labelled_server):
    answer = grpc_client(labelled_server, ranking_model="missing_ranker").recommend("2", k=4)
    assert answer.source == "retrieval_only" and "missing_ranker" in answer.error
    assert len(answer.items) == 4


def test_unreachable_retrieval_falls_back_to_popular_items_after_retries(items_file):
    catalog, _ = read_items_file(items_file)
    client = TwoStageClient(GrpcTransport(f"127.0.0.1:{free_port()}"), catalog, timeout_s=0.5, retries=2,
                            backoff_s=0.01)
    answer = client.recommend("5", k=3)
    assert answer.source == "popular_fallback" and "UNAVAILABLE" in answer.error
    assert [item.item_id for item in answer.items] == ITEM_IDS[:3]
    with pytest.raises(PredictError):
        TwoStageClient(client.transport, None, timeout_s=0.5, retries=0).recommend("5")


def test_a_server_that_comes_up_late_is_reached_by_retrying(toy_exports, tmp_path):
    port = free_port()
    config = write_config(build_config([ModelEntry(name, str(toy_exports / name))
                                        for name in (RETRIEVAL_MODEL, RANKING_MODEL)]), tmp_path / "models.config")
    servers = []
    starter = threading.Timer(0.5, lambda: servers.append(RunningServer(config, f"--port={port}")))
    starter.start()
    try:
        client = TwoStageClient(GrpcTransport(f"127.0.0.1:{port}"), None, timeout_s=10, retries=8, backoff_s=0.1)
        answer = client.recommend("1", k=3)
    finally:
        starter.join()
        servers[0].close()
    assert answer.source == "two_stage" and answer.arm == LATEST  # this config defines no labels


def test_recommend_command_prints_a_readable_list(labelled_server, items_file, capsys):
    code = recommend.main([f"--server=127.0.0.1:{labelled_server.server.grpc_port}", "--user_id=4", "--k=3",
                           f"--items={items_file}", "--canary_fraction=0", "--timeout_s=10"])
    printed = capsys.readouterr().out.splitlines()
    assert code == 0
    assert printed[0] == "Top 3 for user 4 (arm: stable, two_stage)"
    assert len(printed) == 4 and all("Item number" in line and "score" in line for line in printed[1:])


def test_recommend_batch_mode_writes_json_lines(labelled_server, items_file, tmp_path):
    users_file = tmp_path / "users.txt"
    users_file.write_text("1\n2\n\n3\n")
    output = tmp_path / "recommendations.jsonl"
    code = recommend.main([f"--server={labelled_server.rest_url}", "--transport=rest", f"--user_ids_file={users_file}",
                           f"--output={output}", "--k=2", f"--items={items_file}", "--batch_size=2",
                           "--timeout_s=10"])
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert code == 0
    assert [line["user_id"] for line in lines] == ["1", "2", "3"]
    assert all(len(line["items"]) == 2 and line["source"] == "two_stage" for line in lines)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["recommendations.jsonl", "users.txt"]


def test_recommend_command_reports_a_missing_items_file(tmp_path, capsys):
    assert recommend.main(["--user_id=1", f"--items={tmp_path / 'absent.tsv'}"]) == 2
    assert "cannot read the items file" in capsys.readouterr().err


def test_recommend_command_names_the_columns_an_items_file_lacks(tmp_path, capsys):
    old_layout = tmp_path / ITEMS_FILE
    old_layout.write_text("movie_id\tmovie_title\n1\tToy Story (1995)\n")
    assert recommend.main(["--user_id=1", f"--items={old_layout}"]) == 2
    error = capsys.readouterr().err
    assert "cannot read the items file" in error and "missing item_id, popularity, title" in error


def test_a_label_whose_version_is_not_loaded_falls_back_to_the_latest_versions(toy_exports, tmp_path):
    config = write_config(build_config([ModelEntry(name, str(toy_exports / name), version_labels={CANARY_LABEL: 9})
                                        for name in (RETRIEVAL_MODEL, RANKING_MODEL)]), tmp_path / "models.config")
    running = RunningServer(config, "--allow_version_labels_for_unavailable_models")
    try:
        answer = grpc_client(running, canary_fraction=1.0).recommend("2", k=3)
    finally:
        running.close()
    assert answer.arm == LATEST and answer.source == "two_stage" and len(answer.items) == 3
