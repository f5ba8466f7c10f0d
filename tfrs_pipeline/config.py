"""One configuration dataclass per task, written next to its outputs so every figure can be traced.

``TwoStageConfig()`` is exactly what ``python -m tfrs_pipeline.train`` runs and ``SessionConfig()``
what ``--task=session`` runs: each field's default and help text live in its declaration, and
``train`` builds its flags from these fields, so code, tests and the command line cannot drift
apart. A subclass changes a shared field's default by declaring it again.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, ClassVar

from tfrs_pipeline.atomic import write_text_atomically
from tfrs_pipeline.contracts import SERVING_CONFIG_FILE
from tfrs_pipeline.data.sessions import SESSION_FORMATS

HOLDOUTS = ("test", "none")
DISTRIBUTIONS = ("default", "mirrored", "multi_worker")  # tfrs_pipeline/distribute.py
LEARNING_RATE_DECAYS = ("cosine", "none")
# Retrieval's logit adjustment when it trains on the whole catalog (softmax_popularity_adjustment unset).
WHOLE_CATALOG_POPULARITY_ADJUSTMENT = 0.25


def _field(default: Any, help_text: str, choices: tuple | None = None, minimum: float | None = None) -> Any:
    """A dataclass field whose flag help, allowed values and lower bound sit beside its default."""
    metadata = {"help": help_text, "choices": choices, "minimum": minimum}
    return dataclasses.field(default=default, metadata={key: value for key, value in metadata.items()
                                                        if value is not None})


@dataclasses.dataclass
class TaskConfig:
    """The settings every task shares: data, export, the transformer, training, the index."""

    task: ClassVar[str]
    refused_flags: ClassVar[dict[str, str]] = {}  # flag -> why this task does not take it

    data_dir: str | None = _field(None, "data folder or zip (default: $TFRS_PIPELINE_DATA_DIR); "
                                        "'tfds' downloads through TFDS")
    export_dir: str = _field("export", "receives <model>/<version>/ SavedModels, metrics.json and runs/")
    serving_config: str | None = _field(None, "TF Serving ModelServerConfig to update "
                                              f"(default: <export_dir>/{SERVING_CONFIG_FILE})")
    holdout: str = _field("test", "test: hold out the last item (each user's, or the test sessions') and "
                                  "evaluate on it; none: train on everything", choices=HOLDOUTS)
    max_length: int = _field(200, "items of history (a user's, a session's) the transformer reads", minimum=1)
    embedding_dim: int = _field(64, "width of the item and query embeddings", minimum=1)
    num_blocks: int = _field(4, "transformer blocks", minimum=1)
    num_heads: int = _field(2, "attention heads per block (must divide embedding_dim)", minimum=1)
    dropout: float = _field(0.05, "dropout rate inside the transformer", minimum=0)
    relative_attention_bias: bool = _field(True, "add a learned bias per attention head and distance between two "
                                                 "history slots to the transformer's attention logits")
    num_negatives: int | None = _field(None, "sampled-softmax negatives per batch (in-batch + uniform, "
                                             "logQ-corrected); unset or 0: the whole catalog (exact)", minimum=0)
    batch_size: int = _field(32, "training examples per batch (for retrieval, windows of a user's history: on "
                                 "MovieLens-1M, 32 validated above 64 and 64 above 128, more updates over the "
                                 "same positions: docs/benchmarks.md)", minimum=1)
    learning_rate: float = _field(6e-3, "Adam's learning rate after the warm-up")
    learning_rate_decay: str = _field("cosine", "cosine decays the learning rate to a twentieth over the run; "
                                                "none keeps it constant", choices=LEARNING_RATE_DECAYS)
    learning_rate_warmup_epochs: float = _field(1.0, "epochs over which the learning rate first rises linearly "
                                                     "from a tenth of learning_rate to it; 0: none", minimum=0)
    epochs: int = _field(12, "training epochs", minimum=1)
    top_k: int = _field(100, "items returned by the exported model", minimum=1)
    scann_target_recall: float = _field(0.99, "tune ScaNN until its top-10 equals exact search for this "
                                              "share of queries")
    seed: int = _field(0, "random seed of the whole run")
    verbose: int = _field(1, "Keras progress output: 0 silent, 1 progress bar, 2 a line per epoch")

    def __post_init__(self) -> None:
        if self.num_negatives == 0:
            self.num_negatives = None  # the flag's way of saying "the whole catalog"
        for field in dataclasses.fields(self):
            _check_field(field, getattr(self, field.name))
        if self.embedding_dim % self.num_heads:
            raise ValueError(f"embedding_dim ({self.embedding_dim}) must be a multiple of num_heads ({self.num_heads})")

    @property
    def serving_config_path(self) -> pathlib.Path:
        """The TF Serving model config: given, or ``models.config`` next to the export."""
        return pathlib.Path(self.serving_config or os.path.join(self.export_dir, SERVING_CONFIG_FILE))

    def write(self, path: str | os.PathLike) -> None:
        """Writes the task and every field as JSON (atomically), so a run's figures name their settings."""
        write_text_atomically(path, json.dumps({"task": self.task, **dataclasses.asdict(self)}, indent=2) + "\n")


def _check_field(field: dataclasses.Field, value: Any) -> None:
    """Raises ValueError naming the field when ``value`` breaks its declared choices or lower bound."""
    choices, minimum = field.metadata.get("choices"), field.metadata.get("minimum")
    if choices is not None and value not in choices:
        raise ValueError(f"{field.name} must be one of {choices}, got {value!r}")
    if minimum is not None and value is not None and value < minimum:
        raise ValueError(f"{field.name} must be at least {minimum}, got {value}")


def _redefault(name: str, default: Any) -> Any:
    """The shared field ``name`` with another default; its help and checks stay those of ``TaskConfig``."""
    return dataclasses.field(default=default, metadata=TaskConfig.__dataclass_fields__[name].metadata)


@dataclasses.dataclass
class TwoStageConfig(TaskConfig):
    """Retrieval + ranking on user histories. Defaults are the benchmarked MovieLens-1M settings."""

    task: ClassVar[str] = "two_stage"

    max_users: int | None = _field(None, "use only the users with the smallest ids (quick runs)", minimum=1)
    user_id_embedding: bool = _field(False, "give the query tower a per-user embedding table")
    time_attention_bias: bool = _field(False, "add a learned bias per attention head and (log2) bucket of the time "
                                              "between two history items to the query transformer's attention "
                                              "logits; fresh-feature requests then send the history's timestamps "
                                              "(off: on MovieLens-1M, whose users rate in one sitting, it lifted "
                                              "retrieval's NDCG@10, not the two stages: docs/benchmarks.md)")
    new_users_share: float = _field(0.0, "share of the tested users kept out of all training and export, and "
                                         "evaluated through the fresh-feature path as users who arrive after "
                                         "training (cold start); 0: none", minimum=0)
    softmax_excludes_history: bool = _field(True, "leave the items each training position has already read out "
                                                  "of its softmax: evaluation and serving never recommend a "
                                                  "user's own items, so training need not push them down "
                                                  "(on MovieLens-1M, validation HR@10 +0.0095: docs/benchmarks.md)")
    softmax_popularity_adjustment: float | None = _field(None, "adds this times log(1 + the item's training "
                                                              "count) to each item's training logit (logit "
                                                              "adjustment), so that the towers' own scores, "
                                                              "which serve, carry less of the items' "
                                                              "popularity; whole-catalog softmax only (default: "
                                                              f"{WHOLE_CATALOG_POPULARITY_ADJUSTMENT}, chosen on "
                                                              "MovieLens-1M validation lists with the ranker's "
                                                              "penalty, docs/benchmarks.md; 0 with num_negatives)",
                                                         minimum=0)
    validation_every: int = _field(4, "retrieval's full-catalog validation (HR@10, NDCG@10, loss in the logs and "
                                      "report) runs after every this many epochs and after the last; 1: every "
                                      "epoch", minimum=1)
    refit_epochs: int = _field(0, "the last this many of retrieval's epochs (at most all but the first) train "
                                  "on the ranker's targets too, each user's most recent history item; the "
                                  "ranker learns from the towers as they were before, then reads the refit "
                                  "ones; 0: retrieval never trains on them (on MovieLens-1M, 4 lifted retrieval and "
                                  "not the two stages: docs/benchmarks.md)", minimum=0)
    ranking_candidates: int = _field(200, "retrieved items the ranking model re-scores", minimum=1)
    evaluation_users: int = _field(10_000, "tested users the evaluation (and each epoch's validation) ranks the "
                                           "whole catalog for: a seeded sample when there are more, its size and "
                                           "HR@10 interval in metrics.json; 0: every user", minimum=0)
    ranking_users: int = _field(50_000, "users whose retrieved candidate lists train the ranker: a seeded "
                                        "sample when there are more; 0: every user", minimum=0)
    recommender_index: str = _field("scann", "the index of the one-call recommender model: scann, or brute_force "
                                             "(no custom ops: loads in stock TF Serving)",
                                    choices=("scann", "brute_force"))
    ranking_epochs: int = _field(5, "ranking model training epochs", minimum=1)
    ranking_batch_size: int = _field(32, "users per ranking training batch", minimum=1)
    ranking_rules_per_item: int | None = _field(None, "each item's strongest item-to-item rules (forward and "
                                                    "backward, from the training histories) the ranker looks "
                                                    "candidates up in; 0: no rules (default: 1,000, fewer "
                                                    "beyond 5,000 catalog items: at most 5M per table)",
                                                    minimum=0)
    ranking_popularity_penalty: float = _field(5.5, "subtracted from the ranker's answered scores per unit of the "
                                                    "candidate's log-popularity, scaled to 0..1 over the catalog "
                                                    "and raised to ranking_popularity_penalty_exponent: more "
                                                    "breadth (coverage, less popular items) for some accuracy; "
                                                    "0: the learned order (default: chosen on validation "
                                                    "lists, docs/benchmarks.md)",
                                               minimum=0)
    ranking_popularity_penalty_exponent: float = _field(0.25, "the penalty's unit is the scaled log-popularity "
                                                              "raised to this power (> 0): below 1 it lifts the "
                                                              "least popular items more than it pushes the most "
                                                              "popular down (default: chosen on validation "
                                                              "lists, docs/benchmarks.md)")
    ranking_recent_items: int = _field(10, "the user's most recent items whose rules the ranker reads, one "
                                           "feature each", minimum=1)
    ranking_compared_items: int = _field(50, "the user's most recent items each candidate is compared with "
                                             "in retrieval's embedding space (its largest and its mean dot "
                                             "product with them); 0: none", minimum=0)
    scann_num_leaves: int | None = _field(None, "ScaNN partitions (default: tuned from the catalog size and "
                                                "the data)", minimum=1)
    scann_leaves_to_search: int | None = _field(None, "ScaNN partitions searched per query (default: tuned)",
                                                minimum=1)
    scann_reordering_candidates: int | None = _field(None, "ScaNN candidates re-scored exactly (default: tuned)",
                                                     minimum=1)
    # Scale-out: preprocessed examples (tfrs_pipeline/data/beam_pipeline.py) and tf.distribute.
    examples_dir: str | None = _field(None, "train retrieval on the TFRecords of python -m "
                                            "tfrs_pipeline.data.beam_pipeline (made with this run's data, "
                                            "max_length, holdout, max_users)")
    distribution: str = _field("default", "tf.distribute strategy: mirrored over local devices; multi_worker "
                                          "reads $TF_CONFIG", choices=DISTRIBUTIONS)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.new_users_share < 1:
            raise ValueError(f"new_users_share must be in [0, 1), got {self.new_users_share}")
        if not self.ranking_popularity_penalty_exponent > 0:
            raise ValueError("ranking_popularity_penalty_exponent must be above 0 (at 0 every item pays the same "
                             f"penalty), got {self.ranking_popularity_penalty_exponent}")
        if self.softmax_popularity_adjustment and self.num_negatives is not None:
            raise ValueError("softmax_popularity_adjustment adjusts the whole-catalog softmax: it needs "
                             f"num_negatives unset or 0, got {self.num_negatives}")
        if self.softmax_popularity_adjustment is None:
            whole_catalog = self.num_negatives is None
            self.softmax_popularity_adjustment = WHOLE_CATALOG_POPULARITY_ADJUSTMENT if whole_catalog else 0.0

    @property
    def retrieval_refit_epochs(self) -> int:
        """``refit_epochs``, leaving the first epoch to train before the ranker's targets are seen."""
        return min(self.refit_epochs, self.epochs - 1)

    @property
    def scann_overrides(self) -> dict:
        """The ScaNN settings given explicitly; the others are tuned from the data."""
        given = {"num_leaves": self.scann_num_leaves, "num_leaves_to_search": self.scann_leaves_to_search,
                 "num_reordering_candidates": self.scann_reordering_candidates}
        return {name: value for name, value in given.items() if value is not None}


@dataclasses.dataclass
class SessionConfig(TaskConfig):
    """The next item of anonymous sessions: transformer + session kNN.

    Its defaults are the session benchmarks' (docs/benchmarks.md): session catalogs hold tens of
    thousands of items and sessions a few clicks, so a short window, sampled negatives (the
    whole-catalog softmax costs several times more per epoch), larger batches and two blocks.
    """

    task: ClassVar[str] = "session"
    # Flags of the two-stage task this one does not take, and why: a usage error names the reason
    # (an argparse "unrecognized arguments" would not, and silently ignoring them would train something else).
    refused_flags: ClassVar[dict[str, str]] = {
        "examples_dir": "the Beam preprocessing builds the two-stage task's training windows; the session "
                        "task reads its sessions from --data_dir",
        "distribution": "the session model trains on one device (tf.distribute is built for the two-stage "
                        "task's retrieval model only)",
    }

    data_dir: str | None = _field(None, "an SR-GNN benchmark folder (train_sessions.txt + test.tsv), or a CSV "
                                        "of raw events (session id, item id, timestamp) or its folder")
    max_length: int = _redefault("max_length", 50)
    num_blocks: int = _redefault("num_blocks", 2)
    dropout: float = _redefault("dropout", 0.2)
    relative_attention_bias: bool = _redefault("relative_attention_bias", False)
    num_negatives: int | None = _redefault("num_negatives", 2048)
    batch_size: int = _redefault("batch_size", 256)
    learning_rate: float = _redefault("learning_rate", 2e-3)
    learning_rate_warmup_epochs: float = _redefault("learning_rate_warmup_epochs", 0.0)
    epochs: int = _redefault("epochs", 10)
    session_format: str = _field("auto", "auto, srgnn (train_sessions.txt + test.tsv) or events (CSV: session "
                                         "id, item id, timestamp; see tfrs_pipeline/data/sessions.py)",
                                 choices=SESSION_FORMATS)
    session_test_days: float = _field(7.0, "events form: sessions starting in the last this many days are the "
                                           "test set", minimum=0)
    session_neighbours: int = _field(100, "training sessions (k) whose items session kNN adds to the "
                                          "transformer's scores; 0: the transformer alone", minimum=0)
    # Chosen on the most recent 5% of DIGINETICA's training sessions.
    neighbour_recency_scale: float = _field(0.5, "older training sessions count less as neighbours, by "
                                                 "exp(-newer sessions / (this share of all)); 0 where sessions "
                                                 "are not in time order", minimum=0)
    # In clicks; chosen there too (2: worse, 8: the same).
    neighbour_position_scale: float = _field(4.0, "a neighbour's items count less the further, in clicks, from "
                                                  "the item it shares with the session, by exp(-clicks / this); "
                                                  "0: all alike", minimum=0)
    neighbour_validation_share: float = _field(0.02, "the most recent share of training sessions, held out of "
                                                     "the transformer's training to choose the session-kNN "
                                                     "weight", minimum=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.neighbour_validation_share < 1:
            raise ValueError(f"neighbour_validation_share must be in [0, 1), got {self.neighbour_validation_share}")


TASK_CONFIGS = {config.task: config for config in (TwoStageConfig, SessionConfig)}
TASKS = tuple(TASK_CONFIGS)


def config_for_task(task: str) -> type[TaskConfig]:
    """The configuration class of ``task`` (``two_stage`` or ``session``)."""
    if task not in TASK_CONFIGS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return TASK_CONFIGS[task]
