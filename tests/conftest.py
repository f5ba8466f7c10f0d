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
    path = pathlib.Path(os.environ.get("TFRS_PIPELINE_TEST_DATA", REPO_ROOT.parent / "shared" / "data"))
    if not (path / "ml-1m" / "ratings.dat").is_file():
        pytest.fail(f"test data not found at {path}: set TFRS_PIPELINE_TEST_DATA to the shared data folder")
    return path
