"""The preprocessing of any data set as an Apache Beam pipeline: the in-memory data path, on any Beam runner.

    python -m tfrs_pipeline.data.beam_pipeline --data_dir=shop --output_dir=examples \
        --direct_num_workers=2 --direct_running_mode=multi_processing
    python -m tfrs_pipeline.train --data_dir=shop --examples_dir=examples

``--data_dir`` is what ``train`` takes: an own-data folder (README, "Your own data"), or a MovieLens
release, which the adapter converts to the same contract first (``data/dataset.py``; on this
machine, into a temporary folder: the releases are small). Nothing here knows a data set's columns.

Beam distributes the work; what the work *is* stays in the modules the in-memory path runs, so the
two paths cannot drift apart:
  - the interactions file is read in pieces of whole lines (Parquet: row groups), and each piece is
    parsed, checked and filtered by the own-data reader (``interactions.read_interaction_lines``;
    errors name the file and the line in the whole file);
  - every interaction carries its position in the file, the tie-break of equal timestamps, so a
    user's interactions are put back in file order after the shuffle and `split.user_sequences`
    orders them exactly as it does on the whole table;
  - per user (a GroupByKey), the data set's split rule (``split.hold_out``), then ``leave_last_out``
    and ``training_windows`` build the same training windows as `pipelines/two_stage.py` (user
    features are looked up per batch at training time, not stored with every window).
The interactions, which grow with traffic, are the only table that is shuffled; the configuration
and the items file's ids (the catalog's order) are read where the pipeline is built. Output:
sharded TFRecords, vocabularies and a manifest (`data/tfrecords.py` has the layout).

The runner is a flag. ``--runner=DirectRunner`` (the default) runs on this machine on Beam's
FnApiRunner, with ``--direct_num_workers=N --direct_running_mode=multi_processing`` for N worker
processes (Beam's own DirectRunner first tries the Prism runner, which downloads a binary). Any other
runner gets the pipeline as is, with its options passed through, for example
``--runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp --output_dir=gs://B/examples``,
``--runner=FlinkRunner --flink_master=HOST:8081`` or ``--runner=SparkRunner``. Flink and Spark run
Python pipelines through Beam's portable job server, a Java jar that Beam fetches from Maven Central
on first use (``~/.apache_beam/cache/jars/beam-runners-flink-2.2-job-server-<beam version>.jar``, or
``--flink_job_server_jar=PATH``); without network access to it, stage the jar there first. The
folder's configuration and items file are read where the pipeline is launched and the interactions file by the workers
(through Beam's file systems), so on a remote runner ``--data_dir`` is a folder both see, such as a
bucket mounted at the same path (gcsfuse); reading the contract from ``gs://`` paths directly is not
built yet.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence

import apache_beam as beam
import numpy as np
import pandas as pd
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

import tfrs_pipeline  # noqa: F401  (selects Keras 2 before TensorFlow is imported)
from tfrs_pipeline.config import HOLDOUTS
from tfrs_pipeline.data import tfrecords
from tfrs_pipeline.data.dataset import load_dataset, write_interaction_folder
from tfrs_pipeline.data.errors import DataError
from tfrs_pipeline.data.interactions import (
    catalog_item_ids,
    first_user_ids,
    interactions_file,
    is_interaction_folder,
    read_interaction_lines,
    read_interaction_rows,
)
from tfrs_pipeline.data.schema import ITEM_ID, RATING, TIME_CUT, TIMESTAMP, USER_ID, SplitRule, read_dataset_config
from tfrs_pipeline.data.sequence_examples import training_windows
from tfrs_pipeline.data.split import UserSequences, hold_out, leave_last_out, user_order, user_sequences

LOCAL_RUNNER = "DirectRunner"
CHUNK_BYTES = 4 << 20  # about 150K interactions per parse task

# One interaction on its way to its user's group: (position in the file, item id, rating, timestamp).
Interaction = tuple[int, str, float, int]


def build_pipeline(pipeline: beam.Pipeline, data_dir: str, output_dir: str, *, max_length: int, holdout: str,
                   max_users: int | None, num_shards: int, chunk_bytes: int = CHUNK_BYTES,
                   source: str | None = None) -> None:
    """Adds the preprocessing to ``pipeline``: read, split, window, write TFRecords, vocabularies, manifest.

    Args:
      pipeline: the pipeline to extend (its runner decides where it runs).
      data_dir: an own-data folder (``interactions.*``, optionally ``items.*`` and a ``dataset.yaml``).
      output_dir: receives the layout described in `tfrecords`.
      max_length, holdout, max_users: as the `TwoStageConfig` fields of the same names, which they must
        match for `train --examples_dir` to accept the output.
      num_shards: TFRecord shards of examples (0 lets the runner decide).
      chunk_bytes: size of the pieces of a CSV or TSV interactions file that are parsed in parallel.
      source: what the manifest names as the data (default: ``data_dir``).

    Raises:
      DataError: no interactions file, a bad configuration, or a split rule this pipeline cannot apply
        per user (a ``time_cut`` by ``test_share`` needs every timestamp first: give ``test_start``).
    """
    config = read_dataset_config(data_dir)
    if config.split.kind == TIME_CUT and config.split.test_start is None:
        raise config.fail("split", "the Beam preprocessing splits each user on their own, so a time_cut needs "
                                   "its test_start (a test_share needs every timestamp first)")
    path = str(interactions_file(data_dir))
    chunks = pipeline | "Interactions" >> beam.Create([path])
    if path.endswith(".parquet"):
        chunks = chunks | "RowGroups" >> beam.FlatMap(_row_groups)
    else:
        chunks = chunks | "ReadChunks" >> beam.FlatMap(_line_chunks, chunk_bytes)
    interactions = (chunks | "SpreadChunks" >> beam.Reshuffle()
                    | "ParseInteractions" >> beam.FlatMap(_parse_chunk, path, config))
    item_ids = (interactions
                | "ItemPositions" >> beam.Map(lambda row: (row[1][1], row[1][0]))
                | "FirstPosition" >> beam.CombinePerKey(min)
                | "ItemsChosen" >> beam.combiners.ToList()
                | "CatalogOrder" >> beam.Map(_catalog_order, list(catalog_item_ids(data_dir))))
    by_user = interactions | "GroupByUser" >> beam.GroupByKey()
    if max_users is not None:
        kept = (by_user | "AllUsers" >> beam.Keys() | "AllUserIds" >> beam.combiners.ToList()
                | "FirstUsers" >> beam.Map(lambda user_ids: set(first_user_ids(user_ids, max_users))))
        by_user = by_user | "KeepFirstUsers" >> beam.Filter(lambda user, kept_ids: user[0] in kept_ids,
                                                            kept_ids=beam.pvalue.AsSingleton(kept))
    examples = by_user | "TrainingWindows" >> beam.FlatMap(_user_training_examples, max_length, holdout,
                                                           config.split)
    shards = examples | "WriteExamples" >> beam.io.WriteToTFRecord(
        f"{output_dir}/examples/train", file_name_suffix=".tfrecord", num_shards=num_shards)

    user_ids = (by_user | "UserIds" >> beam.Keys()
                | "UserVocabulary" >> beam.combiners.ToList()
                | "OrderUsers" >> beam.Map(_user_vocabulary_order))
    vocabulary_files = [
        ids | f"Lines{name}" >> beam.FlatMap(lambda ordered: ordered)
        | f"Write{name}" >> beam.io.WriteToText(f"{output_dir}/{relative_path}", shard_name_template="",
                                               num_shards=1)
        for name, ids, relative_path in (("Users", user_ids, tfrecords.USER_VOCABULARY),
                                         ("Items", item_ids, tfrecords.ITEM_VOCABULARY))
    ]
    count = beam.combiners.Count.Globally
    settings = {"max_length": max_length, "holdout": holdout, "max_users": max_users}
    _ = (pipeline | "Manifest" >> beam.Create([output_dir])
         | "WriteManifest" >> beam.Map(
             _write_manifest, source or data_dir, settings,
             shards=beam.pvalue.AsList(shards),
             num_examples=beam.pvalue.AsSingleton(examples | "CountExamples" >> count()),
             num_interactions=beam.pvalue.AsSingleton(interactions | "CountInteractions" >> count()),
             user_ids=beam.pvalue.AsSingleton(user_ids), item_ids=beam.pvalue.AsSingleton(item_ids),
             vocabulary_files=beam.pvalue.AsList(tuple(vocabulary_files) | "VocabularyFiles" >> beam.Flatten())))


def _line_chunks(path: str, chunk_bytes: int) -> Iterator[tuple[bytes, int, bytes]]:
    """(header, first line number, whole lines) pieces of a text file after its header line, read
    sequentially so that line numbers are exact."""
    if not FileSystems.exists(path):
        raise DataError(path, None, None, "file not found")
    with FileSystems.open(path) as file:
        header = file.readline().rstrip(b"\r\n")
        next_line, carry = 2, b""
        while block := file.read(chunk_bytes):
            data = carry + block
            end = data.rfind(b"\n") + 1
            if end:
                yield header, next_line, data[:end]
                next_line += data.count(b"\n", 0, end)
            carry = data[end:]
    if not header.strip():
        raise DataError(path, None, None, "file is empty")
    if carry.strip() or next_line == 2:
        yield header, next_line, carry  # the last line without a newline; or no rows, which the reader refuses


def _row_groups(path: str) -> Iterator[tuple[int, int]]:
    """(row group, its first row) of a Parquet file: the pieces its workers read."""
    import pyarrow.parquet as parquet

    with FileSystems.open(path) as file:
        metadata = parquet.ParquetFile(file).metadata
    first_row = 0
    for group in range(metadata.num_row_groups):
        yield group, first_row
        first_row += metadata.row_group(group).num_rows


def _parse_chunk(chunk: tuple, path: str, config) -> Iterator[tuple[str, Interaction]]:
    """Parses a piece with the own-data reader; yields (user_id, (position, item_id, rating, timestamp))."""
    if len(chunk) == 3:
        header, first_line, lines = chunk
        interactions, positions = read_interaction_lines(path, header, lines, first_line, config)
    else:
        import pyarrow.parquet as parquet

        group, first_row = chunk
        with FileSystems.open(path) as file:
            rows = parquet.ParquetFile(file).read_row_group(group).to_pandas()
        interactions, positions = read_interaction_rows(path, rows, first_row, config)
    for user_id, position, item_id, rating, timestamp in zip(
            interactions[USER_ID], positions.tolist(), interactions[ITEM_ID], interactions[RATING].tolist(),
            interactions[TIMESTAMP].tolist()):
        yield user_id, (position, item_id, rating, timestamp)


def _user_training_examples(user_interactions: tuple[str, Iterable[Interaction]], max_length: int, holdout: str,
                            rule: SplitRule) -> Iterator[bytes]:
    """One user's training windows, built by the in-memory path's functions, as serialized examples."""
    user_id, interactions = user_interactions
    _, item_ids, ratings, timestamps = zip(*sorted(interactions))  # file order, before the stable sort
    table = pd.DataFrame({USER_ID: user_id, ITEM_ID: list(item_ids), RATING: np.asarray(ratings, np.float32),
                          TIMESTAMP: np.asarray(timestamps, np.int64)})
    train = retrieval_training_sequences(user_sequences(table), holdout, rule)
    examples = training_windows(train.user_ids, train.item_ids, max_length, train.timestamps)
    yield from tfrecords.encode_examples(examples)


def retrieval_training_sequences(sequences: UserSequences, holdout: str, rule: SplitRule) -> UserSequences:
    """What retrieval trains on (`pipelines/two_stage.py`): without the test items (``holdout="test"``:
    the data set's split rule) and without the ranker's item, the last one left."""
    kept = hold_out(sequences, rule).history if holdout == "test" else sequences
    return leave_last_out(kept)[0]


def _user_vocabulary_order(user_ids: list[str]) -> list[str]:
    """The order of `split.user_sequences` (numeric ids numerically), which `tfrecords` reads back in."""
    user_ids = np.asarray(user_ids, dtype=str)
    return list(user_ids[user_order(user_ids)])


def _catalog_order(first_positions: list[tuple[str, int]], listed_item_ids: list[str]) -> list[str]:
    """The catalog of `two_stage.TwoStageInputs`: the items file in its order, then the items chosen
    but not listed there, in the order they first appear."""
    listed = set(listed_item_ids)
    unlisted = sorted((position, item_id) for item_id, position in first_positions if item_id not in listed)
    return list(listed_item_ids) + [item_id for _, item_id in unlisted]


def _write_manifest(output_dir: str, data_dir: str, settings: dict, shards: list[str], num_examples: int,
                    num_interactions: int, user_ids: list[str], item_ids: list[str],
                    vocabulary_files: list[str]) -> str:
    """Writes manifest.json once every shard and vocabulary is final (they are its side inputs)."""
    manifest = {
        "format": tfrecords.FORMAT,
        "source": data_dir,
        "settings": settings,
        "num_examples": num_examples,
        "num_interactions": num_interactions,
        "num_users": len(user_ids),
        "num_items": len(item_ids),
        "shards": sorted(_relative(shard, output_dir) for shard in shards),
        "vocabularies": sorted(_relative(path, output_dir) for path in vocabulary_files),
    }
    path = f"{output_dir}/{tfrecords.MANIFEST}"
    temporary = f"{output_dir}/.{tfrecords.MANIFEST}.tmp"
    with FileSystems.create(temporary) as file:
        file.write((json.dumps(manifest, indent=2) + "\n").encode())
    FileSystems.rename([temporary], [path])
    return path


def _relative(path: str, folder: str) -> str:
    return path[len(folder):].lstrip("/")


def run(argv: Sequence[str]) -> str:
    """Parses flags, runs the pipeline to completion and returns the manifest's path."""
    flags, beam_args = _flag_parser().parse_known_args(argv)
    if flags.runner == LOCAL_RUNNER:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner
        runner = FnApiRunner()
    else:
        runner = flags.runner
    output_dir = flags.output_dir.rstrip("/")
    manifest = f"{output_dir}/{tfrecords.MANIFEST}"
    if FileSystems.exists(manifest):
        FileSystems.delete([manifest])  # the folder is incomplete until this run writes a new one
    with tempfile.TemporaryDirectory(prefix="tfrs_contract_") as converted:
        data_dir = _contract_folder(flags.data_dir, os.path.join(converted, "data"))
        try:
            with beam.Pipeline(runner=runner, options=PipelineOptions(beam_args)) as pipeline:
                build_pipeline(pipeline, data_dir, output_dir, max_length=flags.max_length,
                               holdout=flags.holdout, max_users=flags.max_users, num_shards=flags.num_shards,
                               chunk_bytes=flags.chunk_bytes, source=flags.data_dir)
        except Exception as error:
            # A local runner wraps a worker's exception in its own; show the user the DataError inside.
            cause = error
            while cause is not None and not isinstance(cause, DataError):
                cause = cause.__cause__ or cause.__context__
            if cause is None:
                raise
            raise cause from None
    return manifest


def _contract_folder(data_dir: str, converted: str) -> str:
    """``data_dir`` if it holds own data; else the data set ``load_dataset`` finds there (a MovieLens
    release), written to the own-data contract at ``converted``."""
    if os.path.isdir(data_dir) and is_interaction_folder(data_dir):
        return data_dir
    write_interaction_folder(load_dataset(data_dir), converted)
    return converted


def _flag_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tfrs_pipeline.data.beam_pipeline",
                                     description=__doc__.splitlines()[0],
                                     epilog="Other flags go to Beam as pipeline options.")
    parser.add_argument("--data_dir", required=True, help="own data (interactions.*, optionally items.*, "
                        "users.*, dataset.yaml) or a MovieLens release, as train --data_dir")
    parser.add_argument("--output_dir", required=True, help="receives examples/, vocabularies/, manifest.json")
    parser.add_argument("--runner", default=LOCAL_RUNNER,
                        help="DirectRunner (in this process), DataflowRunner, FlinkRunner, SparkRunner, ...")
    parser.add_argument("--max_length", type=int, default=200, help="history window (as train --max_length)")
    parser.add_argument("--holdout", choices=HOLDOUTS, default="test", help="as train --holdout")
    parser.add_argument("--max_users", type=int, default=None, help="as train --max_users")
    parser.add_argument("--num_shards", type=int, default=8, help="TFRecord shards (0: the runner decides)")
    parser.add_argument("--chunk_bytes", type=int, default=CHUNK_BYTES,
                        help="bytes of a CSV or TSV interactions file per parse task")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.getLogger().setLevel(logging.WARNING)
    try:
        print(run(sys.argv[1:] if argv is None else argv))
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
