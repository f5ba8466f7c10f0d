"""One configuration object per run, written next to its outputs so every figure can be traced."""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib

HOLDOUTS = ("test", "none")
TASKS = ("two_stage", "session")
DISTRIBUTIONS = ("default", "mirrored", "multi_worker")  # tfrs_pipeline/distribute.py
LEARNING_RATE_DECAYS = ("cosine", "none")
# Where ``train --task=session`` starts instead of the MovieLens defaults below: session catalogs
# hold tens of thousands of items and sessions a few clicks, so a short window, sampled negatives
# (the whole-catalog softmax costs several times more per epoch) and larger batches. These are
# the settings of the session benchmarks (docs/benchmarks.md), two transformer blocks among them.
SESSION_DEFAULTS = {"max_length": 50, "num_negatives": 2048, "batch_size": 256, "learning_rate": 2e-3,
                    "epochs": 10, "dropout": 0.2, "num_blocks": 2}


@dataclasses.dataclass
class RunConfig:
    """Everything that decides what a run produces. Defaults are the benchmarked MovieLens settings.

    The command line starts the session task from ``SESSION_DEFAULTS`` instead; code that builds a
    ``RunConfig`` for the session task passes them itself.
    """

    task: str = "two_stage"
    data_dir: str | None = None
    export_dir: str = "export"
    serving_config: str | None = None
    holdout: str = "test"
    session_format: str = "auto"
    session_test_days: float = 7.0
    session_neighbours: int = 100
    neighbour_recency_scale: float = 0.5  # chosen on the most recent 5% of DIGINETICA's training sessions
    neighbour_position_scale: float = 4.0  # clicks; chosen there too (2: worse, 8: the same)
    neighbour_validation_share: float = 0.02
    max_users: int | None = None
    max_length: int = 200
    embedding_dim: int = 64
    num_blocks: int = 4
    num_heads: int = 2
    dropout: float = 0.05
    user_id_embedding: bool = False
    num_negatives: int | None = None
    batch_size: int = 128
    learning_rate: float = 4e-3
    learning_rate_decay: str = "cosine"
    epochs: int = 17
    ranking_candidates: int = 200
    ranking_epochs: int = 5
    ranking_batch_size: int = 32
    top_k: int = 100
    scann_target_recall: float = 0.99
    scann_num_leaves: int | None = None
    scann_leaves_to_search: int | None = None
    scann_reordering_candidates: int | None = None
    seed: int = 0
    verbose: int = 1
    # Scale-out: preprocessed examples (tfrs_pipeline/data/beam_pipeline.py) and tf.distribute.
    examples_dir: str | None = None
    distribution: str = "default"

    def __post_init__(self) -> None:
        if self.holdout not in HOLDOUTS:
            raise ValueError(f"holdout must be one of {HOLDOUTS}, got {self.holdout!r}")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.learning_rate_decay not in LEARNING_RATE_DECAYS:
            raise ValueError(f"learning_rate_decay must be one of {LEARNING_RATE_DECAYS}, "
                             f"got {self.learning_rate_decay!r}")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {self.distribution!r}")
        for name in ("max_length", "embedding_dim", "batch_size", "epochs", "ranking_candidates", "top_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.session_neighbours < 0:
            raise ValueError(f"session_neighbours must be 0 (off) or more, got {self.session_neighbours}")
        if self.neighbour_recency_scale < 0:
            raise ValueError(f"neighbour_recency_scale must be 0 (off) or more, got {self.neighbour_recency_scale}")
        if self.neighbour_position_scale < 0:
            raise ValueError(f"neighbour_position_scale must be 0 (off) or more, got {self.neighbour_position_scale}")
        if not 0 <= self.neighbour_validation_share < 1:
            raise ValueError(f"neighbour_validation_share must be in [0, 1), got {self.neighbour_validation_share}")
        if self.embedding_dim % self.num_heads:
            raise ValueError(f"embedding_dim ({self.embedding_dim}) must be a multiple of num_heads ({self.num_heads})")

    @property
    def scann_overrides(self) -> dict:
        """The ScaNN settings given explicitly; the others are tuned from the data."""
        given = {"num_leaves": self.scann_num_leaves, "num_leaves_to_search": self.scann_leaves_to_search,
                 "num_reordering_candidates": self.scann_reordering_candidates}
        return {name: value for name, value in given.items() if value is not None}

    @property
    def serving_config_path(self) -> pathlib.Path:
        """The TF Serving model config: given, or ``models.config`` next to the export."""
        return pathlib.Path(self.serving_config or os.path.join(self.export_dir, "models.config"))

    def write(self, path: str | os.PathLike) -> None:
        pathlib.Path(path).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")
