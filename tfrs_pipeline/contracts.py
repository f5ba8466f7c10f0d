"""What every side of the pipeline agrees on: feature schema types, signature and file names.

Data readers, models, the exporter, the server and the clients all import these names instead of
restating them, as TF Serving's clients and server share ``predict.proto``. The module imports
nothing from the project (and nothing heavy), so the serving side can depend on it freely.

An export describes itself in ``<export_dir>/schema.json`` (``ExportDescription``): which user
features the fresh-feature signatures take, of which kind, and which file maps item ids to titles.
Clients read it instead of knowing any data set's column names.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

# --- Feature schema ------------------------------------------------------------------------------

CATEGORICAL = "categorical"  # one string value per row ("" = missing)
MULTI_CATEGORICAL = "multi_categorical"  # a set of string values per row ("|" in files)
NUMERIC = "numeric"  # one float per row (NaN = missing)
TEXT = "text"  # free text, split into words
FEATURE_KINDS = (CATEGORICAL, MULTI_CATEGORICAL, NUMERIC, TEXT)
MULTI_VALUE_SEPARATOR = "|"
# What a table cell holds where a feature has no value (``InteractionData``'s convention).
MISSING_VALUES = {CATEGORICAL: "", MULTI_CATEGORICAL: (), NUMERIC: float("nan"), TEXT: ""}


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """One user or item feature: its column name (the signature's input name) and its kind."""

    name: str
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in FEATURE_KINDS:
            raise ValueError(f"feature {self.name!r}: kind must be one of {FEATURE_KINDS}, got {self.kind!r}")
        if self.name in RESERVED_INPUTS:
            raise ValueError(f"feature {self.name!r}: the name is reserved for the signatures' own inputs")


@dataclasses.dataclass(frozen=True)
class FeatureSchema:
    """The user and item features a model is built from, in a fixed order."""

    user_features: tuple[FeatureSpec, ...] = ()
    item_features: tuple[FeatureSpec, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {side: [dataclasses.asdict(spec) for spec in getattr(self, side)]
                for side in ("user_features", "item_features")}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> FeatureSchema:
        return cls(**{side: tuple(FeatureSpec(**spec) for spec in value.get(side, ()))
                      for side in ("user_features", "item_features")})


# --- Signatures (the wire contract of the SavedModels) ------------------------------------------

SERVING_SIGNATURE = "serving_default"
QUERY_FEATURES_SIGNATURE = "query_features"  # fresh user features and history instead of a user id
USER_ID_INPUT = "user_id"
HISTORY_INPUT = "history_item_ids"  # [batch, any] item ids, oldest first, "" padded
# [batch, any] int64 Unix seconds of each history item's interaction, aligned with HISTORY_INPUT (any value where
# it pads): taken by the fresh-feature signatures of exports whose query tower has a time bias
HISTORY_TIMESTAMPS_INPUT = "history_timestamps"
CANDIDATES_INPUT = "item_ids"  # ranking: [batch, N] candidate item ids
ITEM_ID_INPUT = "item_id"  # retrieval's embed_items function: [N] ids of items to embed with their features
SESSION_INPUT = "session_item_ids"
ITEM_IDS_OUTPUT = "item_ids"
SCORES_OUTPUT = "scores"
KNOWN_USER_OUTPUT = "known_user"  # user-id signatures of retrieval and recommender: [batch] the snapshot holds the user
RESERVED_INPUTS = (USER_ID_INPUT, HISTORY_INPUT, HISTORY_TIMESTAMPS_INPUT, CANDIDATES_INPUT, SESSION_INPUT,
                   ITEM_ID_INPUT)

# --- Served models and files of an export --------------------------------------------------------

RETRIEVAL_MODEL = "retrieval"
RETRIEVAL_BRUTE_FORCE_MODEL = "retrieval_brute_force"
RANKING_MODEL = "ranking"
RECOMMENDER_MODEL = "recommender"  # both stages in one graph: one Predict per recommendation
SESSION_MODEL = "session"
TWO_STAGE_MODELS = (RETRIEVAL_MODEL, RETRIEVAL_BRUTE_FORCE_MODEL, RANKING_MODEL, RECOMMENDER_MODEL)
STABLE_LABEL = "stable"
CANARY_LABEL = "canary"
SERVING_CONFIG_FILE = "models.config"
ITEMS_FILE = "items.tsv"  # item_id, title, popularity: most popular first
ITEMS_COLUMNS = ("item_id", "title", "popularity")
DESCRIPTION_FILE = "schema.json"
FEATURE_REPO_DIR = "feature_repo"  # the export's Feast repository (``features/store.py``)


@dataclasses.dataclass(frozen=True)
class ExportDescription:
    """What a client needs to call an export: its models, their signatures' feature inputs, the items file."""

    features: FeatureSchema
    models: tuple[str, ...] = TWO_STAGE_MODELS
    items_file: str = ITEMS_FILE
    title_feature: str | None = None  # the item feature the items file shows as a title (None: the id)
    history_timestamps: bool = False  # the fresh-feature signatures take HISTORY_TIMESTAMPS_INPUT

    def to_json(self) -> dict[str, Any]:
        """The description, with each model's signatures spelled out for readers other than our client."""
        fresh_inputs = [*(spec.name for spec in self.features.user_features), *self.history_inputs]
        retrieval = {SERVING_SIGNATURE: {"inputs": [USER_ID_INPUT],
                                         "outputs": [ITEM_IDS_OUTPUT, SCORES_OUTPUT, KNOWN_USER_OUTPUT]},
                     QUERY_FEATURES_SIGNATURE: {"inputs": fresh_inputs, "outputs": [ITEM_IDS_OUTPUT, SCORES_OUTPUT]}}
        ranking = {SERVING_SIGNATURE: {"inputs": [USER_ID_INPUT, CANDIDATES_INPUT], "outputs": [SCORES_OUTPUT]},
                   QUERY_FEATURES_SIGNATURE: {"inputs": [*fresh_inputs, CANDIDATES_INPUT], "outputs": [SCORES_OUTPUT]}}
        by_model = {RETRIEVAL_MODEL: retrieval, RETRIEVAL_BRUTE_FORCE_MODEL: retrieval, RANKING_MODEL: ranking,
                    RECOMMENDER_MODEL: retrieval}
        return {
            "features": self.features.to_json(),
            "models": list(self.models),
            "items_file": self.items_file,
            "title_feature": self.title_feature,
            "history_timestamps": self.history_timestamps,
            "signatures": {model: by_model[model] for model in self.models if model in by_model},
        }

    @classmethod
    def read(cls, path: str | os.PathLike) -> ExportDescription:
        with open(path, encoding="utf-8") as file:
            value = json.load(file)
        return cls(FeatureSchema.from_json(value["features"]), tuple(value["models"]), value["items_file"],
                   value.get("title_feature"), value.get("history_timestamps", False))

    @property
    def history_inputs(self) -> tuple[str, ...]:
        """The fresh-feature signatures' history inputs: the items, and their timestamps where the towers read time."""
        return (HISTORY_INPUT, HISTORY_TIMESTAMPS_INPUT) if self.history_timestamps else (HISTORY_INPUT,)
