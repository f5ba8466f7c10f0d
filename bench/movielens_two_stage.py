"""Benchmark: the full two-stage run on MovieLens-1M, and variants of it, measured in one process.

    python bench/movielens_two_stage.py --data_dir=../shared/data/ml-1m --out=/tmp/bench_two_stage \
        --variant default= --variant user_id_embedding=--user_id_embedding

Each variant is a label and the extra `train` flags it adds to the defaults (space separated).
``--own_data_route`` adds a variant that reads the same data through the own-data contract: the
MovieLens tables are written as ``interactions.csv``, ``items.csv``, ``users.csv`` and
``dataset.json`` under ``<out>`` (never into the repository: MovieLens may not be redistributed),
and the run reads that folder as a user's own data would be read. ``--sasrec_form`` adds a variant on
MovieLens-1M as the sequential literature prepared it (``ml-1m-sasrec/ml-1m.txt``: 3,416 items, one
``user item`` line per rating in each user's order, no timestamps and no features), written to the
own-data contract under ``<out>`` with the line number as the timestamp, so that its last item per
user is the SASRec protocol's test item and the figures sit beside SASRec+'s and gSASRec's.
``--one_item_earlier`` runs every variant on the data set without each user's last interaction,
written to the own-data contract under ``<out>``: its test items are the validation items of a run on
the whole data set, so a setting that only the final fit can use (``--refit_epochs``, which trains
on the validation items) is chosen there, never on the test split.
Prints a markdown table (quality of retrieval, two-stage and popularity; training wall time) and
writes it with the raw metrics to ``<out>/results.json``. The figures in docs/benchmarks.md come
from this script.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import shlex
import time

import numpy as np
import pandas as pd

import tfrs_pipeline  # noqa: F401
from tfrs_pipeline import train
from tfrs_pipeline.data.dataset import load_dataset, write_interaction_folder


def run_variant(data_dir: str, out: pathlib.Path, label: str, extra_flags: str) -> dict:
    export_dir = out / label
    flags = [f"--data_dir={data_dir}", f"--export_dir={export_dir}", "--verbose=2", *shlex.split(extra_flags)]
    load_before = os.getloadavg()
    start = time.perf_counter()
    exit_code = train.main(flags)
    wall_seconds = time.perf_counter() - start
    if exit_code:
        raise SystemExit(f"variant {label} failed with exit code {exit_code}")
    metrics = json.loads((export_dir / "metrics.json").read_text())
    # The 1-minute load before and the 15-minute load after: wall times mean little without them.
    return {"label": label, "flags": flags, "wall_seconds": wall_seconds, "metrics": metrics,
            "load_average": [load_before[0], os.getloadavg()[2]]}


def write_sasrec_form(path: pathlib.Path, folder: pathlib.Path) -> None:
    """``interactions.csv`` of the SASRec file: its line order is the time order, so the line number is the time."""
    pairs = np.loadtxt(path, dtype=np.int64)
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"user_id": pairs[:, 0], "item_id": pairs[:, 1], "timestamp": np.arange(len(pairs))}).to_csv(
        folder / "interactions.csv", index=False)


def write_one_item_earlier(data_dir: str, folder: pathlib.Path) -> None:
    """The data set without each user's last interaction (ties: the later row), as an own-data folder."""
    data = load_dataset(data_dir)
    interactions = data.interactions.sort_values(["user_id", "timestamp"], kind="stable")
    last = interactions.groupby("user_id", sort=False).tail(1).index
    write_interaction_folder(dataclasses.replace(data, interactions=data.interactions.drop(index=last)), folder)


def markdown(results: list[dict]) -> str:
    lines = ["| variant | system | HR@10 | NDCG@10 | HR@50 | MRR | coverage | pop. pct. | wall (s) | load |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for result in results:
        for system in ("retrieval", "two_stage", "popularity"):
            values = result["metrics"]["evaluation"][system]
            lines.append(f"| {result['label']} | {system} | {values['hr@10']:.4f} | {values['ndcg@10']:.4f} | "
                         f"{values['hr@50']:.4f} | {values['mrr']:.4f} | {values['coverage']:.3f} | "
                         f"{values['popularity_percentile']:.3f} | {result['wall_seconds']:.0f} | "
                         f"{result['load_average'][0]:.1f} / {result['load_average'][1]:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=os.environ.get("TFRS_PIPELINE_DATA_DIR"))
    parser.add_argument("--out", default="/tmp/bench_two_stage")
    parser.add_argument("--variant", action="append", default=[],
                        help="label=extra train flags (repeatable); default: one run with the defaults")
    parser.add_argument("--own_data_route", action="store_true",
                        help="also run on the same data converted to the own-data contract")
    parser.add_argument("--sasrec_form", type=pathlib.Path,
                        help="also run on this ml-1m.txt (ml-1m-sasrec), written to the own-data contract; "
                             "without --variant, the only run")
    parser.add_argument("--one_item_earlier", action="store_true",
                        help="run the variants on the data without each user's last interaction (its test "
                             "items: the whole data's validation items)")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    default_runs = [] if args.sasrec_form else ["default="]  # the SASRec form alone runs alone
    variants = [variant.split("=", 1) for variant in (args.variant or default_runs)]
    if args.own_data_route:
        own_data = out / "own_data"
        write_interaction_folder(load_dataset(args.data_dir), own_data)
        variants.append(["own_data_route", f"--data_dir={own_data}"])
    if args.sasrec_form:
        write_sasrec_form(args.sasrec_form, out / "sasrec_form")
        variants.append(["sasrec_form", f"--data_dir={out / 'sasrec_form'}"])
    data_dir = args.data_dir
    if args.one_item_earlier:
        data_dir = str(out / "one_item_earlier")
        write_one_item_earlier(args.data_dir, pathlib.Path(data_dir))
    results = [run_variant(data_dir, out, label, flags) for label, flags in variants]
    table = markdown(results)
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor()}
    (out / "results.json").write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")
    print(table)


if __name__ == "__main__":
    main()
