"""``python -m tfrs_pipeline.catalog refresh``: serve items added since the export, without retraining.

    python -m tfrs_pipeline.catalog refresh --export_dir=export --items=new_items.csv

The items file holds ``item_id`` and the export's item features (its ``schema.json`` names them),
as CSV, TSV or Parquet. Items the catalog lacks are embedded with the export's frozen item tower and
published, with the old ones, as the next retrieval version (``export/catalog_refresh.py``); the
items file gains them, so clients show their titles and events may name them.
"""
from __future__ import annotations

import argparse
import sys

from tfrs_pipeline.data.errors import DataError


def build_flag_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tfrs_pipeline.catalog", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    refresh = commands.add_parser("refresh", help="index new items and publish a new retrieval version")
    refresh.add_argument("--export_dir", required=True, help="the export (the training run's --export_dir)")
    refresh.add_argument("--items", required=True, help="item_id and the export's item features (.csv, .tsv, .parquet)")
    refresh.add_argument("--scann_target_recall", type=float, default=0.99,
                         help="share of queries whose ScaNN top-10 must equal exact search")
    return parser


def main(argv: list[str] | None = None) -> int:
    flags = build_flag_parser().parse_args(argv)
    from tfrs_pipeline.export.catalog_refresh import refresh_catalog  # TensorFlow loads only for a valid command

    try:
        print(refresh_catalog(flags.export_dir, flags.items, flags.scann_target_recall))
    except (DataError, FileNotFoundError) as error:
        print(f"catalog refresh: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
