"""The two-stage client and ``python -m tfrs_pipeline.recommend`` against a real server on loopback.

The A/B, retry and fallback mechanics run on toy models whose scores say which version answered;
the fresh-feature path runs on the real small export (``conftest.small_export``), whose request is
built from its ``schema.json`` and checked against the SavedModels called in-process.
"""
import json
import math
import shutil
import threading

import numpy as np
import pytest
import tensorflow as tf

from tfrs_pipeline import recommend
from tfrs_pipeline.catalog import Catalog, read_items_file
from tfrs_pipeline.contracts import (
    CANARY_LABEL,
    CATEGORICAL,
    DESCRIPTION_FILE,
    HISTORY_INPUT,
    ITEMS_FILE,
    MULTI_CATEGORICAL,
    NUMERIC,
    QUERY_FEATURES_SIGNATURE,
    RANKING_MODEL,
    RECOMMENDER_MODEL,
    RETRIEVAL_MODEL,
    SERVING_SIGNATURE,
    STABLE_LABEL,
    TEXT,
    ExportDescription,
    FeatureSchema,
    FeatureSpec,
)
from tfrs_pipeline.data.dataset import load_dataset
from tfrs_pipeline.data.split import hold_out, user_sequences
from tfrs_pipeline.export.serving_config import ModelEntry, build_config, write_config
from tfrs_pipeline.index import load_top_k
from tfrs_pipeline.serving.client import (
    LATEST,
    GrpcTransport,
    PredictError,
    RestTransport,
    TwoStageClient,
    ab_arm,
    fresh_feature_inputs,
)
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


# --- Fresh features and history, on the real small export ------------------------------------------

KNOWN_USERS = ("1", "2", "42")


@pytest.fixture(scope="module")
def served_small_export(small_export):
    """(export_dir, version, running server) of the session's small MovieLens run."""
    export_dir, metrics = small_export
    running = RunningServer(export_dir / "models.config")
    yield export_dir, metrics["version"], running
    running.close()


@pytest.fixture(scope="module")
def known_users(shared_data_dir):
    """user id -> (features, history) exactly as the export's snapshot holds them, read the way the run reads them.

    The feature names come from the data set's schema: the test knows no column name either. A user's
    rows do not depend on how many other users are read, so only those up to the largest id are.
    """
    data = load_dataset(shared_data_dir / "ml-1m", max_users=max(int(user_id) for user_id in KNOWN_USERS))
    history = hold_out(user_sequences(data.interactions), data.schema.split).history
    users = data.users.set_index("user_id")
    row_of = {user_id: row for row, user_id in enumerate(history.user_ids)}
    return {user_id: ({spec.name: users.loc[user_id, spec.name] for spec in data.schema.features.user_features},
                      list(history.item_ids[row_of[user_id]])) for user_id in KNOWN_USERS}


def fresh_client(export_dir, transport, **options) -> TwoStageClient:
    catalog, _ = read_items_file(export_dir / ITEMS_FILE)
    description = ExportDescription.read(export_dir / DESCRIPTION_FILE)
    return TwoStageClient(transport, catalog, description=description, **{"timeout_s": 30, **options})


@pytest.fixture(scope="module")
def in_process_fresh(served_small_export):
    """``top_k(features, history, k)``: (item ids, scores) of the two ``query_features`` signatures called
    in this process, best first, on the request the client builds."""
    export_dir, version, _ = served_small_export
    description = ExportDescription.read(export_dir / DESCRIPTION_FILE)
    retrieve, rank = (load_top_k(str(export_dir / model / str(version))).signatures[QUERY_FEATURES_SIGNATURE]
                      for model in (RETRIEVAL_MODEL, RANKING_MODEL))

    def top_k(features: dict, history: list[str], k: int) -> tuple[list[str], list[float]]:
        request = fresh_feature_inputs(description, features, history)
        inputs = {name: tf.constant(value) for name, value in request.items()}
        candidates = retrieve(**inputs)["item_ids"]
        scores = rank(**inputs, item_ids=candidates)["scores"].numpy()[0]
        best = np.argsort(-scores, kind="stable")[:k]
        return [item.decode() for item in candidates.numpy()[0][best]], scores[best].tolist()

    return top_k


def test_the_fresh_path_for_known_users_gives_their_two_stage_list(served_small_export, known_users,
                                                                   in_process_fresh):
    """A user's own features and history, sent fresh, get what query_features gives in-process and what
    the user-id path gives from the export's snapshot (the same data, so the same list up to float rounding)."""
    export_dir, _, running = served_small_export
    expected = {user_id: in_process_fresh(*user, 10) for user_id, user in known_users.items()}
    for transport in (GrpcTransport(f"127.0.0.1:{running.server.grpc_port}"), RestTransport(running.rest_url)):
        client = fresh_client(export_dir, transport)
        for user_id, (features, history) in known_users.items():
            expected_ids, expected_scores = expected[user_id]
            answer = client.recommend_fresh(features, history, k=10)
            assert answer.source == "two_stage" and answer.arm == LATEST and answer.error == ""
            assert all(item.title for item in answer.items)
            assert not {item.item_id for item in answer.items} & set(history)
            assert [item.item_id for item in answer.items] == expected_ids
            assert [item.score for item in answer.items] == pytest.approx(expected_scores, abs=1e-4)
            by_id = client.recommend(user_id, k=10)
            assert [item.item_id for item in by_id.items] == expected_ids
            assert [item.score for item in by_id.items] == pytest.approx(expected_scores, abs=1e-3)
        transport.close()


def test_a_user_with_no_history_gets_an_answer_from_the_features_alone(served_small_export, known_users,
                                                                       in_process_fresh):
    export_dir, _, running = served_small_export
    client = fresh_client(export_dir, GrpcTransport(f"127.0.0.1:{running.server.grpc_port}"))
    features, history = known_users["1"]
    features_only = client.recommend_fresh(features, [], k=10)
    assert features_only.source == "two_stage" and len(features_only.items) == 10
    expected_ids, _ = in_process_fresh(features, [], 10)
    assert [item.item_id for item in features_only.items] == expected_ids
    assert expected_ids != [item.item_id for item in client.recommend_fresh(features, history, k=10).items]
    nothing_known = client.recommend_fresh({}, [], k=10)  # every feature missing: still a two-stage answer
    assert nothing_known.source == "two_stage" and len(nothing_known.items) == 10
    client.transport.close()


def test_an_unknown_feature_is_refused_before_anything_is_sent(small_export):
    export_dir, _ = small_export
    description = ExportDescription.read(export_dir / DESCRIPTION_FILE)
    known = [spec.name for spec in description.features.user_features]
    client = fresh_client(export_dir, GrpcTransport(f"127.0.0.1:{free_port()}"), retries=0)  # nothing listens
    with pytest.raises(ValueError, match="'favourite_colour'") as refused:
        client.recommend_fresh({known[0]: "x", "favourite_colour": "blue"}, ["1"])
    assert all(name in str(refused.value) for name in known)
    with pytest.raises(ValueError, match="description"):
        TwoStageClient(client.transport, client.catalog).recommend_fresh({}, ["1"])


def test_the_fresh_path_keeps_the_fallbacks_and_leaves_the_history_out(served_small_export):
    export_dir, _, running = served_small_export
    grpc_target = f"127.0.0.1:{running.server.grpc_port}"
    history = ["2858", "260"]
    answer = fresh_client(export_dir, GrpcTransport(grpc_target), ranking_model="missing_ranker",
                          recommender_model=None).recommend_fresh({}, history, k=5)
    assert answer.source == "retrieval_only" and "missing_ranker" in answer.error and len(answer.items) == 5
    unreachable = fresh_client(export_dir, GrpcTransport(f"127.0.0.1:{free_port()}"), timeout_s=0.5, retries=0)
    popular = unreachable.recommend_fresh({}, history, k=5)
    catalog, _ = read_items_file(export_dir / ITEMS_FILE)
    assert popular.source == "popular_fallback" and "UNAVAILABLE" in popular.error
    assert [item.item_id for item in popular.items] == [
        item for item in catalog.item_ids if item not in history][:5]


def test_fresh_requests_are_built_from_the_description_with_missing_values_for_left_out_features():
    description = ExportDescription(FeatureSchema(user_features=(
        FeatureSpec("plan", CATEGORICAL), FeatureSpec("interests", MULTI_CATEGORICAL),
        FeatureSpec("age", NUMERIC), FeatureSpec("bio", TEXT))))
    inputs = fresh_feature_inputs(description, {"interests": "jazz| hiking", "age": "31", "plan": " pro "}, ["a", "b"])
    assert list(inputs) == ["plan", "interests", "age", "bio", HISTORY_INPUT]
    assert inputs["plan"].tolist() == ["pro"] and inputs["bio"].tolist() == [""]
    assert inputs["interests"].tolist() == [["jazz", "hiking"]]
    assert inputs["age"].dtype == np.float32 and inputs["age"].tolist() == [31.0]
    assert inputs[HISTORY_INPUT].tolist() == [["a", "b"]]
    empty = fresh_feature_inputs(description, {"interests": ["jazz"]}, [])
    assert empty["interests"].tolist() == [["jazz"]] and math.isnan(empty["age"][0])
    assert empty[HISTORY_INPUT].tolist() == [[""]]
    assert fresh_feature_inputs(description, {}, [])["interests"].tolist() == [[""]]
    with pytest.raises(ValueError, match="'age' is numeric"):
        fresh_feature_inputs(description, {"age": "thirty"}, [])


def test_recommend_command_answers_fresh_features_and_history(served_small_export, known_users, capsys):
    export_dir, _, running = served_small_export
    features, history = known_users["2"]
    flags = [f"--server=127.0.0.1:{running.server.grpc_port}", "--k=3", f"--items={export_dir / ITEMS_FILE}",
             "--timeout_s=30"]
    code = recommend.main([*flags, *(f"--feature={name}={value}" for name, value in features.items()),
                           "--history", *history])
    printed = capsys.readouterr().out.splitlines()
    assert code == 0 and printed[0] == ("Top 3 for these features and history "
                                        "(arm: latest, two_stage, query from fresh_features)")
    assert len(printed) == 4 and all("score" in line for line in printed[1:])

    assert recommend.main([*flags, "--feature=favourite_colour=blue"]) == 2
    error = capsys.readouterr().err
    assert "'favourite_colour'" in error and all(name in error for name in features)
    assert recommend.main([*flags, "--feature", "no_equals_sign"]) == 2
    assert "NAME=VALUE" in capsys.readouterr().err


class CountingTransport(GrpcTransport):
    """The real gRPC transport, counting the Predict calls per model."""

    def __init__(self, target: str):
        super().__init__(target)
        self.calls: dict[str, int] = {}

    def predict(self, model, label, inputs, timeout_s, signature=SERVING_SIGNATURE):
        self.calls[model] = self.calls.get(model, 0) + 1
        return super().predict(model, label, inputs, timeout_s, signature)


def test_one_call_to_the_recommender_answers_as_the_two_calls_do(served_small_export, known_users):
    export_dir, _, running = served_small_export
    one_call, two_calls = (CountingTransport(f"127.0.0.1:{running.server.grpc_port}") for _ in range(2))
    default = fresh_client(export_dir, one_call)
    apart = fresh_client(export_dir, two_calls, recommender_model=None)
    for user_id, (features, history) in known_users.items():
        for ask in (lambda client: client.recommend(user_id, k=10),
                    lambda client: client.recommend_fresh(features, history, k=10)):
            answer, expected = ask(default), ask(apart)
            assert answer.source == expected.source == "two_stage"
            assert [item.item_id for item in answer.items] == [item.item_id for item in expected.items]
            assert [item.score for item in answer.items] == pytest.approx([item.score for item in expected.items],
                                                                          abs=1e-4)
    asked = 2 * len(known_users)  # the first call of each model also asks for the stable label, which is undefined
    assert one_call.calls == {RECOMMENDER_MODEL: asked + 1}
    assert two_calls.calls == {RETRIEVAL_MODEL: asked + 1, RANKING_MODEL: asked}
