"""Chronological per-user sequences and the leave-last-out split: no target ever leaks into training."""
import numpy as np
import pandas as pd
import pytest

from tfrs_pipeline.data.dataset import load_dataset
from tfrs_pipeline.data.schema import TIME_CUT, SplitRule
from tfrs_pipeline.data.split import UserSequences, hold_out, leave_last_out, set_aside_users, user_sequences


@pytest.fixture(scope="module")
def ratings(shared_data_dir) -> pd.DataFrame:
    return load_dataset(shared_data_dir / "ml-1m").interactions


@pytest.fixture(scope="module")
def sequences(ratings) -> UserSequences:
    return user_sequences(ratings)


def file_rows(ratings: pd.DataFrame, user_id: str, item_ids: np.ndarray) -> np.ndarray:
    """Row (file line - 1) of each of a user's ratings; ML-1M has one rating per (user, movie)."""
    rows_of_user = ratings.index[ratings["user_id"] == user_id]
    row_of_item = pd.Series(rows_of_user, index=ratings.loc[rows_of_user, "item_id"])
    return row_of_item.loc[item_ids].to_numpy()


def test_sequences_hold_every_rating_once_grouped_by_numeric_user_id(ratings, sequences):
    assert len(sequences) == 6_040
    assert sequences.user_ids.tolist() == [str(user_id) for user_id in range(1, 6_041)]
    assert sequences.lengths().sum() == len(ratings)
    counts = ratings["user_id"].value_counts()
    assert (sequences.lengths() == counts.loc[sequences.user_ids].to_numpy()).all()


def test_sequences_are_chronological_with_ties_in_file_order(ratings, sequences):
    for index in range(0, len(sequences), 97):
        user_id, items = sequences.user_ids[index], sequences.item_ids[index]
        rows = file_rows(ratings, user_id, items)
        timestamps = ratings["timestamp"].to_numpy()[rows]
        assert (timestamps == sequences.timestamps[index]).all()
        assert (ratings["rating"].to_numpy()[rows] == sequences.ratings[index]).all()
        same_time = timestamps[1:] == timestamps[:-1]
        assert (timestamps[1:] >= timestamps[:-1]).all()
        assert (rows[1:][same_time] > rows[:-1][same_time]).all()


def test_ties_keep_table_order_on_a_small_table():
    table = pd.DataFrame({
        "user_id": ["10", "9", "10", "10", "9", "100"],
        "item_id": ["c", "x", "a", "b", "y", "z"],
        "rating": np.array([1, 2, 3, 4, 5, 1], np.float32),
        "timestamp": np.array([5, 7, 5, 3, 7, 1], np.int64),
    })
    sequences = user_sequences(table)
    assert sequences.user_ids.tolist() == ["9", "10", "100"]  # numeric, not "10" < "100" < "9"
    assert [items.tolist() for items in sequences.item_ids] == [["x", "y"], ["b", "c", "a"], ["z"]]
    lexicographic = user_sequences(table.assign(user_id=["b", "a", "b", "b", "a", "c"]))
    assert lexicographic.user_ids.tolist() == ["a", "b", "c"]


def test_train_valid_test_split_does_not_leak(ratings, sequences):
    history, test_targets = leave_last_out(sequences)
    train, valid_targets = leave_last_out(history)
    assert len(train) == len(history) == len(sequences)  # every ML-1M user has >= 20 ratings
    assert test_targets.shape == valid_targets.shape == (len(sequences),)
    user_of_row = ratings["user_id"].to_numpy()
    for index in range(0, len(sequences), 53):
        user_id = sequences.user_ids[index]
        assert train.user_ids[index] == history.user_ids[index] == user_id
        rows = file_rows(ratings, user_id, np.concatenate(
            [train.item_ids[index], [valid_targets[index]], [test_targets[index]]]))
        keys = list(zip(ratings["timestamp"].to_numpy()[rows], rows))  # time, then file order
        assert keys == sorted(keys)  # train <= valid target <= test target
        all_rows_of_user = np.flatnonzero(user_of_row == user_id)
        assert len(rows) == len(all_rows_of_user)  # nothing lost, nothing after the target kept
        last = max(all_rows_of_user, key=lambda row: (ratings["timestamp"].iat[row], row))
        assert rows[-1] == last and ratings["item_id"].iat[last] == test_targets[index]
        assert valid_targets[index] not in train.item_ids[index]
        assert test_targets[index] not in history.item_ids[index]


def test_leave_n_out_equals_repeated_leave_one_out(sequences):
    history, test_targets = leave_last_out(sequences)
    train, valid_targets = leave_last_out(history)
    train_at_once, targets = leave_last_out(sequences, n=2)
    assert targets.shape == (len(sequences), 2)
    assert (targets[:, 0] == valid_targets).all() and (targets[:, 1] == test_targets).all()
    for before, at_once in zip(train.item_ids, train_at_once.item_ids):
        assert (before == at_once).all()


def test_users_too_short_for_a_target_are_dropped_from_both_outputs():
    table = pd.DataFrame({
        "user_id": ["1", "2", "2", "3", "3", "3"],
        "item_id": ["a", "b", "c", "d", "e", "f"],
        "rating": np.ones(6, np.float32),
        "timestamp": np.arange(6, dtype=np.int64),
    })
    history, test_targets = leave_last_out(user_sequences(table))
    assert history.user_ids.tolist() == ["2", "3"] and test_targets.tolist() == ["c", "f"]
    assert [items.tolist() for items in history.item_ids] == [["b"], ["d", "e"]]
    train, valid_targets = leave_last_out(history)
    assert train.user_ids.tolist() == ["3"] and valid_targets.tolist() == ["e"]
    assert [timestamps.tolist() for timestamps in train.timestamps] == [[3]]
    with pytest.raises(ValueError):
        leave_last_out(history, n=0)


def _table(rows: list[tuple[str, str, int]]) -> pd.DataFrame:
    user_ids, item_ids, timestamps = zip(*rows)
    return pd.DataFrame({"user_id": user_ids, "item_id": item_ids, "rating": np.ones(len(rows), np.float32),
                         "timestamp": np.array(timestamps, np.int64)})


def test_a_time_cut_tests_each_user_on_their_first_item_after_it():
    table = _table([("1", "a", 10), ("1", "b", 20), ("1", "c", 30), ("1", "d", 40),  # tested on c
                    ("2", "e", 15),  # nothing after the cut: trains, is not tested
                    ("3", "f", 35), ("3", "g", 36),  # nothing before the cut: a newcomer, not in the split
                    ("4", "h", 29), ("4", "i", 30)])  # an item exactly at the cut is a test item
    split = hold_out(user_sequences(table), SplitRule(kind=TIME_CUT, test_start=30))
    assert split.history.user_ids.tolist() == ["1", "2", "4"]
    assert [items.tolist() for items in split.history.item_ids] == [["a", "b"], ["e"], ["h"]]
    assert split.test_rows.tolist() == [0, 2] and split.test_targets.tolist() == ["c", "i"]
    assert split.tested_history().user_ids.tolist() == ["1", "4"]
    # Without a start time, the cut leaves the given share of interactions after it.
    # (9 interactions: the cut falls on the 7th time, 35.)
    by_share = hold_out(user_sequences(table), SplitRule(kind=TIME_CUT, test_share=0.3))
    assert by_share.history.user_ids.tolist() == ["1", "2", "4"] and by_share.test_targets.tolist() == ["d"]
    assert all((stamps < 35).all() for stamps in by_share.history.timestamps)


def test_set_aside_users_leave_no_trace_in_the_training_split(sequences):
    split = hold_out(sequences, SplitRule())
    kept, newcomers = set_aside_users(split, share=0.1, seed=0)
    assert 450 < len(newcomers.history) < 760
    assert len(kept.history) + len(newcomers.history) == len(split.history)
    assert not set(kept.history.user_ids) & set(newcomers.history.user_ids)
    assert len(newcomers.test_targets) == len(newcomers.history)  # every ML-1M user is tested
    row_of = {user_id: row for row, user_id in enumerate(split.history.user_ids)}
    for user_id, target in zip(newcomers.tested_history().user_ids, newcomers.test_targets):
        assert split.test_targets[row_of[user_id]] == target


def test_a_sample_of_tested_users_is_seeded_and_every_user_below_its_size(sequences):
    split = hold_out(sequences, SplitRule())
    for every_user in (10_000, 0):  # ML-1M's 6,040 users are fewer than the default sample; 0 is "all"
        assert split.sample_tested(every_user, seed=0).test_rows.tolist() == list(range(6_040))
    sampled = split.sample_tested(1_000, seed=3)
    assert len(sampled.test_rows) == 1_000 == len(np.unique(sampled.test_rows))
    assert np.all(np.diff(sampled.test_rows) > 0)  # in the split's order
    assert sampled.history is split.history
    targets_by_row = dict(zip(split.test_rows.tolist(), split.test_targets))
    assert sampled.test_targets.tolist() == [targets_by_row[row] for row in sampled.test_rows.tolist()]
    assert np.array_equal(split.sample_tested(1_000, seed=3).test_rows, sampled.test_rows)
    assert not np.array_equal(split.sample_tested(1_000, seed=4).test_rows, sampled.test_rows)
