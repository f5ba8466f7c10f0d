"""Approximate nearest neighbours at catalog scale: ScaNN vs exact brute force vs Faiss (IVF-Flat, HNSW).

Synthetic catalogs of 100K to 10M items are only informative if they are as hard to search as
trained item embeddings: those are clustered, anisotropic, and their norms grow with popularity,
which is what makes maximum-inner-product search differ from uniform noise. So the items (and the
queries) are sampled from a generator fitted to real embeddings: a truncated SVD of the implicit
user x item matrix of full MovieLens-1M, modelled as a mixture of full-covariance Gaussians (one per
k-means cluster, so each keeps the real local spectrum) whose samples are then given the real
distribution of norms by quantile mapping.

One run measures every peer on the same items and queries: recall@10 against exact search, QPS
for single queries and batches of 256, index build time and memory (process RSS retained after the
build and peak during it). ScaNN is built exactly as the export builds it (same ScaNN builder
calls as TFRS's ScaNN layer, parameters from ``index.scann_params_for``) and swept over the leaves
searched and the reordering pool, through ScaNN's native searcher as Faiss is through its own.
The run also times the TFRS layers the export ships (ScaNN vs brute force on the real MovieLens
catalog), since that is the latency a retrieval request pays.

    python bench/ann_benchmark.py --sizes=100000,1000000 --out=docs/ann_figures/ann_benchmark.json

writes the JSON and ``<out stem>.png`` (recall against QPS) and prints markdown tables.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import io
import json
import math
import os
import pathlib
import sys
import threading
import time
from typing import Callable, Iterator, Sequence

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import tfrs_pipeline  # noqa: E402,F401  (Keras 2 before TensorFlow loads)

# isort: split
import faiss  # noqa: E402
import psutil  # noqa: E402
import tensorflow as tf  # noqa: E402
from scann.scann_ops.py import scann_ops_pybind  # noqa: E402

from tfrs_pipeline import index  # noqa: E402
from tfrs_pipeline.atomic import write_bytes_atomically, write_json_atomically  # noqa: E402
from tfrs_pipeline.data.dataset import load_dataset  # noqa: E402

K = 10
BATCH_SIZE = 256
RECALL_TARGETS = (0.95, 0.99)
MIXTURE_COMPONENTS = 64  # closest to real ML-1M in recall at fixed ScaNN settings and popularity of top-10s
COVARIANCE_SHRINKAGE = 0.1  # towards the diagonal: a cluster holds a few hundred points in 64 dims
SINGLE_QUERY_SECONDS = 2.0  # time budget per operating point for one-at-a-time queries
BRUTE_FORCE_SCORE_BUDGET = 2**27  # floats in one query-batch x catalog-chunk score matrix (512 MB)
DIFFICULTY_BUILDS = 5
IVF_MAX_TRAINING_POINTS = 256_000  # k-means on more takes Faiss over 10 minutes at 10M items on 2 cores
PEERS = ("brute_force", "scann", "faiss_ivf_flat", "faiss_hnsw")


# ---------------------------------------------------------------- embeddings with a real structure

def movielens_embeddings(data_dir: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(item [3706, dim], user [6040, dim]) embeddings: SVD of the implicit ML-1M user x item matrix.

    ``data_dir`` is read as ``train`` reads it (``load_dataset``), so another data set's interactions
    give its own shapes.

    The singular values are split evenly (sqrt on each side), so user . item approximates the
    interaction matrix, as the towers of a trained two-tower model do.
    """
    interactions = load_dataset(data_dir).interactions
    _, user_rows = np.unique(interactions.user_id.to_numpy(), return_inverse=True)
    _, item_columns = np.unique(interactions.item_id.to_numpy(), return_inverse=True)
    user_item_matrix = np.zeros((user_rows.max() + 1, item_columns.max() + 1), np.float32)
    user_item_matrix[user_rows, item_columns] = 1.0
    left, singular_values, right = np.linalg.svd(user_item_matrix, full_matrices=False)
    scale = np.sqrt(singular_values[:dim])
    return (right[:dim].T * scale).astype(np.float32), (left[:, :dim] * scale).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class EmbeddingGenerator:
    """A Gaussian mixture fitted to real embeddings, with the real distribution of norms."""

    weights: np.ndarray  # [components]
    means: np.ndarray  # [components, dim]
    cholesky_factors: np.ndarray  # [components, dim, dim]
    sorted_real_norms: np.ndarray  # [real points]

    @classmethod
    def fit(cls, embeddings: np.ndarray, components: int, seed: int) -> "EmbeddingGenerator":
        kmeans = faiss.Kmeans(embeddings.shape[1], components, niter=25, seed=seed)
        kmeans.train(embeddings)
        _, assignment = kmeans.index.search(embeddings, 1)
        assignment = assignment[:, 0]
        weights, means, factors = [], [], []
        for component in range(components):
            members = embeddings[assignment == component].astype(np.float64)
            if len(members) < 2:
                continue
            covariance = np.cov(members, rowvar=False)
            covariance = (1 - COVARIANCE_SHRINKAGE) * covariance + COVARIANCE_SHRINKAGE * np.diag(np.diag(covariance))
            weights.append(len(members))
            means.append(members.mean(axis=0))
            factors.append(np.linalg.cholesky(covariance + 1e-9 * np.eye(len(covariance))))
        return cls(
            weights=np.asarray(weights, np.float64) / sum(weights),
            means=np.asarray(means),
            cholesky_factors=np.asarray(factors),
            sorted_real_norms=np.sort(np.linalg.norm(embeddings, axis=1)),
        )

    def sample(self, count: int, rng: np.random.Generator, chunk: int = 1_000_000) -> np.ndarray:
        """[count, dim] float32 samples; the i-th largest norm is the matching quantile of the real norms."""
        dim = self.means.shape[1]
        samples = np.empty((count, dim), np.float32)
        for start in range(0, count, chunk):
            stop = min(count, start + chunk)
            components = rng.choice(len(self.weights), size=stop - start, p=self.weights)
            block = samples[start:stop]
            for component in np.unique(components):
                rows = components == component
                noise = rng.standard_normal((int(rows.sum()), dim))
                block[rows] = self.means[component] + noise @ self.cholesky_factors[component].T
        norms = np.linalg.norm(samples, axis=1)
        quantiles = np.empty(count)
        quantiles[np.argsort(norms)] = np.linspace(0.0, 1.0, count)
        real_quantiles = np.linspace(0.0, 1.0, len(self.sorted_real_norms))
        target_norms = np.interp(quantiles, real_quantiles, self.sorted_real_norms)
        samples *= (target_norms / np.maximum(norms, 1e-12)).astype(np.float32)[:, None]
        return samples


def structure_summary(embeddings: np.ndarray, rng: np.random.Generator) -> dict:
    """Norm quantiles and the normalized top of the spectrum: what the generator must reproduce."""
    sample = embeddings[rng.choice(len(embeddings), size=min(len(embeddings), 20_000), replace=False)]
    singular_values = np.linalg.svd(sample - sample.mean(axis=0), compute_uv=False)
    norms = np.linalg.norm(sample, axis=1)
    return {
        "norm_quantiles_10_50_90_99": np.quantile(norms, [0.1, 0.5, 0.9, 0.99]).round(3).tolist(),
        "spectrum_top8_relative": (singular_values[:8] / singular_values[0]).round(3).tolist(),
    }


def search_difficulty(items: np.ndarray, queries: np.ndarray) -> dict:
    """How hard MIPS is on a catalog: ScaNN recall at fixed settings, and how popular the exact top-10s are.

    Comparing these on the real catalog and on a synthetic one of the same size checks that the
    generator reproduces what matters to an index, not only the marginal statistics.
    """
    exact_ids = np.argsort(-(queries @ items.T), axis=1)[:, :K]
    params = index.scann_params_for(len(items), K)
    leaves_options = sorted({min(params.num_leaves, f * params.num_leaves_to_search) for f in (1, 2, 4)})
    recall = {leaves: [] for leaves in leaves_options}
    for _ in range(DIFFICULTY_BUILDS):  # k-means trees differ from build to build: average a few
        searcher = (scann_ops_pybind.builder(items, K, "dot_product")
                    .tree(num_leaves=params.num_leaves, num_leaves_to_search=params.num_leaves_to_search)
                    .score_ah(params.dimensions_per_block).reorder(params.num_reordering_candidates).build())
        for leaves in leaves_options:
            found = searcher.search_batched(queries, leaves_to_search=leaves)[0].astype(np.int64)
            recall[leaves].append(recall_at_k(exact_ids, found))
    slots = np.sort(np.bincount(exact_ids.ravel(), minlength=len(items)))[::-1]
    return {
        "scann_recall_at_10_mean_of_builds": {
            f"leaves={leaves}/{params.num_leaves}": round(float(np.mean(values)), 3)
            for leaves, values in recall.items()
        },
        "top10_slots_held_by_top1pct_items": round(float(slots[:max(1, len(items) // 100)].sum() / slots.sum()), 3),
        "distinct_items_in_top10s": int((slots > 0).sum()),
    }


# ---------------------------------------------------------------- measuring

class MemoryWatch:
    """Process RSS before, at peak during, and after a block (sampled every 20 ms)."""

    def __enter__(self) -> "MemoryWatch":
        gc.collect()
        self._process = psutil.Process()
        self.start_bytes = self.peak_bytes = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        self.end_bytes = self._process.memory_info().rss
        self.peak_bytes = max(self.peak_bytes, self.end_bytes)


@dataclasses.dataclass
class OperatingPoint:
    """One setting of an index: how to search a batch and one query."""

    setting: str
    search_batch: Callable[[np.ndarray], np.ndarray]  # [b, dim] -> [b, K] item positions
    search_one: Callable[[np.ndarray], np.ndarray]  # [dim] -> [K]
    is_export_default: bool = False


def batched_qps(search_batch: Callable, queries: np.ndarray) -> tuple[np.ndarray, float]:
    """All queries in batches of BATCH_SIZE (after one warm-up batch): (ids [q, K], queries per second)."""
    search_batch(queries[:BATCH_SIZE])
    started = time.perf_counter()
    ids = np.concatenate([search_batch(queries[s:s + BATCH_SIZE]) for s in range(0, len(queries), BATCH_SIZE)])
    return ids, len(queries) / (time.perf_counter() - started)


def single_query_qps(search_one: Callable, queries: np.ndarray) -> float:
    """Queries one at a time for about SINGLE_QUERY_SECONDS (at least 5 queries)."""
    search_one(queries[0])
    started, done = time.perf_counter(), 0
    while done < len(queries) and (done < 5 or time.perf_counter() - started < SINGLE_QUERY_SECONDS):
        search_one(queries[done])
        done += 1
    return done / (time.perf_counter() - started)


def recall_at_k(exact_ids: np.ndarray, approx_ids: np.ndarray) -> float:
    """Mean fraction of the exact top-k found (vectorized: ids within a row are distinct)."""
    return float((exact_ids[:, :, None] == approx_ids[:, None, :]).any(axis=2).mean())


# ---------------------------------------------------------------- the peers

def build_brute_force(items: np.ndarray, threads: int) -> Iterator[OperatingPoint]:
    """Exact search as the brute-force export does it: TensorFlow matmul + top_k, catalog in chunks."""
    chunk_rows = max(K, BRUTE_FORCE_SCORE_BUDGET // BATCH_SIZE)
    chunks = [tf.constant(items[s:s + chunk_rows]) for s in range(0, len(items), chunk_rows)]
    offsets = [s for s in range(0, len(items), chunk_rows)]

    @tf.function(input_signature=[tf.TensorSpec([None, items.shape[1]], tf.float32)])
    def exact_top_k(queries):
        scores, ids = [], []
        for offset, chunk in zip(offsets, chunks):
            chunk_scores, chunk_ids = tf.math.top_k(tf.matmul(queries, chunk, transpose_b=True), K)
            scores.append(chunk_scores)
            ids.append(chunk_ids + offset)
        best_scores, best = tf.math.top_k(tf.concat(scores, axis=1), K)
        return tf.gather(tf.concat(ids, axis=1), best, batch_dims=1)

    yield OperatingPoint(
        setting="exact",
        search_batch=lambda queries: exact_top_k(queries).numpy(),
        search_one=lambda query: exact_top_k(query[None])[0].numpy(),
    )


def build_scann(items: np.ndarray, threads: int) -> Iterator[OperatingPoint]:
    """ScaNN with the export's parameters, swept over leaves searched and reordering pool."""
    params = index.scann_params_for(len(items), K)
    searcher = (
        scann_ops_pybind.builder(items, K, "dot_product")
        .tree(num_leaves=params.num_leaves, num_leaves_to_search=params.num_leaves_to_search,
              training_iterations=params.training_iterations)
        .score_ah(params.dimensions_per_block)
        .reorder(params.num_reordering_candidates)
        .set_n_training_threads(threads)
        .build()
    )
    leaves_options = sorted({min(params.num_leaves, max(1, round(params.num_leaves_to_search * f)))
                             for f in (0.125, 0.25, 0.5, 1, 2, 4)})
    for reorder in sorted({max(K, params.num_reordering_candidates // 3), params.num_reordering_candidates,
                           3 * params.num_reordering_candidates}):
        for leaves in leaves_options:
            options = {"leaves_to_search": leaves, "pre_reorder_num_neighbors": reorder}
            yield OperatingPoint(
                setting=f"leaves={leaves}/{params.num_leaves} reorder={reorder}",
                search_batch=lambda q, o=options: searcher.search_batched_parallel(q, K, **o)[0],
                search_one=lambda q, o=options: searcher.search(q, K, **o)[0],
                is_export_default=(leaves, reorder) == (params.num_leaves_to_search, params.num_reordering_candidates),
            )


def _faiss_points(faiss_index, knob: str, values: Sequence[int], apply: Callable) -> Iterator[OperatingPoint]:
    for value in values:
        def search_batch(queries, value=value):
            apply(value)
            return faiss_index.search(queries, K)[1]

        def search_one(query, value=value):
            apply(value)
            return faiss_index.search(query[None], K)[1][0]

        yield OperatingPoint(setting=f"{knob}={value}", search_batch=search_batch, search_one=search_one)


def build_faiss_ivf_flat(items: np.ndarray, threads: int) -> Iterator[OperatingPoint]:
    """IVF-Flat with Faiss's guidance of 4*sqrt(n) lists, trained on 50 points per list (at most 256K)."""
    faiss.omp_set_num_threads(threads)
    num_lists = max(1, round(4 * math.sqrt(len(items))))
    quantizer = faiss.IndexFlatIP(items.shape[1])
    ivf = faiss.IndexIVFFlat(quantizer, items.shape[1], num_lists, faiss.METRIC_INNER_PRODUCT)
    training_size = min(len(items), 50 * num_lists, IVF_MAX_TRAINING_POINTS)
    training = items[np.random.default_rng(0).choice(len(items), size=training_size, replace=False)]
    ivf.train(training)
    ivf.add(items)
    probes = [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if p <= num_lists]

    def set_probes(value):
        ivf.nprobe = value

    yield from _faiss_points(ivf, f"nlist={num_lists} nprobe", probes, set_probes)


def build_faiss_hnsw(items: np.ndarray, threads: int) -> Iterator[OperatingPoint]:
    """HNSW-Flat (M=32, efConstruction=40, Faiss's defaults) for inner product."""
    faiss.omp_set_num_threads(threads)
    hnsw = faiss.IndexHNSWFlat(items.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.add(items)

    def set_ef(value):
        hnsw.hnsw.efSearch = value

    yield from _faiss_points(hnsw, "M=32 efSearch", (16, 32, 64, 128, 256, 512), set_ef)


BUILDERS = {
    "brute_force": build_brute_force,
    "scann": build_scann,
    "faiss_ivf_flat": build_faiss_ivf_flat,
    "faiss_hnsw": build_faiss_hnsw,
}


def measure_peer(peer: str, items: np.ndarray, queries: np.ndarray, exact_ids: np.ndarray | None,
                 threads: int) -> dict:
    """Builds one peer's index (timed, memory watched) and measures every operating point."""
    load_before = os.getloadavg()[0]
    with MemoryWatch() as memory:
        started = time.perf_counter()
        points = list(BUILDERS[peer](items, threads))  # builders index before their first yield
        build_seconds = time.perf_counter() - started
    measured = []
    for point in points:
        ids, batch_qps = batched_qps(point.search_batch, queries)
        measured.append({
            "setting": point.setting,
            "export_default": point.is_export_default,
            "recall_at_10": 1.0 if exact_ids is None else recall_at_k(exact_ids, ids),
            "qps_batch": batch_qps,
            "qps_single": single_query_qps(point.search_one, queries),
            "ids": ids,
        })
    result = {
        "peer": peer,
        "build_seconds": build_seconds,
        "rss_retained_mb": (memory.end_bytes - memory.start_bytes) / 2**20,
        "rss_peak_during_build_mb": (memory.peak_bytes - memory.start_bytes) / 2**20,
        "process_rss_peak_mb": memory.peak_bytes / 2**20,
        "load_average_1min_before": load_before,
        "points": measured,
    }
    del points
    gc.collect()
    return result


def best_at_recall(peer_result: dict, target: float, qps_key: str) -> dict | None:
    """The operating point with the highest QPS among those reaching the target recall."""
    reaching = [p for p in peer_result["points"] if p["recall_at_10"] >= target]
    return max(reaching, key=lambda p: p[qps_key]) if reaching else None


def run_size(size: int, item_generator: EmbeddingGenerator, user_generator: EmbeddingGenerator,
             peers: Sequence[str], args: argparse.Namespace) -> dict:
    """Samples a catalog of `size` items and measures every peer on it."""
    rng = np.random.default_rng(args.seed + size)
    started = time.perf_counter()
    items = item_generator.sample(size, rng)
    queries = user_generator.sample(args.num_queries, rng)
    print(f"[{size:,}] sampled items in {time.perf_counter() - started:.1f}s; load {os.getloadavg()}", flush=True)
    results, exact_ids = [], None
    for peer in peers:
        if peer == "faiss_hnsw" and size > args.hnsw_max_size:
            print(f"[{size:,}] skipping faiss_hnsw (size > --hnsw_max_size={args.hnsw_max_size:,})", flush=True)
            continue
        peer_result = measure_peer(peer, items, queries, exact_ids, args.threads)
        if peer == "brute_force":
            exact_ids = peer_result["points"][0]["ids"]
        for point in peer_result["points"]:
            del point["ids"]
        print(f"[{size:,}] {peer}: built in {peer_result['build_seconds']:.1f}s, "
              f"peak +{peer_result['rss_peak_during_build_mb']:.0f} MB; "
              + "; ".join(f"{p['setting']}: R@10={p['recall_at_10']:.3f} {p['qps_batch']:.0f}/{p['qps_single']:.0f} qps"
                          for p in peer_result["points"]), flush=True)
        results.append(peer_result)
    return {"num_items": size, "peers": results, "ratios": ratios(results),
            "structure": structure_summary(items, rng), "load_average_after": os.getloadavg()}


def ratios(peer_results: list[dict]) -> dict:
    """QPS of each approximate peer at recall >= target, divided by brute force's QPS (recall 1)."""
    by_peer = {r["peer"]: r for r in peer_results}
    exact = by_peer["brute_force"]["points"][0]
    summary = {}
    for target in RECALL_TARGETS:
        for peer, result in by_peer.items():
            if peer == "brute_force":
                continue
            for mode in ("batch", "single"):
                best = best_at_recall(result, target, f"qps_{mode}")
                summary[f"{peer}/{mode}/recall>={target}"] = None if best is None else {
                    "setting": best["setting"], "recall_at_10": best["recall_at_10"],
                    "qps": best[f"qps_{mode}"], "x_brute_force": best[f"qps_{mode}"] / exact[f"qps_{mode}"],
                }
    return summary


# ---------------------------------------------------------------- the exported layers on MovieLens

def movielens_layer_latency(item_embeddings: np.ndarray, user_embeddings: np.ndarray, repeats: int = 200) -> dict:
    """Latency of the TFRS top-k layers the export ships, on the real ML-1M catalog (tuned ScaNN vs exact).

    Each layer is called through a ``tf.function``, as a SavedModel signature calls it.
    """
    item_positions = tf.range(len(item_embeddings))
    queries = tf.constant(user_embeddings)
    params = index.tune_scann(item_embeddings, queries, K)
    layers = {kind: index.build_top_k(kind, item_positions, item_embeddings, K, params=params)
              for kind in index.TOP_K_KINDS}
    _, exact_ids = layers["brute_force"](queries)
    report = {"num_items": len(item_embeddings), "scann_params": dataclasses.asdict(params)}
    for kind, layer in layers.items():
        search = tf.function(lambda q, layer=layer: layer(q)[1])
        approx_ids = search(queries).numpy()
        timings = {}
        for name, batch in (("single", 1), (f"batch{BATCH_SIZE}", BATCH_SIZE)):
            search(queries[:batch])
            seconds = []
            for repeat in range(repeats):
                start = (repeat * batch) % (len(user_embeddings) - batch)
                started = time.perf_counter()
                search(queries[start:start + batch])
                seconds.append(time.perf_counter() - started)
            timings[f"{name}_p50_ms"] = 1e3 * float(np.median(seconds))
            timings[f"{name}_p99_ms"] = 1e3 * float(np.quantile(seconds, 0.99))
        timings["top10_agreement_all_users"] = index.top_k_agreement(exact_ids.numpy(), approx_ids)
        report[kind] = timings
    return report


# ---------------------------------------------------------------- reporting

def markdown_tables(results: dict) -> str:
    lines = ["| items | peer | setting | recall@10 | QPS batch 256 | QPS single | x brute force (batch / single) "
             "| build s | RSS retained MB | RSS peak build MB |",
             "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for size_result in results["sizes"]:
        exact = size_result["peers"][0]["points"][0]
        for peer in size_result["peers"]:
            shown = [p for p in peer["points"] if p["export_default"]]
            for target in RECALL_TARGETS:
                best = best_at_recall(peer, target, "qps_batch")
                if best is not None and best not in shown:
                    shown.append(best)
            if not any(p["recall_at_10"] >= RECALL_TARGETS[0] for p in shown):  # the peer never got there
                most_accurate = max(peer["points"], key=lambda p: p["recall_at_10"])
                if most_accurate not in shown:
                    shown.append(most_accurate)
            for point in shown:
                label = point["setting"] + (" (export default)" if point["export_default"] else "")
                lines.append(
                    f"| {size_result['num_items']:,} | {peer['peer']} | {label} | {point['recall_at_10']:.3f} "
                    f"| {point['qps_batch']:,.0f} | {point['qps_single']:,.0f} "
                    f"| {point['qps_batch'] / exact['qps_batch']:.1f} "
                    f"/ {point['qps_single'] / exact['qps_single']:.1f} "
                    f"| {peer['build_seconds']:.1f} | {peer['rss_retained_mb']:,.0f} "
                    f"| {peer['rss_peak_during_build_mb']:,.0f} |"
                )
    latency = results.get("movielens_layers")
    if latency:
        lines += ["", f"TFRS layers on the real ML-1M catalog ({latency['num_items']} items), "
                      f"ScaNN {latency['scann_params']}:",
                  "", "| layer | single p50 / p99 ms | batch 256 p50 / p99 ms | top-10 agreement (6040 users) |",
                  "| --- | ---: | ---: | ---: |"]
        for kind in index.TOP_K_KINDS:
            t = latency[kind]
            lines.append(f"| {kind} | {t['single_p50_ms']:.3f} / {t['single_p99_ms']:.3f} "
                         f"| {t[f'batch{BATCH_SIZE}_p50_ms']:.2f} / {t[f'batch{BATCH_SIZE}_p99_ms']:.2f} "
                         f"| {t['top10_agreement_all_users']:.4f} |")
    return "\n".join(lines)


def pareto_frontier(recall: Sequence[float], qps: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both recall and QPS, by increasing recall."""
    order = sorted(range(len(recall)), key=lambda i: (-recall[i], -qps[i]))
    frontier, best_qps = [], -1.0
    for i in order:
        if qps[i] > best_qps:
            frontier.append(i)
            best_qps = qps[i]
    return frontier[::-1]


def plot(results: dict, path: pathlib.Path) -> None:
    """Recall@10 against QPS, batched (top row) and single query (bottom row), one column per size.

    Lines join each peer's best settings (its Pareto frontier); faint dots are all settings."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = results["sizes"]
    figure, axes = plt.subplots(2, len(sizes), figsize=(5.5 * len(sizes), 8), squeeze=False)
    for column, size_result in enumerate(sizes):
        for row, mode in enumerate(("batch", "single")):
            axis = axes[row][column]
            for peer in size_result["peers"]:
                recall = [p["recall_at_10"] for p in peer["points"]]
                qps = [p[f"qps_{mode}"] for p in peer["points"]]
                frontier = pareto_frontier(recall, qps)
                line, = axis.plot([recall[i] for i in frontier], [qps[i] for i in frontier], marker="o",
                                  label=peer["peer"])
                axis.scatter(recall, qps, s=12, alpha=0.35, color=line.get_color())
            axis.set_yscale("log")
            axis.set_xlabel("recall@10 vs exact")
            axis.set_ylabel(f"QPS ({'batches of 256' if mode == 'batch' else 'one query at a time'})")
            axis.set_title(f"{size_result['num_items']:,} items, dim {results['config']['dim']}")
            axis.grid(True, which="both", alpha=0.3)
            axis.legend()
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=110)
    write_bytes_atomically(path, png.getvalue())


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated catalog sizes")
    parser.add_argument("--dim", type=int, default=64, help="embedding dimension (SVD rank)")
    parser.add_argument("--out", default=str(REPO_ROOT / "docs" / "ann_figures" / "ann_benchmark.json"),
                        help="JSON results; the plot is written next to it as <stem>.png")
    default_data_dir = str(REPO_ROOT.parent / "shared" / "data" / "ml-1m")
    parser.add_argument("--data_dir", default=os.environ.get("TFRS_PIPELINE_DATA_DIR", default_data_dir),
                        help="MovieLens-1M folder or zip (the real embeddings the generator is fitted to)")
    parser.add_argument("--peers", default=",".join(PEERS),
                        help=f"subset of {','.join(PEERS)} (brute_force first: it is the ground truth)")
    parser.add_argument("--num_queries", type=int, default=1024)
    parser.add_argument("--hnsw_max_size", type=int, default=1_000_000,
                        help="skip HNSW above this size (its build is the slowest)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for every peer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip_movielens_layers", action="store_true", help="do not time the exported TFRS layers")
    parser.add_argument("--replot", action="store_true", help="only redraw the plot and tables from the --out JSON")
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.peers = args.peers.split(",")
    if args.peers[0] != "brute_force" or not set(args.peers) <= set(PEERS):
        parser.error(f"--peers must start with brute_force and name only {PEERS}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.replot:
        results = json.loads(pathlib.Path(args.out).read_text())
        plot(results, pathlib.Path(args.out).with_suffix(".png"))
        print(markdown_tables(results))
        return
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    item_embeddings, user_embeddings = movielens_embeddings(args.data_dir, args.dim)
    item_generator = EmbeddingGenerator.fit(item_embeddings, MIXTURE_COMPONENTS, args.seed)
    user_generator = EmbeddingGenerator.fit(user_embeddings, MIXTURE_COMPONENTS, args.seed)
    results = {
        "config": {key: value for key, value in vars(args).items()},
        "machine": {"cpus": os.cpu_count(), "memory_gb": psutil.virtual_memory().total / 2**30,
                    "load_average_at_start": os.getloadavg()},
        "real_structure": {"items": structure_summary(item_embeddings, rng),
                           "users": structure_summary(user_embeddings, rng)},
        "sizes": [],
    }
    results["generator_fidelity"] = {
        "real": search_difficulty(item_embeddings, user_embeddings),
        "synthetic": search_difficulty(item_generator.sample(len(item_embeddings), rng),
                                       user_generator.sample(len(user_embeddings), rng)),
    }
    print(f"generator fidelity (real vs synthetic at {len(item_embeddings)} items): {results['generator_fidelity']}",
          flush=True)
    if not args.skip_movielens_layers:
        results["movielens_layers"] = movielens_layer_latency(item_embeddings, user_embeddings)
    for size in args.sizes:
        results["sizes"].append(run_size(size, item_generator, user_generator, args.peers, args))
        write_json_atomically(out, results)
    plot(results, out.with_suffix(".png"))
    print(markdown_tables(results))
    print(f"\nwrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
