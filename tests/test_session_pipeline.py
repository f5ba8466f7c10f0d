"""The session model end to end on a real slice of DIGINETICA: train, evaluate, export, reload, serve."""
import contextlib
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfrs_pipeline import index, recommend
from tfrs_pipeline.catalog import Catalog
from tfrs_pipeline.config import SessionConfig
from tfrs_pipeline.data.sessions import load_sessions
from tfrs_pipeline.export.savedmodels import SessionExport, save_session
from tfrs_pipeline.export.serving_config import read_config
from tfrs_pipeline.models.session_knn import SessionNeighbours
from tfrs_pipeline.pipelines import session
from tfrs_pipeline.serving.client import GrpcTransport, TwoStageClient
from test_serving_server import RunningServer, retrieval_request

SLICE_SESSIONS = 2500
SLICE_TEST_LINES = 15000
SMALL_SESSION_RUN = dict(epochs=2, max_length=20, embedding_dim=32, batch_size=64, num_negatives=512, top_k=50,
                         verbose=0)


@pytest.fixture(scope="module")
def session_export(shared_data_dir, tmp_path_factory):
    """(export_dir, metrics, data folder) of a real session run on the first sessions of DIGINETICA."""
    folder = tmp_path_factory.mktemp("diginetica_slice")
    source = shared_data_dir / "diginetica"
    for name, lines in (("train_sessions.txt", SLICE_SESSIONS), ("test.tsv", SLICE_TEST_LINES)):
        with open(source / name) as file:
            (folder / name).write_text("".join(line for _, line in zip(range(lines), file)))
    export_dir = tmp_path_factory.mktemp("session_export")
    config = SessionConfig(data_dir=str(folder), export_dir=str(export_dir), **SMALL_SESSION_RUN)
    return export_dir, session.run(config), folder


def predict_in_fresh_process(export_path, sessions: list[list[str]]) -> dict:
    """Loads the export in a new Python process (nothing of the training process) and calls serving_default."""
    width = max(1, max(len(row) for row in sessions))
    padded = [row + [""] * (width - len(row)) for row in sessions]
    script = (
        "import json, sys, tfrs_pipeline, tensorflow as tf\n"
        "from tfrs_pipeline.index import load_top_k\n"
        "serve = load_top_k(sys.argv[1]).signatures['serving_default']\n"
        "out = serve(session_item_ids=tf.constant(json.loads(sys.argv[2])))\n"
        "print(json.dumps({'item_ids': out['item_ids'].numpy().astype(str).tolist(),"
        " 'scores': out['scores'].numpy().tolist()}))\n"
    )
    completed = subprocess.run([sys.executable, "-c", script, str(export_path), json.dumps(padded)],
                               capture_output=True, text=True, timeout=300, check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_the_transformer_beats_popularity_and_reports_the_session_metrics(session_export):
    export_dir, metrics, _ = session_export
    evaluation = metrics["evaluation"]
    assert evaluation["test_cases"] > 1000
    for system in ("transformer_and_session_knn", "transformer", "session_knn", "sequential_rules", "popularity"):
        assert {"p@20", "mrr@20", "hr@10"} <= set(evaluation[system])
        assert evaluation[system]["p@20"] == evaluation[system]["hr@20"]
    assert evaluation["transformer"]["p@20"] > 3 * evaluation["popularity"]["p@20"]
    assert evaluation["transformer"]["mrr@20"] > evaluation["popularity"]["mrr@20"]
    # The session-kNN weight: the best P@20 on the most recent 2% of the training sessions, held out.
    assert metrics["held_out_sessions"] == int(SLICE_SESSIONS * SessionConfig.neighbour_validation_share)
    held_out_p20 = {float(weight): value for weight, value in metrics["held_out_p20_by_neighbour_weight"].items()}
    assert set(held_out_p20) == set(session.NEIGHBOUR_WEIGHTS)
    assert held_out_p20[metrics["neighbour_weight"]] == max(held_out_p20.values())
    # The repeat bonus is part of the loss, so training moves it from its zero start (a fifth of
    # DIGINETICA's next clicks are an item already in the session).
    bonus = metrics["repeat_bonus_by_recency"]
    assert len(bonus) == SMALL_SESSION_RUN["max_length"] and max(abs(value) for value in bonus[:5]) > 0.05
    written = json.loads((export_dir / "runs" / "session" / "1" / "metrics.json").read_text())
    assert written["evaluation"] == evaluation
    assert json.loads((export_dir / "session_metrics.json").read_text())["version"] == 1


def test_export_is_versioned_and_registered_next_to_the_other_models(session_export):
    export_dir, _, _ = session_export
    assert (export_dir / "session" / "1" / "saved_model.pb").is_file()
    models = {model.name: model for model in read_config(export_dir / "models.config").model_config_list.config}
    assert models["session"].base_path == str((export_dir / "session").resolve())


def test_reloaded_export_ignores_padding_and_unknown_items_and_keeps_the_most_recent(session_export):
    export_dir, _, folder = session_export
    sessions = [line.split() for line in (folder / "train_sessions.txt").read_text().splitlines()]
    session_items = next(items for items in sessions if len(items) >= 4)[:4]
    longest = max(sessions, key=len)
    assert len(longest) > SMALL_SESSION_RUN["max_length"]
    rows = [
        session_items,
        ["no-such-item", session_items[0], "", session_items[1], "unknown", *session_items[2:]],
        [],
        ["never-seen"],
        longest,
        longest[-SMALL_SESSION_RUN["max_length"]:],
    ]
    out = predict_in_fresh_process(export_dir / "session" / "1", rows)
    item_ids, scores = np.asarray(out["item_ids"]), np.asarray(out["scores"])
    assert item_ids.shape == scores.shape == (len(rows), SMALL_SESSION_RUN["top_k"])
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    assert (item_ids[0] == item_ids[1]).all() and np.allclose(scores[0], scores[1], atol=1e-5)
    clicks = np.unique(np.concatenate([np.asarray(items) for items in sessions]), return_counts=True)
    most_popular = clicks[0][np.argsort(-clicks[1], kind="stable")][:5]
    for empty_row in (2, 3):
        assert set(item_ids[empty_row, :3]) <= set(most_popular)
        assert (item_ids[empty_row] == item_ids[2]).all()
    assert (item_ids[4] == item_ids[5]).all()
    assert not (item_ids[0] == item_ids[2]).all()


def test_served_through_the_model_server_with_the_grpc_stubs(session_export):
    export_dir, _, folder = session_export
    sessions = [line.split() for line in (folder / "train_sessions.txt").read_text().splitlines()[:8]]
    width = max(len(items) for items in sessions)
    batch = np.asarray([items + [""] * (width - len(items)) for items in sessions])
    running = RunningServer(export_dir / "models.config")
    try:
        response = running.predictions.Predict(retrieval_request(
            None, model="session", session_item_ids=tf.make_tensor_proto(batch, dtype=tf.string)), timeout=60)
        client = TwoStageClient(GrpcTransport(f"127.0.0.1:{running.server.grpc_port}"), timeout_s=60)
        next_items = client.recommend_next(sessions[0], k=5)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exit_code = recommend.main([f"--server=127.0.0.1:{running.server.grpc_port}", "--timeout_s=60",
                                        "--k=3", "--session", *sessions[0]])
    finally:
        running.close()
    in_process = tf.saved_model.load(str(export_dir / "session" / "1")).signatures["serving_default"]
    expected = in_process(session_item_ids=tf.constant(batch))
    assert np.array_equal(tf.make_ndarray(response.outputs["item_ids"]), expected["item_ids"].numpy())
    assert np.allclose(tf.make_ndarray(response.outputs["scores"]), expected["scores"].numpy(), atol=1e-5)
    assert next_items.source == "session"
    assert [item.item_id for item in next_items.items] == [
        item_id.decode() for item_id in expected["item_ids"].numpy()[0][:5]]
    assert exit_code == 0 and "Top 3 for this session" in printed.getvalue()


@pytest.fixture(scope="module")
def slice_model(shared_data_dir, tmp_path_factory):
    """(config, data, catalog, model): one epoch on a small DIGINETICA slice, kept in memory."""
    folder = tmp_path_factory.mktemp("slice")
    for name, lines in (("train_sessions.txt", 800), ("test.tsv", 200)):
        with open(shared_data_dir / "diginetica" / name) as file:
            (folder / name).write_text("".join(line for _, line in zip(range(lines), file)))
    config = SessionConfig(data_dir=str(folder), **{**SMALL_SESSION_RUN, "epochs": 1})
    data = load_sessions(folder, "srgnn")
    catalog = Catalog.by_popularity(data.train_sessions)
    model, _ = session.train(config, data, catalog, catalog.counts(data.train_sessions))
    return config, data, catalog, model


def test_evaluation_reads_sessions_as_serving_does_unknown_items_dropped(slice_model):
    """Unknown ids take no slot and get no bonus; a session of unknown ids only gets the popular items."""
    _, data, catalog, model = slice_model
    click_counts = catalog.counts(data.train_sessions)
    prefixes = [prefix for prefix in data.test_prefixes if len(prefix) >= 2][:30]
    targets = data.test_targets[:len(prefixes)]
    with_unknown = [np.insert(prefix, [0, len(prefix) - 1], ["no-such-item", "nor-this"]) for prefix in prefixes]
    assert np.array_equal(session.model_ranks(model, catalog, click_counts, with_unknown, targets),
                          session.model_ranks(model, catalog, click_counts, prefixes, targets))
    targets = catalog.item_ids[[0, 1, 50]]
    ranks = session.model_ranks(model, catalog, click_counts, [np.array(["no-such-item"], dtype=object)] * 3, targets)
    clicks = click_counts[1:]
    assert ranks.tolist() == [int((clicks >= clicks[column]).sum()) for column in (0, 1, 50)]


def test_session_knn_alone_ranks_by_its_scores_then_by_clicks(session_export):
    """kNN alone comes from the pass that scores the served system: its score, then popularity, ties against."""
    _, _, folder = session_export
    data = load_sessions(folder, "srgnn")
    catalog = Catalog.by_popularity(data.train_sessions)
    click_counts = catalog.counts(data.train_sessions)
    config = SessionConfig(**SMALL_SESSION_RUN)
    sessions = [catalog.indices(items) for items in data.train_sessions]
    neighbours = session.session_neighbours(config, len(catalog), sessions)
    prefixes, targets = data.test_prefixes, data.test_targets
    assert len(targets) > session.EVALUATION_BATCH  # more than one batch
    model = session.build_model(config, catalog, data.train_sessions)  # untrained: kNN alone does not read it
    _, alone = session.model_ranks_by_weight(model, catalog, click_counts, prefixes, targets, neighbours, (0.0,))
    known = [prefix[catalog.indices(prefix) > 0] for prefix in prefixes]
    scores = neighbours.dense_scores(session.left_padded_indices(catalog, known, config.max_length))[:, 1:]
    clicks = click_counts[1:]
    expected = [int(np.sum((row > row[target]) | ((row == row[target]) & (clicks >= clicks[target]))))
                for row, target in zip(scores, catalog.indices(targets) - 1)]
    assert alone.tolist() == expected
    assert np.mean(scores[np.arange(len(targets)), catalog.indices(targets) - 1] == 0) > 0.1  # popularity matters


@pytest.mark.parametrize("neighbour_weight", [None, 3.0])
def test_served_lists_add_the_bonuses_as_the_evaluation_does(slice_model, neighbour_weight, tmp_path):
    """The export's merge of index hits, session items and neighbours' items gives the evaluated order."""
    config, data, catalog, model = slice_model
    # A bonus large enough to lift session items over any cosine (|score| <= scale) and to order them by recency.
    model.repeat_bonus.assign(np.linspace(100.0, 60.0, config.max_length, dtype=np.float32))
    neighbours = None
    if neighbour_weight is not None:
        neighbours = SessionNeighbours([catalog.indices(item_ids) for item_ids in data.train_sessions], len(catalog),
                                       neighbours=20, weight=neighbour_weight)
    prefixes = [prefix for prefix in data.test_prefixes if 2 <= len(prefix) <= 20][:20]
    k = 10
    top_k = index.build_top_k("brute_force", tf.constant(catalog.item_ids.astype(str)),
                              model.catalog_embeddings()[1:], k)
    export = SessionExport(model, top_k, catalog.item_ids[:k], np.ones(k), k, neighbours)
    served = export.serve(tf.constant([list(prefix) + [""] * (20 - len(prefix)) for prefix in prefixes]))
    queries = session.session_queries(model, prefixes)
    cases, items, bonuses = session.repeat_bonuses(model, catalog, prefixes)
    scores = queries @ model.catalog_embeddings().numpy().T
    np.add.at(scores, (cases, items), bonuses)
    if neighbours is not None:
        rows, items, bonuses = neighbours.bonus(session.left_padded_indices(catalog, prefixes, config.max_length))
        np.add.at(scores, (rows.numpy(), items.numpy()), bonuses.numpy())
    scores[:, 0] = -np.inf
    expected = catalog.item_ids[np.argsort(-scores, axis=1, kind="stable")[:, :k] - 1].astype(str)
    assert np.array_equal(served["item_ids"].numpy().astype(str), expected)
    assert np.allclose(served["scores"].numpy(), -np.sort(-scores, axis=1)[:, :k], atol=1e-3)
    most_recent_first = list(dict.fromkeys(prefixes[0][::-1]))
    assert list(expected[0, :len(most_recent_first)]) == most_recent_first
    expected_ranks = session.model_ranks(model, catalog, catalog.counts(data.train_sessions), prefixes,
                                         expected[:, k - 1].astype(object), None, neighbours)
    assert expected_ranks.tolist() == [k] * len(prefixes)  # the evaluation ranks the served k-th item k-th
    if neighbours is not None:  # the neighbours' items do lift items the index alone would not return
        plain = SessionExport(model, top_k, catalog.item_ids[:k], np.ones(k), k)
        plain_lists = plain.serve(tf.constant([list(prefix) + [""] * (20 - len(prefix)) for prefix in prefixes]))
        assert not np.array_equal(plain_lists["item_ids"].numpy(), served["item_ids"].numpy())
        save_session(export, tmp_path / "1", uses_scann=False)  # the neighbours' tables travel with the export
        reloaded = predict_in_fresh_process(tmp_path / "1", [list(prefix) for prefix in prefixes])
        assert reloaded["item_ids"] == served["item_ids"].numpy().astype(str).tolist()
