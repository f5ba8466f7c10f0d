"""The training report: one self-contained HTML page of plots a person would rather look at than read.

A two-stage run leaves numbers in its run folder (``<export_dir>/runs/<version>/``): training
histories and the evaluation in ``metrics.json``, each user's rank of the held-out item in
``evaluation_details.npz``, the vectors the index serves in ``index_embeddings.npz``. The same
numbers as pictures answer the questions a table hides: did training converge, how does quality
grow with the list length, does the model only recommend blockbusters, what does the ScaNN index
trade for its speed, and for whom does the model work.

Each ``plot_*`` function returns a matplotlib ``Figure`` (drawn off-screen with Agg, no pyplot
state), so notebooks show the same figures inline; ``write_report`` draws them all into
``report.html`` with the PNGs embedded as data URIs: no external assets, no network.
"""
from __future__ import annotations

import base64
import dataclasses
import datetime
import html
import io
import json
import os
import pathlib
import time

import numpy as np
import tensorflow as tf
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from tfrs_pipeline import evaluation, index
from tfrs_pipeline.atomic import write_text_atomically
from tfrs_pipeline.run_layout import (
    CONFIG_FILE,
    EVALUATION_DETAILS,
    INDEX_EMBEDDINGS,
    METRICS_FILE,
    REFIT_EPOCHS,
    REPORT_FILE,
    VALIDATION_EPOCHS,
)

SYSTEMS = ("retrieval", "two_stage", "popularity")
SYSTEM_LABELS = {"retrieval": "retrieval", "two_stage": "retrieve + rank", "popularity": "popularity baseline"}
SYSTEM_COLORS = {"retrieval": "tab:blue", "two_stage": "tab:orange", "popularity": "tab:gray"}
MAX_CUTOFF = 200  # HR@k and NDCG@k are drawn for k = 1..MAX_CUTOFF
SEGMENT_CUTOFF = 10  # per-segment quality is HR@SEGMENT_CUTOFF
SEGMENTS = 4  # quantile buckets per segmentation
# The ScaNN sweep: fractions of the leaves searched, and exact re-scoring pools, around the deployed setting.
LEAVES_SEARCHED_FRACTIONS = (0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
SWEEP_REORDERING_CANDIDATES = 100
SWEEP_K = 10
LATENCY_QUERIES = 50  # timed one at a time, LATENCY_ROUNDS times each
LATENCY_ROUNDS = 3


@dataclasses.dataclass(frozen=True)
class RunOutputs:
    """What a two-stage run wrote to its run folder; ``details`` and ``embeddings`` are None where absent.

    Attributes:
      run_dir: the run folder.
      config: config.json (the task and its ``TwoStageConfig`` fields).
      metrics: metrics.json (``training``, ``evaluation`` unless ``--holdout=none``, ``index``).
      details: evaluation_details.npz as a dict of arrays (absent with ``--holdout=none``).
      embeddings: index_embeddings.npz as a dict of arrays.
    """

    run_dir: pathlib.Path
    config: dict
    metrics: dict
    details: dict[str, np.ndarray] | None
    embeddings: dict[str, np.ndarray] | None


def load_run(run_dir: str | os.PathLike) -> RunOutputs:
    """Reads the outputs of the run in ``run_dir`` (``<export_dir>/runs/<version>/``)."""
    run_dir = pathlib.Path(run_dir)
    metrics_path = run_dir / METRICS_FILE
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path}: no {METRICS_FILE}; is {run_dir} the folder of a finished run?")

    def arrays(name: str) -> dict[str, np.ndarray] | None:
        path = run_dir / name
        if not path.is_file():
            return None
        with np.load(path) as stored:
            return {key: stored[key] for key in stored.files}

    config_path = run_dir / CONFIG_FILE
    return RunOutputs(
        run_dir=run_dir,
        config=json.loads(config_path.read_text()) if config_path.is_file() else {},
        metrics=json.loads(metrics_path.read_text()),
        details=arrays(EVALUATION_DETAILS),
        embeddings=arrays(INDEX_EMBEDDINGS),
    )


def plot_loss_curves(training: dict) -> Figure:
    """Training and validation loss per epoch of each model, and the retrieval's validation HR@10.

    Args:
      training: ``metrics["training"]``: per model, its Keras history (``loss``, ``val_loss``, ...), and
        where validation ran only after some epochs, their numbers (``VALIDATION_EPOCHS``), and the
        epochs that trained on the ranker's targets too (``REFIT_EPOCHS``), shaded: their loss is over
        other windows, and validation cannot follow them.
    """
    panels = [(model, ("loss", "val_loss"), f"{model} loss") for model in training]
    if "val_hr@10" in training.get("retrieval", {}):
        panels.append(("retrieval", ("val_hr@10", "val_ndcg@10"), "retrieval validation, full catalog"))
    figure = Figure(figsize=(4.5 * len(panels), 3.6), layout="constrained")
    for axes, (model, names, title) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        for name in names:
            values = training[model].get(name)
            if values:
                epochs = range(1, len(values) + 1)
                if name.startswith("val_"):
                    epochs = training[model].get(VALIDATION_EPOCHS, epochs)
                axes.plot(epochs, values, marker="o", label=name)
        refit = training[model].get(REFIT_EPOCHS)
        if refit:
            axes.axvspan(refit[0] - 0.5, refit[-1] + 0.5, color="0.9", label="refit with the ranker's targets")
        axes.set(title=title, xlabel="epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.legend()
    return figure


def plot_accuracy_at_k(details: dict[str, np.ndarray], max_cutoff: int = MAX_CUTOFF) -> Figure:
    """HR@k and NDCG@k against k for retrieval, retrieve-then-rank and the popularity baseline."""
    cutoffs = range(1, max_cutoff + 1)
    figure = Figure(figsize=(10, 3.8), layout="constrained")
    hit_axes, ndcg_axes = figure.subplots(1, 2)
    for system in SYSTEMS:
        metrics = evaluation.accuracy_metrics(details[f"{system}_ranks"], cutoffs=cutoffs)
        style = dict(label=SYSTEM_LABELS[system], color=SYSTEM_COLORS[system])
        hit_axes.plot(cutoffs, [metrics[f"hr@{k}"] for k in cutoffs], **style)
        ndcg_axes.plot(cutoffs, [metrics[f"ndcg@{k}"] for k in cutoffs], **style)
    hit_axes.set(title="hit rate at k (full catalog)", xlabel="k", ylabel="HR@k", xscale="log")
    ndcg_axes.set(title="NDCG at k (full catalog)", xlabel="k", ylabel="NDCG@k", xscale="log")
    for axes in (hit_axes, ndcg_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    return figure


def plot_popularity_bias(details: dict[str, np.ndarray]) -> Figure:
    """How popular the recommended items are, against the catalog.

    Left: the distribution of training interactions per item, over the catalog and over every
    top-10 slot of each system. Right: the share of recommendations per catalog popularity decile;
    a popularity-blind recommender puts 10% in each, "recommend the blockbusters" all in the last.
    """
    popularity = details["item_popularity"][1:]  # index 0 is the unknown item
    figure = Figure(figsize=(10, 3.8), layout="constrained")
    distribution_axes, decile_axes = figure.subplots(1, 2)
    bins = np.logspace(0, np.log10(popularity.max() + 1), 30)
    distribution_axes.hist(popularity + 1, bins=bins, weights=np.full(len(popularity), 1 / len(popularity)),
                           histtype="stepfilled", color="lightgray", label="catalog items")
    decile_of_item = np.zeros(len(popularity) + 1, np.int64)
    decile_of_item[1:] = np.argsort(np.argsort(popularity, kind="stable"), kind="stable") * 10 // len(popularity)
    width = 0.8 / len(SYSTEMS)
    for position, system in enumerate(SYSTEMS):
        recommended = details[f"{system}_top10"].ravel()
        style = dict(label=SYSTEM_LABELS[system], color=SYSTEM_COLORS[system])
        distribution_axes.hist(details["item_popularity"][recommended] + 1, bins=bins,
                               weights=np.full(len(recommended), 1 / len(recommended)), histtype="step",
                               linewidth=2, **style)
        share = np.bincount(decile_of_item[recommended], minlength=10) / len(recommended)
        decile_axes.bar(np.arange(1, 11) + (position - (len(SYSTEMS) - 1) / 2) * width, share, width=width, **style)
    distribution_axes.set(title="popularity of recommended items", xscale="log",
                          xlabel="training interactions of the item + 1", ylabel="share")
    decile_axes.axhline(0.1, color="black", linestyle="--", linewidth=1, label="popularity-blind")
    decile_axes.set(title="recommendations per popularity decile", xlabel="catalog popularity decile (10 = most)",
                    ylabel="share of top-10 slots", xticks=range(1, 11))
    for axes in (distribution_axes, decile_axes):
        axes.legend()
    return figure


@dataclasses.dataclass(frozen=True)
class ScannPoint:
    """One ScaNN setting of the sweep: its recall@10 against exact search and its latency."""

    params: index.ScannParams | None  # None: exact brute force
    recall_at_10: float
    single_query_ms: float


def scann_tradeoff(candidate_embeddings: np.ndarray, query_embeddings: np.ndarray,
                   deployed: index.ScannParams | None = None) -> list[ScannPoint]:
    """Recall@10 (against brute force) and single-query latency of ScaNN over a range of settings.

    The settings search a growing fraction of the leaves, each with a small and with the deployed
    reordering pool; the first point is exact brute force. Over fewer than
    ``index.MIN_SCANN_CANDIDATES`` items there is no ScaNN index to sweep, and only that point is returned.

    Args:
      candidate_embeddings: [N, d] the catalog vectors the index was built on.
      query_embeddings: [U, d] real queries (recall is averaged over all, latency over a sample).
      deployed: the run's tuned parameters (``metrics["index"]["scann_params"]``); the catalog-size
        defaults (``index.scann_params_for``) when omitted.
    """
    num_candidates = len(candidate_embeddings)
    k = min(SWEEP_K, num_candidates)
    positions = tf.range(num_candidates)
    queries = tf.constant(query_embeddings, tf.float32)
    settings: list[index.ScannParams | None] = [None]
    if num_candidates >= index.MIN_SCANN_CANDIDATES:
        deployed = deployed or index.scann_params_for(num_candidates, k)
        leaves_searched = sorted({max(1, round(fraction * deployed.num_leaves))
                                  for fraction in LEAVES_SEARCHED_FRACTIONS} | {deployed.num_leaves_to_search})
        pools = sorted({min(num_candidates, SWEEP_REORDERING_CANDIDATES), deployed.num_reordering_candidates})
        settings += [dataclasses.replace(deployed, num_leaves_to_search=leaves, num_reordering_candidates=pool)
                     for pool in pools for leaves in leaves_searched]
    layers = [index.build_top_k("brute_force" if params is None else "scann", positions, candidate_embeddings, k,
                                params=params) for params in settings]
    exact_ids = layers[0](queries)[1].numpy()
    recalls = [index.recall_at_k(exact_ids, layer(queries)[1].numpy()) for layer in layers]
    latencies = _single_query_ms(layers, queries[:LATENCY_QUERIES], k)
    return [ScannPoint(*point) for point in zip(settings, recalls, latencies)]


def _single_query_ms(layers: list[tf.keras.Model], queries: tf.Tensor, k: int) -> list[float]:
    """Median milliseconds of one query alone (the serving case) for each layer, after a warm-up call.

    The layers take turns on every query, so a burst of other work on a shared machine slows all
    of them alike instead of ruining one setting's measurement.
    """
    durations = np.zeros((len(layers), LATENCY_ROUNDS * len(queries)))
    for layer in layers:
        layer(queries[:1], k=k)
    for sample in range(durations.shape[1]):
        query = queries[sample % len(queries):sample % len(queries) + 1]
        for position, layer in enumerate(layers):
            start = time.perf_counter()
            layer(query, k=k)
            durations[position, sample] = time.perf_counter() - start
    return list(1e3 * np.median(durations, axis=1))


def plot_scann_tradeoff(points: list[ScannPoint], deployed: index.ScannParams | None = None) -> Figure:
    """Recall@10 against single-query latency, one line per reordering pool, brute force as a star."""
    figure = Figure(figsize=(6.5, 4.2), layout="constrained")
    axes = figure.subplots()
    exact = points[0]
    axes.scatter([exact.single_query_ms], [exact.recall_at_10], marker="*", s=200, color="black",
                 label="brute force (exact)", zorder=3)
    for pool in sorted({point.params.num_reordering_candidates for point in points[1:]}):
        curve = [point for point in points[1:] if point.params.num_reordering_candidates == pool]
        axes.plot([point.single_query_ms for point in curve], [point.recall_at_10 for point in curve], marker="o",
                  label=f"ScaNN, {pool} re-scored exactly")
        for point in curve:
            axes.annotate(f"{point.params.num_leaves_to_search}/{point.params.num_leaves}",
                          (point.single_query_ms, point.recall_at_10), textcoords="offset points", xytext=(4, -10),
                          fontsize=7)
    chosen = [point for point in points[1:] if point.params == deployed]
    if chosen:
        axes.scatter([chosen[0].single_query_ms], [chosen[0].recall_at_10], s=180, facecolors="none",
                     edgecolors="red", linewidths=2, label="deployed setting", zorder=4)
    axes.set(title="ScaNN: recall@10 against latency (labels: leaves searched)", xlabel="ms per single query",
             ylabel="recall@10 vs exact")
    axes.grid(alpha=0.3)
    axes.legend(loc="best")
    return figure


def plot_segments(details: dict[str, np.ndarray], cutoff: int = SEGMENT_CUTOFF) -> Figure:
    """HR@cutoff per user-activity bucket and per target-popularity bucket (quantiles), per system."""
    figure = Figure(figsize=(11, 3.8), layout="constrained")
    segmentations = (("user_history_lengths", "users by activity (ratings in history)"),
                     ("target_popularity", "users by popularity of their held-out item"))
    for axes, (field, title) in zip(figure.subplots(1, 2), segmentations):
        buckets, labels = _quantile_buckets(details[field])
        width = 0.8 / len(SYSTEMS)
        for position, system in enumerate(SYSTEMS):
            ranks = details[f"{system}_ranks"]
            hit_rates = [evaluation.accuracy_metrics(ranks[buckets == bucket], cutoffs=(cutoff,))[f"hr@{cutoff}"]
                         for bucket in range(len(labels))]
            axes.bar(np.arange(len(labels)) + (position - (len(SYSTEMS) - 1) / 2) * width, hit_rates, width=width,
                     label=SYSTEM_LABELS[system], color=SYSTEM_COLORS[system])
        axes.set(title=title, ylabel=f"HR@{cutoff}", xticks=range(len(labels)))
        axes.set_xticklabels(labels, fontsize=8)
    figure.legend(*axes.get_legend_handles_labels(), loc="outside upper center", ncols=len(SYSTEMS))
    return figure


def _quantile_buckets(values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Bucket of each value (up to ``SEGMENTS`` quantile buckets) and a label per bucket: range and count."""
    edges = np.unique(np.quantile(values, np.linspace(0, 1, SEGMENTS + 1))[1:-1])
    buckets = np.searchsorted(edges, values, side="right")
    labels = []
    for bucket in range(len(edges) + 1):
        members = values[buckets == bucket]
        labels.append(f"{members.min():g}-{members.max():g}\n({len(members)} users)" if len(members) else "none")
    return buckets, labels


def write_report(run_dir: str | os.PathLike) -> pathlib.Path:
    """Writes ``<run_dir>/report.html`` (atomically) from the run's outputs and returns its path."""
    run = load_run(run_dir)
    sections = [_metrics_section(run.metrics)]
    figures = [("Training", "Loss per epoch on training and validation data; the retrieval panel on the "
                "right ranks each validation item against the whole catalog.",
                plot_loss_curves(run.metrics.get("training", {})))]
    if run.details is not None:
        figures += [
            ("Accuracy against list length", "HR@k and NDCG@k of the held-out item, k = 1.."
             f"{MAX_CUTOFF}, ranked against the whole catalog.", plot_accuracy_at_k(run.details)),
            ("Popularity bias", "Are recommendations spread over the catalog, or piled on its most popular "
             "items?", plot_popularity_bias(run.details)),
            ("Quality per segment", f"HR@{SEGMENT_CUTOFF} for light and heavy users, and for popular and niche "
             "held-out items (quantile buckets).", plot_segments(run.details)),
        ]
    if run.embeddings is not None:
        deployed = _deployed_params(run.metrics)
        points = scann_tradeoff(run.embeddings["candidate_embeddings"], run.embeddings["query_embeddings"], deployed)
        figures.append(("ScaNN index", "Recall@10 against exact search and single-query latency as the index "
                        "searches more leaves; measured on this run's embeddings when the report was written.",
                        plot_scann_tradeoff(points, deployed)))
    sections += [_figure_section(title, caption, figure) for title, caption, figure in figures]
    sections.append(_table_section("Configuration", ["setting", "value"],
                                   [[name, json.dumps(value)] for name, value in run.config.items()]))
    page = _page(f"Training report: version {run.metrics.get('version', '?')}", run.run_dir, sections)
    path = run.run_dir / REPORT_FILE
    write_text_atomically(path, page)
    return path


def _deployed_params(metrics: dict) -> index.ScannParams | None:
    stored = metrics.get("index", {}).get("scann_params")
    return index.ScannParams(**stored) if stored else None


def _metrics_section(metrics: dict) -> str:
    parts = []
    if "evaluation" in metrics:
        results = metrics["evaluation"]
        names = list(results["retrieval"])
        parts.append(_table_section(
            f"Evaluation ({results.get('users', '?')} users, {results.get('catalog_items', '?')} catalog items)",
            ["system"] + names,
            [[SYSTEM_LABELS[system]] + [f"{results[system][name]:.4f}" for name in names] for system in SYSTEMS]))
    if "index" in metrics:
        rows = [[name, json.dumps(value)] for name, value in metrics["index"].items()]
        parts.append(_table_section("Index", ["measure", "value"], rows))
    return "\n".join(parts)


def _table_section(title: str, header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<section><h2>{html.escape(title)}</h2><table><tr>{head}</tr>{body}</table></section>"


def _figure_section(title: str, caption: str, figure: Figure) -> str:
    return (f"<section><h2>{html.escape(title)}</h2><p>{html.escape(caption)}</p>"
            f'<img alt="{html.escape(title)}" src="data:image/png;base64,{_png_base64(figure)}"></section>')


def _png_base64(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1150px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; font-size: 0.9em; }
th:first-child, td:first-child { text-align: left; }
img { max-width: 100%; }
"""


def _page(title: str, run_dir: pathlib.Path, sections: list[str]) -> str:
    written = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>Run folder {html.escape(str(run_dir.resolve()))}, written {written}.</p>\n"
            + "\n".join(sections) + "\n</body></html>\n")
