"""Benchmark: how much an item's popularity around the user's moment knows about the user's next item.

    python bench/time_aware_popularity.py --data_dir=../shared/data/ml-1m

Issue 17 lists time features for the ranker: the time since the candidate's first rating and its
popularity trend. Before building them into the serving contract, this measures what they can know:
each user's held-out item ranked over the whole catalog (rated items removed) by the number of
training interactions each item had in a window of days before the user's last known interaction,
ties broken by all-time popularity. A window that ranks the next item far better than all-time
popularity is a feature the ranker would gain from; one that ranks it alike adds little to the
log-popularity the ranker already reads. It also prints how users' ratings spread over time (the
share within a week of each user's first). Only interactions of the training split count (no
validation or test item of anyone), and only those before the user's moment (none from the future).
Prints a markdown table; ``--out`` writes it as JSON.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

import tfrs_pipeline  # noqa: F401
from tfrs_pipeline import evaluation
from tfrs_pipeline.config import TwoStageConfig
from tfrs_pipeline.data.dataset import load_dataset
from tfrs_pipeline.data.split import UserSequences, leave_last_out
from tfrs_pipeline.pipelines import two_stage

DAY_SECONDS = 86_400
WINDOWS_DAYS = (1, 7, 30, 90, 365)


class Interactions:
    """The training split's interactions in time order, as catalog indices, for windows by time."""

    def __init__(self, train: UserSequences, inputs: two_stage.TwoStageInputs):
        self.catalog = inputs.catalog
        self.all_time = self.catalog.counts(train.item_ids)
        items = np.concatenate([self.catalog.indices(items) for items in train.item_ids])
        times = np.concatenate(train.timestamps)
        order = np.argsort(times, kind="stable")
        self.items, self.times = items[order], times[order]

    def counts(self, moment: int, window_days: float | None) -> np.ndarray:
        """[N + 1] each item's interactions in the ``window_days`` up to ``moment`` (None: all before it;
        0: all-time popularity)."""
        if window_days == 0:
            return self.all_time
        start = 0 if window_days is None else np.searchsorted(self.times, moment - window_days * DAY_SECONDS)
        end = np.searchsorted(self.times, moment, side="right")
        return np.bincount(self.items[start:end], minlength=len(self.all_time))


def _ranks(interactions: Interactions, rated: list[np.ndarray], moments: np.ndarray, target_indices: np.ndarray,
           window_days: float | None) -> np.ndarray:
    """1-based rank of each user's target (catalog index) by ``interactions.counts`` at their moment,
    ties broken by all-time popularity, the user's ``rated`` catalog indices removed."""
    scores = np.stack([interactions.counts(moment, window_days) for moment in moments]).astype(np.float32)
    scores[:, 0] = -np.inf  # the unknown item never competes
    return evaluation.rank_of_targets(scores, target_indices, rated, tie_break=interactions.all_time)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=os.environ.get("TFRS_PIPELINE_DATA_DIR"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    config = TwoStageConfig(data_dir=args.data_dir)
    inputs = two_stage.TwoStageInputs.from_data(load_dataset(config.data_dir))
    split, _ = two_stage._split(config, inputs.data)
    train, validation_targets = leave_last_out(split.history)
    interactions = Interactions(train, inputs)
    tested = split.tested_history()
    # (rated catalog indices, each user's moment, targets): validation predicts each user's last training
    # item from the ones before it; test predicts the held-out item from the history that ends with that item.
    catalog = inputs.catalog
    cases = {
        "validation": ([catalog.indices(items) for items in train.item_ids],
                       np.array([times[-1] for times in train.timestamps]), catalog.indices(validation_targets)),
        "test": ([catalog.indices(items) for items in tested.item_ids],
                 np.array([times[-1] for times in tested.timestamps]), catalog.indices(split.test_targets)),
    }
    rows = []
    windows = [("all-time popularity", 0),
               *((f"the {days} day{'s' if days > 1 else ''} before", days) for days in WINDOWS_DAYS),
               ("everything before", None)]
    for label, window_days in windows:
        row = {"window": label}
        for case, (rated, moments, target_indices) in cases.items():
            ranks = _ranks(interactions, rated, moments, target_indices, window_days)
            row[case] = {name: round(float(value), 4)
                         for name, value in evaluation.accuracy_metrics(ranks, cutoffs=(10,)).items()}
        rows.append(row)
        print(json.dumps(row), flush=True)
    days_in = [(times - times[0]) / DAY_SECONDS for times in split.history.timestamps]
    spread = {"ratings_within_7_days_of_the_users_first": float(np.mean(np.concatenate(days_in) <= 7)),
              "users_with_every_rating_within_7_days": float(np.mean([days[-1] <= 7 for days in days_in])),
              "median_days_from_first_to_last_rating": float(np.median([days[-1] for days in days_in]))}
    print(json.dumps(spread))
    print("| popularity counted over | validation HR@10 / NDCG@10 | test HR@10 / NDCG@10 |\n|---|---|---|")
    for row in rows:
        print(f"| {row['window']} | {row['validation']['hr@10']:.4f} / {row['validation']['ndcg@10']:.4f} "
              f"| {row['test']['hr@10']:.4f} / {row['test']['ndcg@10']:.4f} |")
    if args.out:
        with open(args.out, "w") as file:
            json.dump({"windows": rows, "when_users_rate": spread}, file, indent=1)


if __name__ == "__main__":
    main()
