"""Mirrored training on two (logical CPU) devices matches training on one, from the same seed and batches.

TensorFlow fixes its devices when it first touches them, so the two logical CPUs are configured in a
fresh interpreter: this file runs itself as a script, trains the same tiny retrieval model under the
``default`` and the ``mirrored`` strategy, and prints what the test compares.

The comparison is exact up to float error when both runs compute the same gradients: the full
softmax (sampled negatives would be drawn per replica), no dropout, and batches of full windows that
split into halves with equally many targets (each replica averages its half; the halves' gradients
are summed, which Adam's step does not see).
"""
import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

from tfrs_pipeline.distribute import strategy_for

MAX_USERS = 40
MAX_LENGTH = 16
BATCH_SIZE = 32
EPOCHS = 2


def test_mirrored_training_on_two_devices_matches_one_device(shared_data_dir):
    child = subprocess.run([sys.executable, __file__, str(shared_data_dir / "ml-1m")], capture_output=True,
                           text=True, timeout=600, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert child.returncode == 0, child.stderr[-4000:]
    runs = json.loads(child.stdout.splitlines()[-1])
    default, mirrored = runs["default"], runs["mirrored"]

    assert (default["replicas"], mirrored["replicas"]) == (1, 2)
    np.testing.assert_array_equal(mirrored["initial_embeddings"], default["initial_embeddings"])
    losses = np.array([default["losses"], mirrored["losses"]])
    assert losses[0, -1] < 0.95 * losses[0, 0]  # it trained: the comparison is not between two no-ops
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-3)
    # Adam: rare items amplify float error.
    np.testing.assert_allclose(mirrored["embeddings"], default["embeddings"], atol=0.03)
    moved = np.abs(np.subtract(default["embeddings"], default["initial_embeddings"])).mean()
    drift = np.abs(np.subtract(mirrored["embeddings"], default["embeddings"])).mean()
    assert drift < 0.01 * moved


def test_multi_worker_needs_a_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match=r"needs \$TF_CONFIG"):
        strategy_for("multi_worker")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:1"]},
                                                "task": {"type": "worker", "index": 2}}))
    with pytest.raises(ValueError, match="task.index 2 is not one of the 2 workers"):
        strategy_for("multi_worker")


def test_two_workers_train_together_and_only_the_chief_writes_the_export(shared_data_dir, tmp_path):
    """``train --distribution=multi_worker`` as a cluster runs it: one command per worker, one export folder.

    Two epochs: the second refits on the ranker's targets, on every worker, before the chief alone
    trains the ranker on the towers as they were before it."""
    export_dir = tmp_path / "export"
    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    command = [sys.executable, "-m", "tfrs_pipeline.train", f"--data_dir={shared_data_dir / 'ml-1m'}",
               f"--export_dir={export_dir}", "--distribution=multi_worker", "--max_users=40", "--epochs=2",
               "--refit_epochs=1", "--ranking_epochs=1", "--max_length=16", "--embedding_dim=16", "--num_blocks=1",
               "--batch_size=32", "--ranking_candidates=50", "--top_k=20", "--verbose=0"]
    workers = []
    for index in range(2):
        tf_config = {"cluster": {"worker": [f"localhost:{port}" for port in ports]},
                     "task": {"type": "worker", "index": index}}
        workers.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env={**os.environ, "TF_CONFIG": json.dumps(tf_config),
                                             "CUDA_VISIBLE_DEVICES": ""}))
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs[1][-3000:] + outputs[0][-3000:]

    printed = re.search(r"worker 1 is not the chief: .*\(loss per epoch: ([^)]*)\)", outputs[1])
    assert printed, outputs[1][-3000:]
    assert "export version 1" in outputs[0] and "export version" not in outputs[1]
    # One run's outputs, written once: the chief's version 1 of every model, its run folder, nothing else.
    assert sorted(path.name for path in (export_dir / "recommender").iterdir()) == ["1"]
    assert sorted(path.name for path in (export_dir / "runs").iterdir()) == ["1"]
    metrics = json.loads((export_dir / "metrics.json").read_text())
    assert metrics["version"] == 1 and "evaluation" in metrics
    # One model, trained together: the non-chief's loss is the chief's, epoch by epoch, the refit's too.
    retrieval = metrics["training"]["retrieval"]
    assert retrieval["refit_epochs"] == [2]
    assert [float(loss) for loss in printed.group(1).split(", ")] == pytest.approx(retrieval["loss"], rel=1e-4)


def _train(distribution: str, data_dir: str) -> dict:
    """Trains the tiny retrieval model under ``distribution``; returns what the test compares."""
    import tensorflow as tf

    from tfrs_pipeline.data.dataset import load_dataset
    from tfrs_pipeline.data.sequence_examples import training_windows
    from tfrs_pipeline.data.split import leave_last_out, user_sequences
    from tfrs_pipeline.features.arrays import examples_as_tensors
    from tfrs_pipeline.models.item_tower import ItemTower
    from tfrs_pipeline.models.query_tower import QueryTower
    from tfrs_pipeline.models.retrieval import RetrievalModel
    from tfrs_pipeline.pipelines import common, two_stage

    inputs = two_stage.TwoStageInputs.from_data(load_dataset(data_dir, max_users=MAX_USERS))
    train, _ = leave_last_out(user_sequences(inputs.data.interactions))
    examples = training_windows(train.user_ids, train.item_ids, MAX_LENGTH)
    full_windows = np.flatnonzero((examples["target_item_ids"] != "").all(axis=1))
    full_windows = full_windows[:len(full_windows) // BATCH_SIZE * BATCH_SIZE]
    examples = {name: values[full_windows] for name, values in examples.items()}
    schema = inputs.data.schema.features

    tf.keras.utils.set_random_seed(0)
    strategy = strategy_for(distribution)
    with strategy.scope():  # variables are made on first use: that must happen in the scope too
        item_tower = ItemTower(list(inputs.catalog.item_ids), inputs.item_features, schema.item_features, 16)
        query_tower = QueryTower(item_tower, MAX_LENGTH, 16, schema.user_features, inputs.users.lookup(train.user_ids),
                                 num_blocks=1, num_heads=2, dropout=0.0)
        model = RetrievalModel(query_tower, inputs.catalog.counts(train.item_ids), num_negatives=None)
        model.compile(optimizer=tf.keras.optimizers.Adam(1e-2))
        initial_embeddings = item_tower.embed_catalog().numpy()
        all_examples = examples_as_tensors({**examples, **inputs.users.lookup(examples["user_id"])})
        losses = [float(model.compute_loss(all_examples))]
        for _ in range(EPOCHS):
            model.fit(common.training_dataset(examples, BATCH_SIZE, seed=0, user_features=inputs.users), epochs=1,
                      verbose=0)
            losses.append(float(model.compute_loss(all_examples)))
    return {"replicas": strategy.num_replicas_in_sync, "losses": losses,
            "initial_embeddings": initial_embeddings.tolist(),
            "embeddings": item_tower.embed_catalog().numpy().tolist()}


if __name__ == "__main__":
    import tensorflow as tf

    import tfrs_pipeline  # noqa: F401  (Keras 2)

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    print(json.dumps({distribution: _train(distribution, sys.argv[1]) for distribution in ("default", "mirrored")}))
