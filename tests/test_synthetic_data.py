"""The scale benchmarks' synthetic data: the own-data contract, seeded, with structure a model learns.

``bench/synthetic_data.py`` runs as its README command; its folder then goes through the two-stage
pipeline like any user's own data, and the trained model must beat the popularity ranking by a
wide margin without passing the ceiling the generator computed from its own process.
"""
import json
import subprocess
import sys

import pandas as pd
import pytest
from conftest import REPO_ROOT

from tfrs_pipeline.config import TwoStageConfig
from tfrs_pipeline.pipelines import two_stage

SIZE = ["--users=400", "--items=300", "--interactions=8000", "--oracle_users=400"]
TINY_RUN = dict(epochs=3, ranking_epochs=1, max_length=20, embedding_dim=16, batch_size=32, ranking_candidates=30,
                top_k=60, learning_rate_decay="none", num_blocks=1, verbose=0)


def _generate(folder, *flags):
    subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "synthetic_data.py"), f"--output_dir={folder}",
                    *SIZE, *flags], check=True, capture_output=True, cwd=REPO_ROOT)
    return json.loads((folder / "generator.json").read_text())


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic") / "data"
    return folder, _generate(folder)


def test_the_folder_is_the_own_data_contract_at_the_size_asked(synthetic):
    folder, summary = synthetic
    interactions = pd.read_csv(folder / "interactions.csv")
    assert list(interactions.columns) == ["user_id", "item_id", "timestamp"]
    assert len(interactions) == summary["interactions"] and abs(len(interactions) - 8000) < 800
    assert interactions["user_id"].nunique() == 400 and interactions.groupby("user_id").size().min() >= 3
    assert not interactions.duplicated(["user_id", "item_id"]).any()  # nobody takes an item twice
    assert interactions.groupby("user_id")["timestamp"].is_monotonic_increasing.all()
    assert list(pd.read_csv(folder / "items.csv").columns) == ["item_id", "title", "category", "price"]
    assert list(pd.read_csv(folder / "users.csv").columns) == ["user_id", "region", "age"]
    counts = interactions["item_id"].value_counts()
    assert counts.iloc[:30].sum() > 0.2 * len(interactions)  # the most used tenth of the items: twice its share


def test_the_same_seed_writes_the_same_files(synthetic, tmp_path):
    folder, _ = synthetic
    _generate(tmp_path / "again")
    for name in ("interactions.csv", "items.csv", "users.csv", "dataset.json"):
        assert (tmp_path / "again" / name).read_bytes() == (folder / name).read_bytes(), name


def test_a_model_learns_what_popularity_cannot_and_stays_below_the_ceiling(synthetic, tmp_path):
    folder, summary = synthetic
    metrics = two_stage.run(TwoStageConfig(data_dir=str(folder), export_dir=str(tmp_path / "export"), **TINY_RUN))
    hit_rates = {system: metrics["evaluation"][system]["hr@10"] for system in ("retrieval", "popularity")}
    ceiling = summary["ceiling"]
    assert ceiling["true_popularity_hr@10"]["mean"] < 0.3 < 0.6 < ceiling["optimal_hr@10"]["mean"]
    assert hit_rates["retrieval"] > 1.5 * hit_rates["popularity"], hit_rates
    assert hit_rates["retrieval"] < ceiling["optimal_hr@10"]["mean"], hit_rates
