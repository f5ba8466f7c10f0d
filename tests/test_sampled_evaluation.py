"""Evaluation and the ranker's lists on a seeded sample of users: what lets the command run at a million users.

A real (untrained) model on the first 150 MovieLens users: the sampled evaluation must give each
sampled user exactly the ranks the evaluation of every user gives them, and the ranker's lists
must be those of the sampled users only. The exported ranker, trained on those lists, must start
from the run's seed whatever retrieval drew before it.
"""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from tfrs_pipeline import scoring
from tfrs_pipeline.config import TwoStageConfig
from tfrs_pipeline.data.dataset import load_dataset
from tfrs_pipeline.data.split import leave_last_out
from tfrs_pipeline.models.ranking import CANDIDATE_FEATURE
from tfrs_pipeline.pipelines import two_stage

USERS = 150


@pytest.fixture(scope="module")
def built(shared_data_dir):
    # An untrained retrieval finds a user's next item by chance alone: 500 of the 3,883 movies give
    # about one user in eight a ranker list, so both the sampled users and the others have some.
    config = TwoStageConfig(data_dir=str(shared_data_dir / "ml-1m"), max_users=USERS, max_length=50,
                            embedding_dim=16, num_blocks=1, ranking_candidates=500, evaluation_users=40,
                            ranking_users=60, verbose=0)
    inputs = two_stage.TwoStageInputs.from_data(load_dataset(config.data_dir, max_users=USERS))
    split, _ = two_stage._split(config, inputs.data)
    train, targets = leave_last_out(split.history)
    popularity = inputs.catalog.counts(train.item_ids)
    model, _ = two_stage.build_retrieval(config, inputs, train, popularity)
    ranking_model = two_stage.build_ranking_model(config, inputs, model.query_tower, train, popularity)
    return config, inputs, split, train, targets, popularity, ranking_model


def test_a_sampled_user_gets_the_ranks_the_whole_evaluation_gives_them(built):
    config, inputs, split, _, _, popularity, ranking_model = built
    queries = scoring.query_embeddings(ranking_model.query_tower, inputs.users, split.history)
    every, every_details = two_stage._evaluate(config, inputs, ranking_model, split.tested_history(),
                                               split.test_targets, queries[split.test_rows], popularity)
    sampled = split.sample_tested(config.evaluation_users, config.seed)
    metrics, details = two_stage._evaluate(config, inputs, ranking_model, sampled.tested_history(),
                                           sampled.test_targets, queries[sampled.test_rows], popularity)
    assert every["users"] == USERS and metrics["users"] == config.evaluation_users
    for name in ("retrieval_ranks", "two_stage_ranks", "popularity_ranks", "retrieval_top10"):
        assert np.array_equal(details[name], every_details[name][sampled.test_rows]), name
    interval = two_stage._sample_interval(details, len(split.test_targets), config.seed)
    assert interval["users"] == 40 and interval["tested_users"] == USERS
    assert 0 < interval["hr@10_ci95"]["popularity"] < 0.3
    assert two_stage._sample_interval(every_details, USERS, config.seed)["hr@10_ci95"]["retrieval"] == 0.0


def test_the_ranker_learns_from_the_lists_of_a_sample_of_users(built):
    config, inputs, _, train, targets, _, ranking_model = built
    lists, has_list = two_stage.ranking_lists(config, inputs, ranking_model.query_tower, train, targets)
    every_lists, every_has_list = two_stage.ranking_lists(
        TwoStageConfig(**{**config.__dict__, "ranking_users": 0}), inputs, ranking_model.query_tower, train, targets)
    assert every_has_list.sum() == len(every_lists["labels"]) > has_list.sum() == len(lists["labels"]) > 0
    assert not (has_list & ~every_has_list).any()  # a sampled user has a list where they would have had one
    assert has_list.sum() <= config.ranking_users
    # The sampled users' lists are the lists the whole run gives them.
    kept = np.flatnonzero(has_list[every_has_list])
    assert np.array_equal(np.asarray(lists[CANDIDATE_FEATURE]), np.asarray(every_lists[CANDIDATE_FEATURE])[kept])
    assert np.array_equal(lists["labels"], every_lists["labels"][kept])


def test_the_exported_ranker_starts_from_the_run_s_seed_whatever_retrieval_drew(built):
    config, inputs, _, train, targets, popularity, ranking_model = built
    config = dataclasses.replace(config, ranking_users=0, ranking_epochs=1)
    lists, _ = two_stage.ranking_lists(config, inputs, ranking_model.query_tower, train, targets)
    weights = []
    for draws in (1, 1_000):
        tf.random.uniform([draws])  # as retrieval's training would, drawing more or less
        np.random.random(draws)
        ranker, _ = two_stage.seeded_ranking(config, inputs, ranking_model.query_tower, train, popularity, lists)
        weights.append([variable.numpy() for variable in ranker.trainable_variables])
    assert len(weights[0]) > 0
    for first, second in zip(*weights):
        assert np.array_equal(first, second)
