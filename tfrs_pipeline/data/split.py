"""Per-user chronological sequences, and the splits that hold out what a user did next.

Sequential recommenders (and the standard ML-1M benchmark protocol) train on each user's history
and evaluate on what the user did next: the last rating is the test target, the one before it the
validation target. Anything the model sees during training must therefore come strictly before the
target in time; ties in timestamp (ML-1M has many, to the second) are broken by file order, the
only order the publisher gives, so the split is the same on every run.

A data set's ``SplitRule`` chooses the test items: each user's last item (``leave_last_out``, the
sequential benchmarks' protocol), or everything at or after one moment (``time_cut``, what a
deployment sees: the model trained up to a day answers the days after it).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from tfrs_pipeline.data.schema import LEAVE_LAST_OUT, SplitRule


@dataclasses.dataclass(frozen=True)
class UserSequences:
    """Each user's ratings in chronological order (ties: file order).

    Attributes:
      user_ids: [U] user ids (numpy str), in numeric order where the ids are numbers.
      item_ids: per user, a 1-D str array of the rated item ids, oldest first.
      timestamps: per user, the matching int64 timestamps (non-decreasing).
      ratings: per user, the matching float32 ratings.
    """

    user_ids: np.ndarray
    item_ids: list[np.ndarray]
    timestamps: list[np.ndarray]
    ratings: list[np.ndarray]

    def __post_init__(self) -> None:
        if not len(self.user_ids) == len(self.item_ids) == len(self.timestamps) == len(self.ratings):
            raise ValueError("user_ids, item_ids, timestamps and ratings must have one entry per user")

    def __len__(self) -> int:
        return len(self.user_ids)

    def lengths(self) -> np.ndarray:
        """[U] int: the number of items of each user."""
        return np.array([len(items) for items in self.item_ids], dtype=np.int64)

    def select(self, users: np.ndarray) -> UserSequences:
        """The sequences of the users picked by `users` (a boolean mask or indices), in that order."""
        indices = np.arange(len(self))[users]
        return UserSequences(
            user_ids=self.user_ids[indices],
            item_ids=[self.item_ids[i] for i in indices],
            timestamps=[self.timestamps[i] for i in indices],
            ratings=[self.ratings[i] for i in indices],
        )


def user_sequences(ratings: pd.DataFrame) -> UserSequences:
    """Groups an interactions table (`InteractionData.interactions`) into chronological per-user sequences.

    One stable sort by (user, timestamp) keeps rows with equal timestamps in table order, which is
    file order for tables from `load_movielens`.

    Args:
      ratings: a table with `user_id`, `item_id`, `rating`, `timestamp`, rows in file order.

    Returns:
      Users ordered by numeric id when every id is a number, else lexicographically.
    """
    user_codes, unique_user_ids = pd.factorize(ratings["user_id"].to_numpy(dtype=str))
    unique_user_ids = np.asarray(unique_user_ids, dtype=str)
    user_rank = np.empty(len(unique_user_ids), dtype=np.int64)
    user_rank[user_order(unique_user_ids)] = np.arange(len(unique_user_ids))
    row_user_rank = user_rank[user_codes]
    timestamps = ratings["timestamp"].to_numpy(np.int64)
    order = np.lexsort((timestamps, row_user_rank))  # Stable: equal keys keep table order.
    boundaries = np.flatnonzero(np.diff(row_user_rank[order])) + 1
    return UserSequences(
        user_ids=unique_user_ids[user_order(unique_user_ids)],
        item_ids=np.split(ratings["item_id"].to_numpy(dtype=str)[order], boundaries),
        timestamps=np.split(timestamps[order], boundaries),
        ratings=np.split(ratings["rating"].to_numpy(np.float32)[order], boundaries),
    )


def leave_last_out(sequences: UserSequences, n: int = 1) -> tuple[UserSequences, np.ndarray]:
    """Holds out the last `n` items of every user as targets; the rest is the user's history.

    Train/validation/test is two calls::

        history, test_targets = leave_last_out(sequences)       # test: the last item
        train, valid_targets = leave_last_out(history)          # validation: the one before

    `train` is what a model may fit; `valid_targets[i]` is predicted from `train` sequence i, and
    `test_targets[i]` from `history` sequence i (train plus the validation item).

    A target needs a non-empty history before it, so users with `n` items or fewer are dropped
    from both outputs (they cannot be evaluated, and keeping them in the history without a target
    would misalign the two outputs). On ML-1M nobody is dropped: every user rated 20 movies or more.

    Args:
      sequences: chronological sequences, e.g. from `user_sequences`.
      n: how many items to hold out per user.

    Returns:
      (history, targets): `history` holds the users with more than `n` items, each without its last
      `n`; `targets` is aligned with `history.user_ids`: shape [U] (the last item) when n == 1, else
      [U, n] (the held-out items, oldest first).
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    kept = sequences.select(sequences.lengths() > n)
    history = UserSequences(
        user_ids=kept.user_ids,
        item_ids=[items[:-n] for items in kept.item_ids],
        timestamps=[timestamps[:-n] for timestamps in kept.timestamps],
        ratings=[ratings[:-n] for ratings in kept.ratings],
    )
    held_out = np.array([items[-n:] for items in kept.item_ids], dtype=str).reshape(len(kept), n)
    return history, held_out[:, 0] if n == 1 else held_out


def user_order(user_ids: np.ndarray) -> np.ndarray:
    """Indices that sort `user_ids` numerically when all are integers, else lexicographically."""
    if all(user_id.lstrip("-").isdigit() for user_id in user_ids):
        return np.argsort(user_ids.astype(np.int64), kind="stable")
    return np.argsort(user_ids, kind="stable")


@dataclasses.dataclass(frozen=True)
class HeldOutSplit:
    """What a model may learn from, and what it is tested on.

    Attributes:
      history: every user's interactions before their test item: all a model may see.
      test_rows: [T] rows of ``history`` whose users have a test item.
      test_targets: [T] each of those users' test item (their first one after the cut, for ``time_cut``).
    """

    history: UserSequences
    test_rows: np.ndarray
    test_targets: np.ndarray

    def tested_history(self) -> UserSequences:
        """The histories of the tested users, aligned with ``test_targets``."""
        return self.history.select(self.test_rows)

    def sample_tested(self, size: int, seed: int) -> HeldOutSplit:
        """The same history with a seeded sample of ``size`` of its tested users (``sample_rows``)."""
        sampled = sample_rows(len(self.test_rows), size, seed)
        return HeldOutSplit(self.history, self.test_rows[sampled], self.test_targets[sampled])


def sample_rows(num_rows: int, size: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded sample of ``size`` rows out of ``num_rows``; all of them when ``size`` is
    0 or at least ``num_rows``.

    Scoring users against the whole catalog costs users × items: at a million users and 100K items
    that is no longer something one machine does after each training run, while a sample of ten
    thousand users measures the same rate within an interval the run can state. Below the sample
    size every row is kept, in order, so small data sets are evaluated exactly as before.
    """
    if not size or size >= num_rows:
        return np.arange(num_rows)
    return np.sort(np.random.default_rng(seed).choice(num_rows, size, replace=False))


def hold_out(sequences: UserSequences, rule: SplitRule) -> HeldOutSplit:
    """Holds out each user's test item as ``rule`` says.

    ``time_cut`` keeps the users with at least one interaction before the cut; those with one at or
    after it are tested on the first such item (its successors would need the model to know it).
    """
    if rule.kind == LEAVE_LAST_OUT:
        history, targets = leave_last_out(sequences)
        return HeldOutSplit(history, np.arange(len(history)), targets)
    cut = rule.test_start if rule.test_start is not None else time_of_share(sequences, rule.test_share)
    before = [int(np.searchsorted(timestamps, cut, side="left")) for timestamps in sequences.timestamps]
    trimmed = UserSequences(
        user_ids=sequences.user_ids,
        item_ids=[items[:end] for items, end in zip(sequences.item_ids, before)],
        timestamps=[timestamps[:end] for timestamps, end in zip(sequences.timestamps, before)],
        ratings=[ratings[:end] for ratings, end in zip(sequences.ratings, before)],
    )
    kept = np.flatnonzero(trimmed.lengths() > 0)
    has_target = np.array([before[user] < len(sequences.item_ids[user]) for user in kept], dtype=bool)
    targets = np.array([sequences.item_ids[user][before[user]] for user in kept[has_target]], dtype=str)
    return HeldOutSplit(trimmed.select(kept), np.flatnonzero(has_target), targets)


def time_of_share(sequences: UserSequences, share: float) -> int:
    """The time at or after which about ``share`` of all interactions happen."""
    timestamps = np.sort(np.concatenate(sequences.timestamps))
    return int(timestamps[min(len(timestamps) - 1, int(len(timestamps) * (1 - share)))])


def set_aside_users(split: HeldOutSplit, share: float, seed: int) -> tuple[HeldOutSplit, HeldOutSplit]:
    """Moves a random ``share`` of the tested users out of ``split``, to play users who arrive after training.

    Returns (what the models train and are tested on, the set-aside users with their own test items):
    no part of the models may see the set-aside users' interactions, so their evaluation measures
    what a user the model has never met gets from their features and history alone.
    """
    rng = np.random.default_rng(seed)
    set_aside = np.zeros(len(split.history), bool)
    set_aside[split.test_rows[rng.random(len(split.test_rows)) < share]] = True
    is_tested = np.zeros(len(split.history), bool)
    is_tested[split.test_rows] = True
    targets_by_row = dict(zip(split.test_rows.tolist(), split.test_targets))

    def part(rows: np.ndarray) -> HeldOutSplit:
        tested = rows[is_tested[rows]]
        return HeldOutSplit(split.history.select(rows), np.flatnonzero(is_tested[rows]),
                            np.array([targets_by_row[row] for row in tested.tolist()], dtype=str))

    return part(np.flatnonzero(~set_aside)), part(np.flatnonzero(set_aside))
