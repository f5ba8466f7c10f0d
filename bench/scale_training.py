"""Training from the TFRecords and the export's user snapshot at full size, bounded to what one machine can run.

    python bench/scale_training.py --data_dir=/work/scale/scale_100k/data \
        --examples_dir=/work/scale/scale_100k/examples --steps=300 --snapshot_users=10000,40000 \
        --out=docs/scale_figures/scale_100k_training.json

At 100K items, 1M users and 20M interactions the whole `train` command does not fit this machine's
time: an epoch is over an hour of both cores, and the evaluation, the ranker's candidate lists and
the export each run the query tower over every user (the first two also score every user against
every item). This benchmark runs the command's own code as far as it can at full size, then stops:

  1. load and split the data (`TwoStageInputs`, the run's split);
  2. ``two_stage.build_retrieval`` with ``--examples_dir``: the TFRecords read back, the model built
     and compiled (the whole catalog, every user's features);
  3. ``--steps`` batches of the run's training dataset with the sampled softmax: targets (interactions)
     trained per wall second and per CPU second of this process, and the loss before and after;
  4. the export's user snapshot (``UserSnapshot`` and the ranking model's precomputed user context,
     as ``_export`` builds them) for each of ``--snapshot_users`` users: seconds, CPU seconds and
     resident memory it adds, and the bytes of its tensors; their growth per user, extrapolated to
     every user of the data set, is reported as an extrapolation.

Each step records wall and CPU seconds, the process's resident memory after it and the load
average; the peak resident memory is the process's own (``ru_maxrss``).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import sys
import time

import numpy as np
import psutil

import tfrs_pipeline  # noqa: F401  (Keras 2 first)

# isort: split
import tensorflow as tf

from tfrs_pipeline import scoring
from tfrs_pipeline.config import TwoStageConfig
from tfrs_pipeline.data.dataset import load_dataset
from tfrs_pipeline.data.split import leave_last_out
from tfrs_pipeline.export import savedmodels
from tfrs_pipeline.models.ranking import RankingModel
from tfrs_pipeline.pipelines import two_stage
from tfrs_pipeline.pipelines.common import training_dataset

PROCESS = psutil.Process()


class Step:
    """Wall seconds, CPU seconds of this process, resident memory after, load average: one measured step."""

    def __init__(self, figures: dict, name: str):
        self.figures, self.name = figures, name

    def __enter__(self):
        print(f"[scale_training] {self.name} ...", file=sys.stderr, flush=True)
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *error):
        if error[0] is None:
            self.figures[self.name] = {
                "seconds": round(time.perf_counter() - self.wall, 1),
                "cpu_seconds": round(time.process_time() - self.cpu, 1),
                "rss_after_mb": round(PROCESS.memory_info().rss / 2**20), "load_average": round(os.getloadavg()[0], 2),
                **self.figures.get(self.name, {})}
            print(f"[scale_training] {self.name}: {self.figures[self.name]}", file=sys.stderr, flush=True)


def tensor_bytes(tensors) -> int:
    """Bytes of the values of ``tensors`` (strings: their characters plus TensorFlow's 24-byte tstring)."""
    total = 0
    for tensor in tensors:
        if isinstance(tensor, tf.RaggedTensor):
            tensor = tensor.flat_values
        if tensor.dtype == tf.string:
            total += int(tf.reduce_sum(tf.strings.length(tensor))) + 24 * int(tf.size(tensor))
        else:
            total += int(tf.size(tensor)) * tensor.dtype.size
    return total


def measure_snapshot(config: TwoStageConfig, inputs: two_stage.TwoStageInputs, history, ranking_model: RankingModel,
                     catalog_embeddings: tf.Variable, users: int) -> dict:
    """The export's snapshot of the first ``users`` users of ``history``, as ``two_stage._export`` builds it."""
    rows = np.arange(min(users, len(history.user_ids)))
    sequences = history.select(rows)
    rss_before, wall, cpu = PROCESS.memory_info().rss, time.perf_counter(), time.process_time()
    snapshot = savedmodels.UserSnapshot(inputs.users, sequences.user_ids, sequences.item_ids,
                                        scoring.history_timestamps(ranking_model.query_tower, sequences),
                                        ranking_model.query_tower.max_length, inputs.catalog.item_ids)
    built_s = time.perf_counter() - wall
    user_context = snapshot.precompute(
        lambda features: savedmodels.stored_user_context(ranking_model, features, catalog_embeddings))
    figures = {"users": len(rows), "snapshot_seconds": round(built_s, 1),
               "context_seconds": round(time.perf_counter() - wall - built_s, 1),
               "cpu_seconds": round(time.process_time() - cpu, 1),
               "rss_added_mb": round((PROCESS.memory_info().rss - rss_before) / 2**20),
               # What the export holds only while it precomputes: every user's id and features (the
               # histories are numpy lists, padded a batch at a time).
               "export_only_tensor_mb": round(tensor_bytes([snapshot._user_ids, *snapshot._features.values()])
                                              / 2**20, 1),
               # What the served models keep per user besides the id lookup: rated items and the precomputed tables.
               "rated_tensor_mb": round(tensor_bytes([snapshot._rated]) / 2**20, 1),
               "context_tensor_mb": round(tensor_bytes(user_context.values()) / 2**20, 1),
               "context_tables": {name: list(table.shape) for name, table in user_context.items()}}
    print(f"[scale_training] snapshot of {len(rows)} users: {figures}", file=sys.stderr, flush=True)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/scale_training.py", description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True, help="the own-data folder (bench/synthetic_data.py)")
    parser.add_argument("--examples_dir", required=True,
                        help="its TFRecords (python -m tfrs_pipeline.data.beam_pipeline)")
    parser.add_argument("--steps", type=int, default=300, help="training batches to time")
    parser.add_argument("--warmup_steps", type=int, default=20, help="batches run first and not timed (tracing)")
    parser.add_argument("--num_negatives", type=int, default=2048, help="as train --num_negatives")
    parser.add_argument("--batch_size", type=int, default=128,
                        help="as train --batch_size (the figures in docs/benchmarks.md used 128)")
    parser.add_argument("--snapshot_users", default="10000,40000", help="comma-separated user counts of the snapshot")
    parser.add_argument("--out", required=True, help="JSON file of the figures")
    flags = parser.parse_args(argv)
    config = TwoStageConfig(data_dir=flags.data_dir, examples_dir=flags.examples_dir, epochs=1,
                            num_negatives=flags.num_negatives, batch_size=flags.batch_size, verbose=0)
    tf.keras.utils.set_random_seed(config.seed)
    figures: dict = {"config": {"steps": flags.steps, "batch_size": config.batch_size,
                                "num_negatives": config.num_negatives, "max_length": config.max_length,
                                "embedding_dim": config.embedding_dim, "num_blocks": config.num_blocks},
                     "machine": {"cpu_count": os.cpu_count(),
                                 "memory_gb": round(psutil.virtual_memory().total / 2**30)},
                     "load_average_before": round(os.getloadavg()[0], 2)}

    with Step(figures, "load and split"):
        inputs = two_stage.TwoStageInputs.from_data(load_dataset(config.data_dir))
        split, _ = two_stage._split(config, inputs.data)
        retrieval_train, _ = leave_last_out(split.history)
        popularity = inputs.catalog.counts(retrieval_train.item_ids)
    figures["size"] = {"users": len(split.history.user_ids), "items": len(inputs.catalog),
                       "interactions": int(len(inputs.data.interactions))}
    with Step(figures, "read the TFRecords and build retrieval"):
        model, examples = two_stage.build_retrieval(config, inputs, retrieval_train, popularity)
    windows = len(examples["user_id"])
    targets_per_epoch = int((examples["target_item_ids"] != "").sum())
    figures["epoch"] = {"windows": windows, "targets": targets_per_epoch,
                        "steps": -(-windows // config.batch_size)}
    batches = iter(training_dataset(examples, config.batch_size, config.seed, user_features=inputs.users))
    # What Keras's fit runs per batch: the model's train_step, compiled (one trace per batch width).
    train_step = tf.function(model.train_step, reduce_retracing=True)

    with Step(figures, "warm-up batches"):
        for _ in range(flags.warmup_steps):
            train_step(next(batches))
    trained_targets, losses = 0, []
    with Step(figures, "timed training batches") as step:
        for _ in range(flags.steps):
            batch = next(batches)
            trained_targets += int(tf.reduce_sum(tf.cast(batch["target_item_ids"] != "", tf.int32)))
            losses.append(float(train_step(batch)["loss"]))
    timed = figures["timed training batches"]
    timed.update({"batches": flags.steps, "targets": trained_targets,
                  "targets_per_second": round(trained_targets / timed["seconds"]),
                  "targets_per_cpu_second": round(trained_targets / timed["cpu_seconds"]),
                  "loss_first_10": round(float(np.mean(losses[:10])), 3),
                  "loss_last_10": round(float(np.mean(losses[-10:])), 3)})
    figures["epoch"]["extrapolated_epoch_hours_at_this_rate"] = round(
        targets_per_epoch / timed["targets_per_second"] / 3600, 2)
    del step, batches, examples

    with Step(figures, "ranking model and catalog embeddings"):
        ranking_model = RankingModel(model.query_tower, popularity, inputs.item_categories)
        catalog_embeddings = tf.Variable(model.query_tower.item_tower.embed_catalog(), trainable=False)
    snapshots = [measure_snapshot(config, inputs, split.history, ranking_model, catalog_embeddings, int(users))
                 for users in flags.snapshot_users.split(",")]
    figures["snapshot"] = snapshots
    if len(snapshots) > 1:
        first, last = snapshots[0], snapshots[-1]
        added = last["users"] - first["users"]
        all_users = figures["size"]["users"]

        def per_user(name: str) -> float:
            return (last[name] - first[name]) / added

        figures["snapshot_extrapolated_to_all_users"] = {
            "users": all_users, "note": "linear in users from the two measured snapshots above; not measured",
            **{name: round(last[name] + per_user(name) * (all_users - last["users"]), 1)
               for name in ("context_seconds", "cpu_seconds", "export_only_tensor_mb", "rated_tensor_mb",
                            "context_tensor_mb")}}
    figures["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    pathlib.Path(flags.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(flags.out).write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
