"""``python -m tfrs_pipeline.features``: load an export's online feature store, push events to it.

    python -m tfrs_pipeline.features materialize --repo=export/feature_repo
    python -m tfrs_pipeline.features push --repo=export/feature_repo --events=new_events.csv

``materialize`` loads the online store from the export's tables and replays the events pushed since
(an export does this itself). ``push`` appends interactions (``user_id,item_id,timestamp``, CSV, TSV
or Parquet) to the users' recent histories: the next recommendation read through the store
reflects them. Bad input exits with status 2 and a message naming the file and line.
"""
from __future__ import annotations

import argparse
import sys

from tfrs_pipeline.data.errors import DataError
from tfrs_pipeline.features.events import materialize_and_replay, push_events, read_events, served_item_ids
from tfrs_pipeline.features.store import FeatureStoreError, OnlineFeatureStore


def build_flag_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tfrs_pipeline.features", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    materialize = commands.add_parser("materialize", help="load the online store from the export's tables")
    materialize.add_argument("--repo", required=True, help="the feature repository (<export_dir>/feature_repo)")
    push = commands.add_parser("push", help="append events to users' recent histories")
    push.add_argument("--repo", required=True, help="the feature repository (<export_dir>/feature_repo)")
    push.add_argument("--events", required=True, help="user_id,item_id,timestamp rows (.csv, .tsv or .parquet)")
    return parser


def main(argv: list[str] | None = None) -> int:
    flags = build_flag_parser().parse_args(argv)
    try:
        if flags.command == "materialize":
            replayed = materialize_and_replay(flags.repo)
            print(f"materialized {flags.repo}; replayed the event log: {replayed}")
        else:
            events, line_of_row = read_events(flags.events)
            store = OnlineFeatureStore(flags.repo)
            report = push_events(store, events, served_item_ids(store), source=flags.events, line_of_row=line_of_row)
            print(report)
            if report.late_events:
                print(f"features push: {report.late_events} events were older than the histories they belong to "
                      "and were skipped", file=sys.stderr)
    except (DataError, FeatureStoreError) as error:
        print(f"features {flags.command}: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
