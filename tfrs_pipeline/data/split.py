"""Per-user chronological sequences and the leave-last-out split.

Sequential recommenders (and the standard ML-1M benchmark protocol) train on each user's history
and evaluate on what the user did next: the last rating is the test target, the one before it the
validation target. Anything the model sees during training must therefore come strictly before the
target in time; ties in timestamp (ML-1M has many, to the second) are broken by file order, the
only order the publisher gives, so the split is the same on every run.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd


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
    """Groups a ratings table (`MovieLens.ratings` columns) into chronological per-user sequences.

    One stable sort by (user, timestamp) keeps rows with equal timestamps in table order, which is
    file order for tables from `load_movielens`.

    Args:
      ratings: a table with `user_id`, `movie_id`, `user_rating`, `timestamp`, rows in file order.

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
        item_ids=np.split(ratings["movie_id"].to_numpy(dtype=str)[order], boundaries),
        timestamps=np.split(timestamps[order], boundaries),
        ratings=np.split(ratings["user_rating"].to_numpy(np.float32)[order], boundaries),
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
