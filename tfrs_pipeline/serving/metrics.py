"""Prometheus metrics of the server: request counts and latencies per model, version, API and status.

Names follow TF Serving's exporter (``:tensorflow:serving:request_count``,
``:tensorflow:serving:request_latency`` in microseconds), so dashboards built for TF Serving read
ours too. The text exposition format is written by hand: it is a few lines, not worth a dependency.
"""
import bisect
import collections
import threading

REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
LATENCY_BUCKETS_MICROS = (500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000,
                          1_000_000, 5_000_000)


class ServerMetrics:
    """Thread-safe counters and latency histograms, rendered in the Prometheus text format."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts: collections.Counter = collections.Counter()
        self._latency_buckets: dict[tuple, list[int]] = {}
        self._latency_sums: collections.Counter = collections.Counter()

    def record(self, model_name: str, model_version: int | None, api: str, entrypoint: str, status: str,
               latency_s: float) -> None:
        """Counts one request; ``model_version`` is None when the request never reached a version."""
        version = "" if model_version is None else str(model_version)
        labels = (("model_name", model_name), ("model_version", version), ("API", api), ("entrypoint", entrypoint))
        latency_micros = latency_s * 1e6
        with self._lock:
            self._counts[labels + (("status", status),)] += 1
            buckets = self._latency_buckets.setdefault(labels, [0] * (len(LATENCY_BUCKETS_MICROS) + 1))
            buckets[bisect.bisect_left(LATENCY_BUCKETS_MICROS, latency_micros)] += 1
            self._latency_sums[labels] += latency_micros

    def render(self) -> str:
        """The metrics in the Prometheus text exposition format (version 0.0.4)."""
        with self._lock:
            lines = [f"# TYPE {REQUEST_COUNT} counter"]
            lines += [f"{REQUEST_COUNT}{_labels(labels)} {count}" for labels, count in sorted(self._counts.items())]
            lines.append(f"# TYPE {REQUEST_LATENCY} histogram")
            for labels, buckets in sorted(self._latency_buckets.items()):
                cumulative = 0
                for bound, count in zip(LATENCY_BUCKETS_MICROS + ("+Inf",), buckets):
                    cumulative += count
                    lines.append(f"{REQUEST_LATENCY}_bucket{_labels(labels + (('le', str(bound)),))} {cumulative}")
                lines.append(f"{REQUEST_LATENCY}_sum{_labels(labels)} {self._latency_sums[labels]:.0f}")
                lines.append(f"{REQUEST_LATENCY}_count{_labels(labels)} {cumulative}")
        return "\n".join(lines) + "\n"


def _labels(pairs: tuple) -> str:
    escaped = (value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for _, value in pairs)
    return "{" + ",".join(f'{name}="{value}"' for (name, _), value in zip(pairs, escaped)) + "}"
