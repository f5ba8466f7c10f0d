"""Session-based next-item prediction on the published benchmarks, full test sets, full catalogs.

- DIGINETICA and Tmall in the SR-GNN / GCE-GNN form: every prefix of every training session trains
  (but for the most recent 2%, held out to weigh session kNN), every ``test.tsv`` case is ranked
  against all items (nothing excluded); P@20 (= HR@20) and MRR@20.
  Published: DIGINETICA SR-GNN 50.73 / 17.59, GCE-GNN 54.22 / 19.04; Tmall GCE-GNN 33.42 / 15.42.
- MovieLens-1M in the SASRec form (``ml-1m-sasrec/ml-1m.txt``): each user's items but the last two
  train, the last item is the test target after all the others, ranked against all 3,416 items with
  the user's other items excluded; HR@10 and NDCG@10 (gSASRec 0.3003 / 0.1726, SASRec+ 0.3152).

The served system (transformer + session kNN), its two parts alone, the sequential-rules baseline
and popularity are measured on each; the training time, the chosen session-kNN weight, the load of
the (shared) machine and every setting are written with the figures.

    python bench/session_benchmark.py --datasets=diginetica --out=docs/session_figures/diginetica.json
    nohup python bench/session_benchmark.py --datasets=diginetica,tmall,ml1m > session_bench.log 2>&1 &
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

import numpy as np

import tfrs_pipeline  # noqa: F401  (selects Keras 2 first)
from tfrs_pipeline.catalog import Catalog
from tfrs_pipeline.config import SessionConfig, TwoStageConfig
from tfrs_pipeline.data.sessions import SessionData, load_sessions
from tfrs_pipeline.evaluation import format_metrics_table
from tfrs_pipeline.pipelines import session

DATA_ROOT = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
DATASETS = ("diginetica", "tmall", "ml1m")
SESSION_SETTINGS = {name: getattr(SessionConfig, name) for name in (
    "max_length", "embedding_dim", "num_blocks", "num_heads", "dropout", "relative_attention_bias", "num_negatives",
    "batch_size", "learning_rate", "epochs", "session_neighbours", "neighbour_recency_scale",
    "neighbour_position_scale", "neighbour_validation_share")}  # what train --task=session runs with
# On MovieLens, the settings of the two-tower MovieLens run: 200 slots and the whole-catalog softmax,
# which on 3,416 items is exact and cheaper per unit of quality than sampling (docs/benchmarks.md).
ML1M_SETTINGS = {**SESSION_SETTINGS, **{name: getattr(TwoStageConfig, name) for name in (
    "max_length", "num_blocks", "batch_size", "learning_rate", "learning_rate_warmup_epochs", "epochs", "dropout",
    "relative_attention_bias", "num_negatives")},
    "neighbour_recency_scale": 0.0}  # users are listed by id, not in time order


def sasrec_movielens(path: pathlib.Path) -> tuple[SessionData, list[np.ndarray]]:
    """ML-1M as SASRec prepares it: (train on all but the last two items, test last after all others; seen items)."""
    pairs = np.loadtxt(path, dtype=np.int64)
    users, starts = np.unique(pairs[:, 0], return_index=True)
    histories = np.split(pairs[:, 1].astype(str).astype(object), starts[1:])
    train = [items[:-2] for items in histories if len(items) >= 4]
    prefixes = [items[:-1] for items in histories]
    targets = np.asarray([items[-1] for items in histories], dtype=object)
    return SessionData(train, prefixes, targets, str(path)), prefixes


def run_dataset(name: str, data_root: pathlib.Path, settings: dict) -> dict:
    started = time.perf_counter()
    load_before = os.getloadavg()
    excluded_items = None
    if name == "ml1m":
        data, excluded_items = sasrec_movielens(data_root / "ml-1m-sasrec" / "ml-1m.txt")
    else:
        data = load_sessions(data_root / name, "srgnn")
    config = SessionConfig(data_dir=str(data_root), **settings)
    catalog = Catalog.by_popularity(data.train_sessions)
    model, neighbours, record = session.train_with_neighbours(config, data, catalog)
    excluded = [catalog.indices(items) for items in excluded_items] if excluded_items is not None else None
    figures = session.evaluate(model, catalog, data, excluded, neighbours)
    print(f"\n{name}\n" + format_metrics_table(figures), flush=True)
    return {"dataset": name, "settings": settings, "catalog_items": len(catalog),
            "training_seconds": record["training_seconds"], "training_cpu_seconds": record["training_cpu_seconds"],
            "training": record["training"], "repeat_bonus_by_recency": record["repeat_bonus_by_recency"],
            **{name: record[name] for name in ("held_out_sessions", "neighbour_weight",
                                               "held_out_p20_by_neighbour_weight") if name in record},
            "evaluation": figures, "total_seconds": time.perf_counter() - started,
            "load_average_before": load_before, "load_average_after": os.getloadavg(), "cpus": os.cpu_count()}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="diginetica,tmall,ml1m")
    parser.add_argument("--data_root", default=os.environ.get("TFRS_PIPELINE_TEST_DATA", str(DATA_ROOT)))
    parser.add_argument("--out", default=None, help="JSON file for the figures (default: print only)")
    for field, default in SESSION_SETTINGS.items():
        kind = {"action": argparse.BooleanOptionalAction} if isinstance(default, bool) else {"type": type(default)}
        parser.add_argument(f"--{field}", **kind, default=None,
                            help=f"override (session default {default}; ml1m default {ML1M_SETTINGS[field]})")
    args = parser.parse_args(argv)
    overrides = {field: getattr(args, field) for field in SESSION_SETTINGS if getattr(args, field) is not None}
    if overrides.get("num_negatives") == 0:
        overrides["num_negatives"] = None  # the full softmax
    results = []
    for name in args.datasets.split(","):
        if name not in DATASETS:
            parser.error(f"unknown dataset {name!r}; expected some of {DATASETS}")
        settings = {**(ML1M_SETTINGS if name == "ml1m" else SESSION_SETTINGS), **overrides, "verbose": 2}
        results.append(run_dataset(name, pathlib.Path(args.data_root), settings))
        if args.out:
            pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            pathlib.Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
