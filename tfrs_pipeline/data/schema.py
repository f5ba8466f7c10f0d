"""DatasetSchema: what a data set's tables hold and how its interactions are split.

Convention first, configuration when needed: the reader infers each feature's kind from its values
(``infer_feature_kind``) and an optional ``dataset.yaml`` / ``dataset.json`` beside the files
overrides any of it. The schema travels with the tables (``InteractionData.schema``), so models,
exports and clients are built from it and never from a data set's column names.
"""
from __future__ import annotations

import dataclasses

from tfrs_pipeline.contracts import FeatureSchema

LEAVE_LAST_OUT = "leave_last_out"  # each user's last interaction (ties: file order) is the test item
TIME_CUT = "time_cut"  # interactions at or after a global time are the test period
SPLIT_KINDS = (LEAVE_LAST_OUT, TIME_CUT)


@dataclasses.dataclass(frozen=True)
class SplitRule:
    """How the held-out test interactions are chosen.

    Attributes:
      kind: ``leave_last_out`` or ``time_cut``.
      test_start: ``time_cut`` only: Unix seconds where the test period starts; None means the time
        that leaves ``test_share`` of the interactions after it.
      test_share: ``time_cut`` only, when ``test_start`` is None.
    """

    kind: str = LEAVE_LAST_OUT
    test_start: int | None = None
    test_share: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in SPLIT_KINDS:
            raise ValueError(f"split kind must be one of {SPLIT_KINDS}, got {self.kind!r}")
        if not 0 < self.test_share < 1:
            raise ValueError(f"split test_share must be in (0, 1), got {self.test_share}")


@dataclasses.dataclass(frozen=True)
class DatasetSchema:
    """The features of a data set, the column shown as an item's title, and its split rule.

    Attributes:
      features: user and item features (names are column names of ``users`` / ``items``).
      title_feature: the ``items`` column shown to people as an item's name, or None (the id is shown).
      split: how the test interactions are chosen.
    """

    features: FeatureSchema = FeatureSchema()
    title_feature: str | None = None
    split: SplitRule = SplitRule()
