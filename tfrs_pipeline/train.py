"""The command: ``python -m tfrs_pipeline.train --data_dir=PATH --export_dir=PATH``.

Trains, evaluates and exports the models of one task with good defaults; every flag is a field
of ``RunConfig``, which is written next to the run's outputs.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Sequence

import tfrs_pipeline  # noqa: F401  (selects Keras 2 before TensorFlow builds anything)
from tfrs_pipeline.config import DISTRIBUTIONS, HOLDOUTS, LEARNING_RATE_DECAYS, SESSION_DEFAULTS, TASKS, RunConfig
from tfrs_pipeline.data.errors import DataError

_HELP = {
    "task": "two_stage: MovieLens retrieval + ranking; session: next item in anonymous sessions (its own "
            "defaults: " + ", ".join(f"{name}={value}" for name, value in SESSION_DEFAULTS.items()) + ")",
    "data_dir": "data folder or zip (default: $TFRS_PIPELINE_DATA_DIR); 'tfds' downloads through TFDS",
    "export_dir": "receives <model>/<version>/ SavedModels, metrics.json and runs/<version>/",
    "serving_config": "TF Serving ModelServerConfig to update (default: <export_dir>/models.config)",
    "holdout": "test: each user's last item is held out and evaluated; none: train on everything",
    "session_format": "session task: auto, srgnn (train_sessions.txt + test.tsv) or events (CSV: session id, item id, "
                      "timestamp; see tfrs_pipeline/data/sessions.py)",
    "session_test_days": "session task, events form: sessions starting in the last this many days are the test set",
    "session_neighbours": "session task: training sessions (k) whose items session kNN adds to the transformer's "
                          "scores; 0: the transformer alone",
    "neighbour_recency_scale": "session task: older training sessions count less as neighbours, by exp(-newer "
                               "sessions / (this share of all)); 0 where sessions are not in time order",
    "neighbour_position_scale": "session task: a neighbour's items count less the further, in clicks, from the item "
                                "it shares with the session, by exp(-clicks / this); 0: all alike",
    "neighbour_validation_share": "session task: the most recent share of training sessions, held out of the "
                                  "transformer's training to choose the session-kNN weight",
    "max_users": "use only the users with the smallest ids (quick runs)",
    "num_negatives": "sampled-softmax negatives per batch (in-batch + uniform, logQ-corrected); unset or 0: the "
                     "whole catalog (exact; the two-stage default)",
    "learning_rate_decay": "retrieval and session training: cosine decays the learning rate to a twentieth over "
                           "the run; none keeps it constant",
    "user_id_embedding": "give the query tower a per-user embedding table",
    "top_k": "items returned by the retrieval export",
    "scann_target_recall": "tune ScaNN until its top-10 equals exact search for this share of users",
    "scann_num_leaves": "ScaNN partitions (default: tuned from the catalog size and the data)",
    "scann_leaves_to_search": "ScaNN partitions searched per query (default: tuned)",
    "scann_reordering_candidates": "ScaNN candidates re-scored exactly (default: tuned)",
    "examples_dir": "train retrieval on the TFRecords of python -m tfrs_pipeline.data.beam_pipeline "
                    "(made with this run's data, max_length, holdout, max_users)",
    "distribution": "tf.distribute strategy: mirrored over local devices; multi_worker reads $TF_CONFIG",
}


def _parser(task_defaults: dict | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tfrs_pipeline.train", description=__doc__.splitlines()[0])
    for field in dataclasses.fields(RunConfig):
        name = f"--{field.name}"
        default = (task_defaults or {}).get(field.name, field.default)
        help_text = _HELP.get(field.name, "") + (f" (default: {default})" if default is not None else "")
        if field.type == "bool":
            parser.add_argument(name, action=argparse.BooleanOptionalAction, default=default, help=help_text)
            continue
        kind = {"int": int, "float": float, "int | None": int}.get(field.type, str)
        choices = {"task": TASKS, "holdout": HOLDOUTS, "distribution": DISTRIBUTIONS,
                   "learning_rate_decay": LEARNING_RATE_DECAYS}.get(field.name)
        parser.add_argument(name, type=kind, default=default, choices=choices, help=help_text)
    return parser


def parse_config(argv: Sequence[str]) -> RunConfig:
    """The run's configuration from command-line flags; flags left out take the task's defaults."""
    task = _parser().parse_known_args(argv)[0].task
    values = vars(_parser(SESSION_DEFAULTS if task == "session" else None).parse_args(argv))
    if values["num_negatives"] == 0:
        values["num_negatives"] = None
    return RunConfig(**values)


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(sys.argv[1:] if argv is None else argv)
    try:
        if config.task == "session":
            from tfrs_pipeline.pipelines import session as pipeline
        else:
            from tfrs_pipeline.pipelines import two_stage as pipeline
        pipeline.run(config)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
