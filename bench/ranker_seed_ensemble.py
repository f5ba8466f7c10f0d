"""Benchmark: what averaging rankers over seeds, or training on half the lists, does on validation.

    python bench/ranker_seed_ensemble.py --data_dir=../shared/data/ml-1m --out=<dir with the towers> --epochs=17

Two questions about issue 17's ranker, answered on the same out-of-fold validation lists as
`ranking_features.py` (5 folds by user; each user's last training item, which retrieval never
trained on), with retrieval's towers trained once and read back from ``<out>``:
  - does the mean of ``--seeds`` rankers' learned scores (same lists, one seed each) rank better
    than a single ranker? Its serving cost would be that many rankers per request;
  - how much does a ranker lose when it trains on half of its fold's lists (two seeds)? The answer
    says what more lists (several held-out positions per user) could be worth.
The popularity penalty is applied after averaging, at the default and at ``--popularity_penalties``.
Writes ``<out>/ranker_seed_ensemble.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import time

import numpy as np
import tensorflow as tf
from ranking_features import _MISSED, FOLDS, _subset, validation_lists

import tfrs_pipeline  # noqa: F401
from tfrs_pipeline import evaluation, scoring
from tfrs_pipeline.config import TwoStageConfig
from tfrs_pipeline.models.ranking import CANDIDATE_FEATURE, normalized_log_popularity
from tfrs_pipeline.pipelines import two_stage

HALF_LIST_SEEDS = 2


def _validation(learned: np.ndarray, penalty_per_candidate: np.ndarray, penalty: float, labels: np.ndarray,
                found_rows: np.ndarray, num_users: int) -> dict:
    """Two-stage HR@10 and NDCG@10 over all users; a user whose list misses the item counts as a miss."""
    order = np.argsort(-(learned - penalty * penalty_per_candidate), axis=1, kind="stable")
    ranks = np.full(num_users, _MISSED)
    ranks[found_rows] = np.take_along_axis(labels, order, axis=1).argmax(axis=1) + 1
    return evaluation.accuracy_metrics(ranks, cutoffs=(10,))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=os.environ.get("TFRS_PIPELINE_DATA_DIR"))
    parser.add_argument("--out", default="/tmp/bench_ranking")
    parser.add_argument("--epochs", type=int, default=TwoStageConfig.epochs, help="retrieval's epochs")
    parser.add_argument("--seeds", type=int, default=4, help="rankers averaged (seeds 0..N-1)")
    parser.add_argument("--popularity_penalties", default="0.5,1,2", help="more penalties to answer the mean with")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    (base, inputs, _, train, targets, popularity, query_tower, lists, found_rows,
     fold_of) = validation_lists(args.data_dir, out, args.epochs)
    labels = lists["labels"]
    candidates = inputs.catalog.indices(lists[CANDIDATE_FEATURE].ravel()).reshape(labels.shape)
    penalty_per_candidate = normalized_log_popularity(popularity)[candidates]

    runs = [(f"seed {seed}", seed, 1.0) for seed in range(args.seeds)]
    runs += [(f"half the lists, seed {seed}", seed, 0.5) for seed in range(HALF_LIST_SEEDS)]
    learned = {label: np.zeros(labels.shape, np.float32) for label, _, _ in runs}
    started = time.perf_counter()
    for fold in range(FOLDS):
        fold_rows, held = np.flatnonzero(fold_of != fold), np.flatnonzero(fold_of == fold)
        held_features = {name: values for name, values in _subset(lists, held).items() if name != "labels"}
        half = np.sort(np.random.default_rng(fold).permutation(fold_rows)[:len(fold_rows) // 2])
        for label, seed, share in runs:
            config = dataclasses.replace(base, seed=seed)
            tf.keras.utils.set_random_seed(seed)
            model = two_stage.build_ranking_model(config, inputs, query_tower, train, popularity)
            two_stage.fit_ranking(config, model, _subset(lists, fold_rows if share == 1.0 else half))
            model.popularity_penalty.assign(0.0)  # the learned scores: the penalty is applied after averaging
            learned[label][held] = scoring.ranking_scores(model, held_features)
            print(f"fold {fold}, {label}: {time.perf_counter() - started:.0f} s", flush=True)

    def measured(scores: np.ndarray, penalty: float) -> dict:
        return _validation(scores, penalty_per_candidate, penalty, labels, found_rows, len(targets))

    default_penalty = base.ranking_popularity_penalty
    results = {label: measured(scores, default_penalty) for label, scores in learned.items()}
    for count in range(2, args.seeds + 1):
        results[f"mean of seeds 0..{count - 1}"] = measured(np.mean([learned[f"seed {seed}"] for seed in range(count)],
                                                                    axis=0), default_penalty)
    results["mean of the half-list rankers"] = measured(
        np.mean([learned[f"half the lists, seed {seed}"] for seed in range(HALF_LIST_SEEDS)], axis=0), default_penalty)
    everything = np.mean([learned[f"seed {seed}"] for seed in range(args.seeds)], axis=0)
    for penalty in (float(value) for value in filter(None, args.popularity_penalties.split(","))):
        results[f"mean of all seeds, penalty {penalty:g}"] = measured(everything, penalty)
        results[f"seed 0, penalty {penalty:g}"] = measured(learned["seed 0"], penalty)
    report = {"epochs": args.epochs, "lists": int(len(found_rows)), "users": int(len(targets)),
              "default_penalty": default_penalty, "seconds": time.perf_counter() - started,
              "load_average": os.getloadavg(), "validation_two_stage": results}
    (out / "ranker_seed_ensemble.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    print("| rankers | validation HR@10 | NDCG@10 |\n| --- | --- | --- |")
    for label, figures in results.items():
        print(f"| {label} | {figures['hr@10']:.4f} | {figures['ndcg@10']:.4f} |")


if __name__ == "__main__":
    main()
