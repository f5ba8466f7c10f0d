"""The training report of a real small run: written by the run, self-contained, holding its plots and numbers."""
import base64
import io
import json
import re

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from tfrs_pipeline import report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EMBEDDED_PNG = re.compile(r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def embedded_images(page: str) -> dict[str, bytes]:
    return {title: base64.b64decode(data) for title, data in EMBEDDED_PNG.findall(page)}


def test_the_run_writes_a_self_contained_report_with_its_plots_and_metrics(small_export):
    export_dir, metrics = small_export
    page = (export_dir / "runs" / "1" / "report.html").read_text(encoding="utf-8")

    images = embedded_images(page)
    assert set(images) == {"Training", "Accuracy against list length", "Popularity bias", "Quality per segment",
                           "ScaNN index"}
    for png in images.values():
        assert png.startswith(PNG_SIGNATURE)
        width, height = Image.open(io.BytesIO(png)).size
        assert width >= 400 and height >= 300
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing to fetch: no network, no files beside it

    for system in ("retrieval", "two_stage", "popularity"):
        for name in ("hr@10", "ndcg@10", "mrr", "coverage"):
            assert f"<td>{metrics['evaluation'][system][name]:.4f}</td>" in page
    assert "<td>max_users</td><td>150</td>" in page
    assert f"{metrics['evaluation']['users']} users" in page


def test_scann_sweep_starts_exact_and_reaches_the_deployed_recall(small_export):
    export_dir, metrics = small_export
    run = report.load_run(export_dir / "runs" / "1")
    deployed = report.index.ScannParams(**metrics["index"]["scann_params"])
    points = report.scann_tradeoff(run.embeddings["candidate_embeddings"], run.embeddings["query_embeddings"],
                                   deployed)
    assert points[0].params is None and points[0].recall_at_10 == 1.0
    assert len(points) > 5 and all(0.0 <= point.recall_at_10 <= 1.0 and point.single_query_ms > 0
                                   for point in points)
    at_deployed = [point for point in points if point.params == deployed]
    assert at_deployed and at_deployed[0].recall_at_10 >= 0.95
    fewest_leaves = min(points[1:], key=lambda point: point.params.num_leaves_to_search)
    assert fewest_leaves.recall_at_10 < at_deployed[0].recall_at_10
    assert isinstance(report.plot_scann_tradeoff(points, deployed), Figure)


def test_accuracy_curves_are_the_evaluation_metrics_at_every_k(small_export):
    export_dir, metrics = small_export
    run = report.load_run(export_dir / "runs" / "1")
    figure = report.plot_accuracy_at_k(run.details)
    hit_axes = figure.axes[0]
    for line, system in zip(hit_axes.get_lines(), report.SYSTEMS):
        cutoffs, hit_rates = line.get_data()
        assert list(cutoffs) == list(range(1, report.MAX_CUTOFF + 1))
        assert np.all(np.diff(hit_rates) >= 0)
        for k in (10, 50, 200):
            assert hit_rates[k - 1] == metrics["evaluation"][system][f"hr@{k}"]


def test_a_run_without_held_out_items_gets_a_report_of_its_training(small_export, tmp_path):
    export_dir, metrics = small_export
    training_only = {name: value for name, value in metrics.items() if name != "evaluation"}
    (tmp_path / "metrics.json").write_text(json.dumps(training_only))
    (tmp_path / "config.json").write_text((export_dir / "runs" / "1" / "config.json").read_text())

    path = report.write_report(tmp_path)

    page = path.read_text(encoding="utf-8")
    assert path == tmp_path / "report.html"
    assert list(embedded_images(page)) == ["Training"]
    assert "<td>holdout</td>" in page and "Evaluation" not in page
    assert sorted(item.name for item in tmp_path.iterdir()) == ["config.json", "metrics.json", "report.html"]
