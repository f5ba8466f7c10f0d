"""The path from data to served answer at one size, measured: generate, preprocess, train, export, serve.

    python bench/scale_benchmark.py --users=100000 --items=10000 --interactions=2000000 \
        --work_dir=/tmp/scale_10k --out=docs/scale_figures/scale_10k.json

Each step is the project's own command, run as a child process and timed, its peak memory sampled
over the whole process tree (Beam's worker processes and the model server included):

  1. ``bench/synthetic_data.py``: the own-data folder and its generator's HR@10 ceiling;
  2. ``python -m tfrs_pipeline.data.beam_pipeline`` on the DirectRunner with ``--beam_workers``
     worker processes: TFRecords;
  3. ``python -m tfrs_pipeline.train --examples_dir=...`` with the sampled softmax, ``--epochs``
     epochs: the time of every stage (training, evaluation, index, export), training interactions per
     second, HR@10 of retrieval, two-stage and popularity against the ceiling, SavedModel sizes;
  4. ``bench/signature_latency.py``: retrieval by user id (precomputed state) and by features (the
     query tower per request), 1 and 16 users per call, in-process;
  5. ranking of ``--ranking_candidates`` candidates for one user, in-process (here);
  6. ``bench/serving_load.py``: the two-stage answer at 16 closed-loop clients, in-process and
     through ``tfrs-model-server`` (``--serving_modes``: requests/s, p50/p99, the server's peak memory);
  7. ``bench/feature_store_latency.py``: the export's online store read for 1 and 16 users, the
     answer from the store's features and history against the answer by user id at 16 clients, and
     an event's time to a changed answer.

``--max_users=N`` measures a slice: the data set's whole catalog and the N users with the smallest
ids (Beam and ``train`` both take it), for the costs of the catalog at a size whose every user this
machine cannot train, evaluate and export in the time at hand (the per-user costs then come from
``bench/scale_training.py`` on the whole data set).

A step whose output exists in ``--work_dir`` is not run again unless ``--rerun`` names it, so a
size that breaks late can be resumed. Everything a step printed is kept in ``<work_dir>/logs/``.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import resource
import subprocess
import sys
import threading
import time

import numpy as np
import psutil

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = ("generate", "beam", "train", "signatures", "ranking", "serving", "feature_store")
STAGE_LINE = re.compile(r"\[tfrs_pipeline\] (.+): done in ([\d.]+)s \(([\d.]+) CPU-s\)")
KERAS_EPOCH = re.compile(r"^\d+/\d+ - (\d+)s - ", re.MULTILINE)


def run_measured(name: str, command: list[str], log_dir: pathlib.Path) -> dict:
    """Runs ``command``; returns its wall and CPU seconds, the peak resident memory of its process tree and
    its output. CPU seconds are what compares on a shared machine, where wall time is someone else's too."""
    log_path = log_dir / f"{name}.log"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    cpu_before = _children_cpu_seconds()
    started = time.perf_counter()
    with open(log_path, "w") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)
        peak = _sample_peak_rss(child)
        child.wait()
    seconds = time.perf_counter() - started
    output = log_path.read_text(errors="replace")
    if child.returncode:
        raise RuntimeError(f"{name} failed ({child.returncode}); see {log_path}:\n{output[-3000:]}")
    return {"seconds": round(seconds, 1), "cpu_seconds": round(_children_cpu_seconds() - cpu_before, 1),
            "peak_rss_mb": round(peak["value"] / 2**20), "output": output}


def _children_cpu_seconds() -> float:
    """User and system CPU of every finished child (and the children they waited for) of this process."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _sample_peak_rss(child: subprocess.Popen) -> dict:
    """Samples the summed RSS of ``child`` and its descendants every 0.5 s until it exits."""
    peak = {"value": 0}

    def sample():
        process = psutil.Process(child.pid)
        while child.poll() is None:
            try:
                tree = [process, *process.children(recursive=True)]
                peak["value"] = max(peak["value"], sum(_rss(member) for member in tree))
            except psutil.NoSuchProcess:
                pass
            time.sleep(0.5)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    child.wait()
    thread.join()
    return peak


def _rss(process: psutil.Process) -> int:
    try:
        return process.memory_info().rss
    except psutil.NoSuchProcess:
        return 0


def folder_mb(path: pathlib.Path) -> float:
    return round(sum(file.stat().st_size for file in path.rglob("*") if file.is_file()) / 2**20, 1)


def ranking_latency(export_dir: pathlib.Path, user_ids: list[str], candidates: int, rounds: int) -> dict:
    """p50 / p99 ms of the ranking signature for one user and ``candidates`` items, in-process."""
    import tfrs_pipeline  # noqa: F401  (Keras 2 first)

    # isort: split
    import tensorflow as tf

    from tfrs_pipeline.catalog import read_items_file
    from tfrs_pipeline.contracts import ITEMS_FILE
    from tfrs_pipeline.export.versioning import existing_versions

    base = export_dir / "ranking"
    signature = tf.saved_model.load(str(base / str(existing_versions(base)[-1]))).signatures["serving_default"]
    items = read_items_file(export_dir / ITEMS_FILE)[0].item_ids.astype(str)
    rng = np.random.default_rng(0)
    timings = []
    for round_number in range(rounds + 5):
        request = {"user_id": tf.constant([user_ids[rng.integers(len(user_ids))]]),
                   "item_ids": tf.constant([rng.choice(items, candidates, replace=False)])}
        started = time.perf_counter()
        signature(**request)["scores"].numpy()
        if round_number >= 5:  # the first calls trace and warm up
            timings.append(1e3 * (time.perf_counter() - started))
    return {"candidates": candidates, "calls": rounds, "p50_ms": round(float(np.percentile(timings, 50)), 2),
            "p99_ms": round(float(np.percentile(timings, 99)), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/scale_benchmark.py", description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--items", type=int, required=True)
    parser.add_argument("--interactions", type=int, required=True)
    parser.add_argument("--work_dir", required=True, help="data, examples, export and logs go here")
    parser.add_argument("--out", help="write the figures as JSON here")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--num_negatives", type=int, default=2048, help="sampled-softmax negatives")
    parser.add_argument("--batch_size", type=int, default=128,
                        help="training windows per batch (the figures in docs/benchmarks.md used 128)")
    parser.add_argument("--beam_workers", type=int, default=2)
    parser.add_argument("--ranking_candidates", type=int, default=200)
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {STEPS}")
    parser.add_argument("--rerun", default="", help="steps to run again even where their output exists")
    parser.add_argument("--serving_seconds", type=float, default=20)
    parser.add_argument("--train_flag", action="append", default=[], help="extra flag for train, repeatable")
    parser.add_argument("--max_users", type=int, help="a slice: the whole catalog and the users with the smallest "
                                                      "ids (Beam's and train's --max_users)")
    parser.add_argument("--serving_modes", default="in_process,server_batching",
                        help="bench/serving_load.py --modes")
    flags = parser.parse_args(argv)
    slice_flags = [f"--max_users={flags.max_users}"] if flags.max_users else []
    work_dir = pathlib.Path(flags.work_dir).resolve()
    log_dir = work_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    data_dir, examples_dir, export_dir = work_dir / "data", work_dir / "examples", work_dir / "export"
    figures_path = work_dir / "figures.json"
    figures = json.loads(figures_path.read_text()) if figures_path.exists() else {}
    figures.update(size={"users": flags.users, "items": flags.items, "interactions": flags.interactions},
                   machine={"cpu_count": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30)})
    steps = flags.steps.split(",")
    rerun = set(filter(None, flags.rerun.split(",")))
    python = sys.executable

    def wanted(step: str, done: bool) -> bool:
        return step in steps and (step in rerun or not done)

    def record(step: str, result: dict) -> None:
        figures[step] = {**figures.get(step, {}), **result, "load_average_after": os.getloadavg()[0]}
        figures_path.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"{step}: {json.dumps({k: v for k, v in figures[step].items() if k != 'output'})}", flush=True)

    if wanted("generate", (data_dir / "generator.json").exists()):
        result = run_measured("generate", [python, "bench/synthetic_data.py", f"--output_dir={data_dir}",
                                           f"--users={flags.users}", f"--items={flags.items}",
                                           f"--interactions={flags.interactions}"], log_dir)
        generator = json.loads((data_dir / "generator.json").read_text())
        record("generate", {"seconds": result["seconds"], "peak_rss_mb": result["peak_rss_mb"],
                            "interactions": generator["interactions"], "data_mb": folder_mb(data_dir),
                            "ceiling": generator["ceiling"]})
    if wanted("beam", (examples_dir / "manifest.json").exists()):
        result = run_measured("beam", [python, "-m", "tfrs_pipeline.data.beam_pipeline", f"--data_dir={data_dir}",
                                       f"--output_dir={examples_dir}", f"--direct_num_workers={flags.beam_workers}",
                                       "--direct_running_mode=multi_processing", *slice_flags], log_dir)
        manifest = json.loads((examples_dir / "manifest.json").read_text())
        record("beam", {"seconds": result["seconds"], "peak_rss_mb": result["peak_rss_mb"],
                        "workers": flags.beam_workers, "examples": manifest["num_examples"],
                        "interactions_per_s": round(manifest["num_interactions"] / result["seconds"]),
                        "tfrecords_mb": folder_mb(examples_dir)})
    if wanted("train", (export_dir / "metrics.json").exists()):
        result = run_measured("train", [python, "-m", "tfrs_pipeline.train", f"--data_dir={data_dir}",
                                        f"--examples_dir={examples_dir}", f"--export_dir={export_dir}",
                                        f"--epochs={flags.epochs}", f"--num_negatives={flags.num_negatives}",
                                        f"--batch_size={flags.batch_size}",
                                        f"--ranking_candidates={flags.ranking_candidates}", "--verbose=2",
                                        *slice_flags, *flags.train_flag], log_dir)
        stage_lines = STAGE_LINE.findall(result["output"])
        stages = {name: float(seconds) for name, seconds, _ in stage_lines}
        stages_cpu = {name: float(cpu_seconds) for name, _, cpu_seconds in stage_lines}
        metrics = json.loads((export_dir / "metrics.json").read_text())
        manifest = json.loads((examples_dir / "manifest.json").read_text())
        # Every interaction but a user's first, test and ranking items is a training target.
        targets = manifest["num_interactions"] - 3 * manifest["num_users"]
        epoch_seconds = [int(seconds) for seconds in KERAS_EPOCH.findall(result["output"])]
        retrieval_seconds = next(seconds for name, seconds in stages.items() if name.startswith("train retrieval"))
        record("train", {
            "seconds": result["seconds"], "cpu_seconds": result["cpu_seconds"], "peak_rss_mb": result["peak_rss_mb"],
            "stages_s": stages, "stages_cpu_s": stages_cpu,
            "epochs": flags.epochs, "num_negatives": flags.num_negatives, "batch_size": flags.batch_size,
            "extra_flags": flags.train_flag,
            "keras_epoch_s": epoch_seconds,  # retrieval's epochs, then ranking's
            "training_targets_per_epoch": targets,
            "training_interactions_per_s": round(targets * flags.epochs / retrieval_seconds),
            "hr@10": {system: metrics["evaluation"][system]["hr@10"]
                      for system in ("retrieval", "two_stage", "popularity")},
            "ndcg@10": {system: metrics["evaluation"][system]["ndcg@10"]
                        for system in ("retrieval", "two_stage", "popularity")},
            "evaluation_sample": metrics["evaluation_sample"],
            "index": {name: metrics["index"][name] for name in ("scann_params", "top10_agreement", "recall_at_10")},
            "savedmodel_mb": {model.name: folder_mb(model) for model in sorted(export_dir.iterdir())
                              if model.is_dir() and (model / "1").is_dir()},
        })
    served_users = flags.max_users or flags.users  # the synthetic users' ids are 0 .. users - 1
    user_ids = [str(user) for user in range(1, served_users)]
    if wanted("signatures", "signatures" in figures):
        result = run_measured("signatures", [python, "bench/signature_latency.py", f"scale={export_dir}",
                                             f"--data_dir={data_dir}", "--rounds=30"], log_dir)
        record("signatures", {"peak_rss_mb": result["peak_rss_mb"],
                              "table": [line for line in result["output"].splitlines() if line.startswith("|")]})
    if wanted("ranking", "ranking" in figures):
        record("ranking", ranking_latency(export_dir, user_ids, flags.ranking_candidates, rounds=200))
    if wanted("serving", "serving" in figures):
        out = work_dir / "serving.json"
        run_measured("serving", [python, "bench/serving_load.py", f"--export_dir={export_dir}", "--clients=16",
                                 f"--duration_s={flags.serving_seconds}", "--warmup_s=5",
                                 f"--num_users={served_users - 1}", f"--modes={flags.serving_modes}",
                                 f"--out={out}"], log_dir)
        record("serving", json.loads(out.read_text())["results"])
    if wanted("feature_store", "feature_store" in figures):
        out = work_dir / "feature_store.json"
        result = run_measured("feature_store", [python, "bench/feature_store_latency.py", f"--export_dir={export_dir}",
                                                "--clients=16", f"--duration_s={flags.serving_seconds}", "--warmup_s=5",
                                                f"--out={out}"], log_dir)
        record("feature_store", {"peak_rss_mb": result["peak_rss_mb"], **json.loads(out.read_text())["results"]})
    if flags.out:
        pathlib.Path(flags.out).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(flags.out).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
