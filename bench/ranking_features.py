"""Benchmark: ranker variants on one trained retrieval, chosen on validation lists, reported on the test items.

    python bench/ranking_features.py --data_dir=../shared/data/ml-1m --out=/tmp/bench_ranking --epochs=6 \
        --variant rules= --variant no_rules=ranking_rules_per_item=0 \
        --variant forward_100=ranking_rules_per_item=100

Retrieval trains once with the defaults (``--epochs`` of them; its towers are saved under ``<out>`` and
read back by a later run with the same ``--epochs``), so the variants differ in the ranker alone and a
variant costs minutes, not a full run. Each variant is a label and ``field=value`` settings of
``TwoStageConfig`` (comma separated) for the ranker.

Two measures per variant:
  - validation: the ranker's own lists (each user's last training item, which retrieval never
    trained on), ranked out of fold: 5 folds by user, each ranker trained as the pipeline trains it
    on the other four. Two-stage HR@10 / NDCG@10 over all users (a list without the item is a miss).
    Settings are chosen on this, never on the test items. A variant that changes how the lists are
    built (``ranking_candidates``, ``ranking_users``) is validated on lists of its own.
  - test: the ranker trained on every list, as ``python -m tfrs_pipeline.train`` trains it, evaluated
    by the pipeline's evaluation (full catalog, rated items removed).
Each ranker trains from its own seed; ``--seeds=N`` trains every variant under N of them (the seed
alone moves a ranker as much as most settings do, docs/benchmarks.md), one row each.
``--popularity_penalties`` and ``--popularity_penalty_exponents`` answer each trained ranker with several
popularity penalties and exponents (``ranking_popularity_penalty``, ``ranking_popularity_penalty_exponent``;
training never sees them, so one ranker serves them all): one row each, with the validation lists' breadth
(coverage and popularity percentile of the top 10) beside their accuracy. Breadth is measured over every
user's validation list, out of fold, as the test's is over every user's test list: the lists retrieval did
not find the item in are shown to their users too.
Prints a markdown table and writes ``<out>/ranking_results.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import time
from typing import NamedTuple

import numpy as np
import tensorflow as tf

import tfrs_pipeline  # noqa: F401
from tfrs_pipeline import evaluation, scoring, train
from tfrs_pipeline.config import TwoStageConfig
from tfrs_pipeline.data.dataset import load_dataset
from tfrs_pipeline.data.split import HeldOutSplit, UserSequences, leave_last_out
from tfrs_pipeline.models.query_tower import QueryTower
from tfrs_pipeline.pipelines import two_stage

FOLDS = 5
_MISSED = 1 << 30  # the rank of an item retrieval did not put in the list


def _settings(text: str) -> dict:
    """``field=value,...`` of ``TwoStageConfig``, typed and checked as the train command's ``--field=value``
    flags are (``field=true`` or ``field=false`` for a switch); only the fields given."""
    given = dict(assignment.split("=", 1) for assignment in filter(None, text.split(",")))
    switches = {field.name for field in dataclasses.fields(TwoStageConfig) if field.type == "bool"}
    flags = [(f"--{name}" if value.lower() == "true" else f"--no-{name}") if name in switches else f"--{name}={value}"
             for name, value in given.items()]
    config = train.parse_config(flags)
    return {name: getattr(config, name) for name in given}


def _runs(base: TwoStageConfig, variants: list[str], seeds: int,
          first_seed: int = 0) -> list[tuple[str, str, TwoStageConfig]]:
    """(label, settings, config) of each variant under ``seeds`` seeds: ``base.seed + first_seed``, then the
    next ones."""
    runs = []
    for variant in variants:
        label, settings = variant.split("=", 1)
        for offset in range(first_seed, first_seed + seeds):
            runs.append((label + (f" seed={base.seed + offset}" if seeds > 1 or first_seed else ""), settings,
                         dataclasses.replace(base, **_settings(settings), seed=base.seed + offset)))
    return runs


def _query_tower(config: TwoStageConfig, inputs: two_stage.TwoStageInputs, train, popularity: np.ndarray,
                 targets: np.ndarray, out: pathlib.Path) -> QueryTower:
    """Retrieval's query tower, trained once per ``config.epochs`` and kept under ``out``.

    The rankers here are validated on the items ``targets`` holds, so the towers must never train on
    them: a retrieval refit (``--retrieval=retrieval_refit_epochs=...``) is refused.
    """
    if config.retrieval_refit_epochs:
        raise SystemExit("the rankers are validated on the items a refit trains on: bench them without "
                         "retrieval_refit_epochs")
    checkpoint = out / f"retrieval_{config.epochs}_epochs" / "towers"  # ``out`` holds one retrieval setting
    if checkpoint.with_suffix(".index").is_file():
        query_tower = two_stage.build_towers(config, inputs, train, popularity)
        tf.train.Checkpoint(query_tower=query_tower).read(str(checkpoint)).expect_partial()
        return query_tower
    run_dir = checkpoint.parent / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    query_tower, _, _ = two_stage._train_retrieval(config, inputs, train, targets, popularity, run_dir, refit=train)
    tf.train.Checkpoint(query_tower=query_tower).write(str(checkpoint))
    return query_tower


class ValidationLists(NamedTuple):
    """What every ranker of a run is trained and validated on, retrieval's towers frozen.

    ``lists`` are ``two_stage.ranking_lists`` of each user's validation item (the last training item,
    which retrieval never trained on); ``found_rows`` the users whose list holds it, one per list;
    ``fold_of`` each list's fold, drawn by user.
    """

    base: TwoStageConfig
    inputs: two_stage.TwoStageInputs
    split: HeldOutSplit
    train: UserSequences
    targets: np.ndarray
    popularity: np.ndarray
    query_tower: QueryTower
    lists: dict
    found_rows: np.ndarray
    fold_of: np.ndarray


def validation_lists(data_dir: str | None, out: pathlib.Path, epochs: int, retrieval: str = "") -> ValidationLists:
    """The default run's split and candidate lists, on towers trained once per ``epochs`` and kept under ``out``.

    ``retrieval``: ``field=value,...`` of ``TwoStageConfig`` that retrieval trains with instead of the defaults.
    """
    base = TwoStageConfig(data_dir=data_dir, export_dir=str(out / "export"), epochs=epochs, verbose=0,
                          **_settings(retrieval))
    tf.keras.utils.set_random_seed(base.seed)
    inputs = two_stage.TwoStageInputs.from_data(load_dataset(base.data_dir))
    split, _ = two_stage._split(base, inputs.data)
    train, targets = leave_last_out(split.history)
    popularity = inputs.catalog.counts(train.item_ids)
    query_tower = _query_tower(base, inputs, train, popularity, targets, out)
    return ValidationLists(base, inputs, split, train, targets, popularity, query_tower,
                           *_candidate_lists(base, inputs, query_tower, train, targets))


def _candidate_lists(config: TwoStageConfig, inputs: two_stage.TwoStageInputs, query_tower: QueryTower,
                     train: UserSequences, targets: np.ndarray) -> tuple[dict, np.ndarray, np.ndarray]:
    """``two_stage.ranking_lists`` as ``config`` builds them, the users whose list holds their item, and
    each list's fold (drawn by user, so a user keeps their fold whatever the lists' settings)."""
    lists, found = two_stage.ranking_lists(config, inputs, query_tower, train, targets)
    found_rows = np.flatnonzero(found)
    return lists, found_rows, np.random.default_rng(1).integers(0, FOLDS, len(targets))[found_rows]


def _every_users_lists(config: TwoStageConfig, inputs: two_stage.TwoStageInputs, query_tower: QueryTower,
                       train: UserSequences) -> tuple[dict, np.ndarray, np.ndarray]:
    """Every user's validation list as ``config`` answers it (the ranker's features, the candidates' catalog
    indices), and each user's fold: the folds of ``_candidate_lists``, whose lists are these lists' rows
    where the item was found."""
    candidates = scoring.candidate_lists(inputs.catalog, scoring.query_embeddings(query_tower, inputs.users, train),
                                         query_tower.item_tower, train, config.ranking_candidates)
    features = scoring.ranking_features(inputs.catalog, inputs.users, train, candidates, query_tower)
    return features, candidates, np.random.default_rng(1).integers(0, FOLDS, len(train))


def _list_settings(config: TwoStageConfig) -> tuple:
    """What ``two_stage.ranking_lists`` reads of a ranker's settings: variants that differ in them need
    lists of their own."""
    return config.ranking_candidates, config.ranking_users


def _answer_with(model, exponent: float, penalty: float) -> None:
    model.popularity_penalty_exponent.assign(exponent)
    model.popularity_penalty.assign(penalty)


def _subset(lists: dict, rows: np.ndarray) -> dict:
    return {name: tf.gather(values, rows) for name, values in lists.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=os.environ.get("TFRS_PIPELINE_DATA_DIR"))
    parser.add_argument("--out", default="/tmp/bench_ranking")
    parser.add_argument("--epochs", type=int, default=TwoStageConfig.epochs, help="retrieval's epochs")
    parser.add_argument("--retrieval", default="",
                        help="field=value,... of TwoStageConfig retrieval trains with (default: the defaults); "
                             "give each setting its own --out")
    parser.add_argument("--variant", action="append", default=[],
                        help="label=field=value,... of TwoStageConfig for the ranker (repeatable)")
    parser.add_argument("--popularity_penalties", default="",
                        help="comma-separated ranking_popularity_penalty values each ranker is answered with "
                             "(default: the variant's own)")
    parser.add_argument("--popularity_penalty_exponents", default="",
                        help="comma-separated ranking_popularity_penalty_exponent values, each answered with every "
                             "penalty (default: the variant's own)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="train each variant's rankers under this many seeds: the ranker's seed-to-seed spread "
                             "is as large as most settings' effects (docs/benchmarks.md)")
    parser.add_argument("--first_seed", type=int, default=0,
                        help="the first of those seeds is the default's plus this: more seeds for a run already made")
    args = parser.parse_args()
    penalties_asked = [float(value) for value in filter(None, args.popularity_penalties.split(","))]
    exponents_asked = [float(value) for value in filter(None, args.popularity_penalty_exponents.split(","))]
    out = pathlib.Path(args.out)
    validation = validation_lists(args.data_dir, out, args.epochs, args.retrieval)
    base, inputs, split, train, targets, popularity, query_tower = (
        validation.base, validation.inputs, validation.split, validation.train, validation.targets,
        validation.popularity, validation.query_tower)
    lists_by_settings = {_list_settings(base): (validation.lists, validation.found_rows, validation.fold_of,
                                                _every_users_lists(base, inputs, query_tower, train))}
    target_indices = inputs.catalog.indices(targets)
    test_queries = scoring.query_embeddings(query_tower, inputs.users, split.tested_history())
    results = []
    for label, settings, config in _runs(base, args.variant or ["default="], args.seeds, args.first_seed):
        if _list_settings(config) not in lists_by_settings:
            lists_by_settings[_list_settings(config)] = (*_candidate_lists(config, inputs, query_tower, train, targets),
                                                         _every_users_lists(config, inputs, query_tower, train))
        lists, found_rows, fold_of, (every_features, every_candidates, fold_of_user) = (
            lists_by_settings[_list_settings(config)])
        retrieval_ranks = np.full(len(targets), _MISSED)
        retrieval_ranks[found_rows] = lists["labels"].argmax(axis=1) + 1
        # Each ranker trains from its own seed, not from where the previous variant left the random state.
        tf.keras.utils.set_random_seed(config.seed)
        answers = [(exponent, penalty) for exponent in exponents_asked or [config.ranking_popularity_penalty_exponent]
                   for penalty in penalties_asked or [config.ranking_popularity_penalty]]
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        ranks = {answer: np.full(len(targets), _MISSED) for answer in answers}
        top_lists = {answer: np.zeros((len(targets), 10), np.int64) for answer in answers}
        for fold in range(FOLDS):
            model = two_stage.build_ranking_model(config, inputs, query_tower, train, popularity)
            two_stage.fit_ranking(config, model, _subset(lists, np.flatnonzero(fold_of != fold)))
            held = np.flatnonzero(fold_of_user == fold)
            held_candidates = every_candidates[held]
            _answer_with(model, 1.0, 0.0)  # the learned scores, from which every answer subtracts its penalties
            learned = scoring.ranking_scores(model, _subset(every_features, held))
            for answer in answers:
                _answer_with(model, *answer)
                reranked = scoring.in_order(held_candidates,
                                            learned - model.popularity_penalties(held_candidates).numpy())
                in_list = reranked == target_indices[held, np.newaxis]
                ranks[answer][held] = np.where(in_list.any(axis=1), in_list.argmax(axis=1) + 1, _MISSED)
                top_lists[answer][held] = reranked[:, :10]
        model, history = two_stage.seeded_ranking(config, inputs, query_tower, train, popularity, lists)
        for answer in answers:
            exponent, penalty = answer
            _answer_with(model, exponent, penalty)
            test, _ = two_stage._evaluate(config, inputs, model, split.tested_history(), split.test_targets,
                                          test_queries, popularity)
            validation_breadth = evaluation.beyond_accuracy_metrics(top_lists[answer], popularity,
                                                                    inputs.item_categories)
            results.append({
                "label": f"{label} penalty={penalty:g}" + (f" exponent={exponent:g}" if exponent != 1 else ""),
                "settings": settings, "seed": config.seed,
                "popularity_penalty": penalty, "popularity_penalty_exponent": exponent,
                "ranking_epochs_run": len(history["loss"]),
                "validation": {"retrieval": evaluation.accuracy_metrics(retrieval_ranks, cutoffs=(10,)),
                               "two_stage": {**evaluation.accuracy_metrics(ranks[answer], cutoffs=(10,)),
                                             **{name: validation_breadth[name]
                                                for name in ("coverage", "popularity_percentile")}}},
                "test": test, "seconds": time.perf_counter() - start,
                "load_average": [load_before, os.getloadavg()[0]]})
            print(json.dumps(results[-1]["validation"]), flush=True)
    lines = ["| variant | validation two-stage HR@10 | NDCG@10 | coverage | pop. pct. | test retrieval HR@10 "
             "| test two-stage HR@10 | NDCG@10 | HR@50 | coverage | pop. pct. | s | load |", "| --- " * 13 + "|"]
    for result in results:
        validation, test = result["validation"]["two_stage"], result["test"]["two_stage"]
        lines.append(f"| {result['label']} | {validation['hr@10']:.4f} | {validation['ndcg@10']:.4f} | "
                     f"{validation['coverage']:.3f} | {validation['popularity_percentile']:.3f} | "
                     f"{result['test']['retrieval']['hr@10']:.4f} | {test['hr@10']:.4f} | {test['ndcg@10']:.4f} | "
                     f"{test['hr@50']:.4f} | {test['coverage']:.3f} | {test['popularity_percentile']:.3f} | "
                     f"{result['seconds']:.0f} | {result['load_average'][0]:.1f} |")
    (out / "ranking_results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
