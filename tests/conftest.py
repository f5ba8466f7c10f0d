"""Shared fixtures: where the test data lives.

Tests read the real data sets in ``../shared/data`` (never copies in this repository: MovieLens may
not be redistributed). ``TFRS_PIPELINE_TEST_DATA`` overrides the location.
"""
import os
import pathlib

import pytest

import tfrs_pipeline  # noqa: F401  (selects Keras 2 before any test imports TensorFlow)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data_dir() -> pathlib.Path:
    """The folder holding ml-1m/, ml-1m-sasrec/, diginetica/ and tmall/."""
    path = pathlib.Path(os.environ.get("TFRS_PIPELINE_TEST_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()
    if not (path / "ml-1m" / "ratings.dat").is_file():
        pytest.fail(f"test data not found at {path}: set TFRS_PIPELINE_TEST_DATA to the shared data folder")
    return path


# Two epochs of a few batches each: too short for a decaying learning rate to leave any learning.
# The second epoch refits on the ranker's targets (off by default), so the shared export covers the refit.
SMALL_RUN = dict(max_users=150, epochs=2, refit_epochs=1, ranking_epochs=1, max_length=50, embedding_dim=32,
                 batch_size=64,
                 ranking_candidates=100, top_k=100, learning_rate_decay="none", verbose=0)


@pytest.fixture(scope="session")
def small_export(shared_data_dir, tmp_path_factory):
    """A real two-stage run on the first 150 MovieLens users: (export_dir, metrics).

    Trained once per test session and shared: the serving, client and export tests all query the
    same real SavedModels a user would get from ``python -m tfrs_pipeline.train``.
    """
    from tfrs_pipeline.config import TwoStageConfig
    from tfrs_pipeline.pipelines import two_stage

    export_dir = tmp_path_factory.mktemp("export")
    config = TwoStageConfig(data_dir=str(shared_data_dir / "ml-1m"), export_dir=str(export_dir), **SMALL_RUN)
    metrics = two_stage.run(config)
    return export_dir, metrics
