"""Where a run's outputs go: the run folder beside the export, and the names of the files in it.

The pipelines write these files and the report (and notebooks, and people) read them, so their
names live here rather than in either: ``report.py`` then needs no pipeline, and a pipeline no
report internals. A run of version ``v`` keeps its settings and results in
``<export_dir>/runs/<v>/`` (two-stage) or ``<export_dir>/runs/<model>/<v>/`` (a task whose versions
are numbered apart, such as ``session``), and the latest run's metrics are copied to the export's
root, where a deployment looks first.
"""
from __future__ import annotations

import os
import pathlib
from typing import TYPE_CHECKING, Any

from tfrs_pipeline.atomic import write_json_atomically

if TYPE_CHECKING:
    from tfrs_pipeline.config import TaskConfig

RUNS_FOLDER = "runs"
CONFIG_FILE = "config.json"  # the task and every field of its config
METRICS_FILE = "metrics.json"  # training histories, evaluation, index settings
REPORT_FILE = "report.html"
EVALUATION_DETAILS = "evaluation_details.npz"  # per-user ranks and lists, for the report's plots
INDEX_EMBEDDINGS = "index_embeddings.npz"  # the catalog and query vectors the index was built on
TENSORBOARD_FOLDER = "tensorboard"  # one subfolder per trained model
VALIDATION_EPOCHS = "val_epochs"  # in a model's training history: the epochs (1-based) its val_* metrics follow
REFIT_EPOCHS = "refit_epochs"  # in retrieval's history: the epochs (1-based) that trained on the ranker's targets


def run_dir(export_dir: str | os.PathLike, version: int, model: str | None = None) -> pathlib.Path:
    """The run folder of ``version``: ``runs/<version>/``, or ``runs/<model>/<version>/`` for a separate model."""
    runs = pathlib.Path(export_dir) / RUNS_FOLDER
    return (runs / model if model else runs) / str(version)


def start_run(export_dir: str | os.PathLike, version: int, config: TaskConfig,
              model: str | None = None) -> pathlib.Path:
    """Makes the run folder and writes the config first, so even a run that fails says what it tried."""
    folder = run_dir(export_dir, version, model)
    folder.mkdir(parents=True, exist_ok=True)
    config.write(folder / CONFIG_FILE)
    return folder


def latest_metrics_path(export_dir: str | os.PathLike, model: str | None = None) -> pathlib.Path:
    """The export's copy of the latest run's metrics: ``metrics.json``, or ``<model>_metrics.json``."""
    return pathlib.Path(export_dir) / (f"{model}_{METRICS_FILE}" if model else METRICS_FILE)


def write_metrics(export_dir: str | os.PathLike, folder: pathlib.Path, metrics: dict[str, Any],
                  model: str | None = None) -> None:
    """Writes ``metrics`` into the run folder and, last, over the export's latest copy (both atomically)."""
    write_json_atomically(folder / METRICS_FILE, metrics)
    write_json_atomically(latest_metrics_path(export_dir, model), metrics)


def tensorboard_dir(folder: pathlib.Path, model: str) -> pathlib.Path:
    """Where TensorBoard logs of ``model``'s training go inside the run folder."""
    return folder / TENSORBOARD_FOLDER / model
