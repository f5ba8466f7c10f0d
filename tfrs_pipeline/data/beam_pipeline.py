"""MovieLens preprocessing as an Apache Beam pipeline: the in-memory data path, on any Beam runner.

    python -m tfrs_pipeline.data.beam_pipeline --data_dir=../shared/data/ml-1m --output_dir=examples
    python -m tfrs_pipeline.train --data_dir=../shared/data/ml-1m --examples_dir=examples

Beam distributes the work; what the work *is* stays in the modules the in-memory path runs, so the
two paths cannot drift apart:
  - ratings are read in chunks of lines and each chunk is parsed and validated by the MovieLens
    loader's own parser (errors name the file and the line in the whole file);
  - every rating carries its line number, the tie-break of equal timestamps, so a user's ratings are
    put back in file order after the shuffle and `split.user_sequences` orders them exactly as it
    does on the whole table;
  - per user (a GroupByKey), `leave_last_out` and `training_windows` build the same training windows
    as `pipelines/two_stage.py` (user features are looked up per batch at training time, not stored
    with every window).
The dimension tables (users, movies: thousands of rows here, 100K items at our target scale) reach
the workers as side inputs; the ratings, which grow with traffic, are the only table that is
shuffled. Output: sharded TFRecords, vocabularies and a manifest (`data/tfrecords.py` has the layout).

The runner is a flag. ``--runner=DirectRunner`` (the default) runs in this process on Beam's
in-process FnApiRunner: Beam's own DirectRunner first tries the Prism runner, which downloads a
binary. Any other runner gets the pipeline as is, with its options passed through, for example
``--runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp`` (with ``gs://`` data and
output paths), ``--runner=FlinkRunner --flink_master=HOST:8081`` or ``--runner=SparkRunner``.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable, Iterator, Sequence

import apache_beam as beam
import numpy as np
import pandas as pd
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

import tfrs_pipeline  # noqa: F401  (selects Keras 2 before TensorFlow is imported)
from tfrs_pipeline.config import HOLDOUTS
from tfrs_pipeline.data import tfrecords
from tfrs_pipeline.data.errors import DataError
from tfrs_pipeline.data.movielens import MovieLens, keep_first_users, parse_movies, parse_ratings, parse_users
from tfrs_pipeline.data.sequence_examples import training_windows
from tfrs_pipeline.data.split import UserSequences, leave_last_out, user_order, user_sequences

LOCAL_RUNNER = "DirectRunner"
CHUNK_BYTES = 4 << 20  # about 200K ratings per parse task


def build_pipeline(pipeline: beam.Pipeline, data_dir: str, output_dir: str, *, max_length: int, holdout: str,
                   max_users: int | None, num_shards: int, chunk_bytes: int = CHUNK_BYTES) -> None:
    """Adds the preprocessing to ``pipeline``: read, split, window, write TFRecords, vocabularies, manifest.

    Args:
      pipeline: the pipeline to extend (its runner decides where it runs).
      data_dir: a folder holding ``ratings.dat``, ``movies.dat`` and ``users.dat`` (local, ``gs://``,
        ``s3://``: whatever Beam's file systems read).
      output_dir: receives the layout described in `tfrecords`.
      max_length, holdout, max_users: as the `TwoStageConfig` fields of the same names, which they must
        match for `train --examples_dir` to accept the output.
      num_shards: TFRecord shards of examples (0 lets the runner decide).
      chunk_bytes: size of the pieces of ratings.dat that are parsed in parallel.
    """
    movies = (pipeline | "Movies" >> beam.Create([_path(data_dir, "movies.dat")])
              | "ParseMovies" >> beam.Map(lambda path: parse_movies(path, _read_file(path))))
    users = (pipeline | "Users" >> beam.Create([_path(data_dir, "users.dat")])
             | "ParseUsers" >> beam.Map(lambda path: parse_users(path, _read_file(path))))
    ratings_path = _path(data_dir, "ratings.dat")
    ratings_by_user = (
        pipeline | "Ratings" >> beam.Create([ratings_path])
        | "ReadChunks" >> beam.FlatMap(_line_chunks, chunk_bytes)
        | "SpreadChunks" >> beam.Reshuffle()
        | "ParseRatings" >> beam.FlatMap(_parse_rating_chunk, ratings_path, max_users,
                                         movies=beam.pvalue.AsSingleton(movies),
                                         users=beam.pvalue.AsSingleton(users))
        | "GroupByUser" >> beam.GroupByKey())
    examples = ratings_by_user | "TrainingWindows" >> beam.FlatMap(_user_training_examples, max_length, holdout)
    shards = examples | "WriteExamples" >> beam.io.WriteToTFRecord(
        f"{output_dir}/examples/train", file_name_suffix=".tfrecord", num_shards=num_shards)

    user_ids = (ratings_by_user | "UserIds" >> beam.Keys()
                | "UserVocabulary" >> beam.CombineGlobally(beam.combiners.ToListCombineFn())
                | "OrderUsers" >> beam.Map(_user_vocabulary_order))
    item_ids = (ratings_by_user | "ItemIds" >> beam.FlatMap(lambda user: {rating[1] for rating in user[1]})
                | "DistinctItems" >> beam.Distinct()
                | "ItemVocabulary" >> beam.CombineGlobally(beam.combiners.ToListCombineFn())
                | "CatalogOrder" >> beam.Map(_catalog_order, movies=beam.pvalue.AsSingleton(movies)))
    vocabulary_files = [
        ids | f"Lines{name}" >> beam.FlatMap(lambda ordered: ordered)
        | f"Write{name}" >> beam.io.WriteToText(f"{output_dir}/{relative_path}", shard_name_template="",
                                               num_shards=1)
        for name, ids, relative_path in (("Users", user_ids, tfrecords.USER_VOCABULARY),
                                         ("Items", item_ids, tfrecords.ITEM_VOCABULARY))
    ]
    settings = {"max_length": max_length, "holdout": holdout, "max_users": max_users}
    _ = (pipeline | "Manifest" >> beam.Create([output_dir])
         | "WriteManifest" >> beam.Map(
             _write_manifest, data_dir, settings,
             shards=beam.pvalue.AsList(shards),
             num_examples=beam.pvalue.AsSingleton(examples | "CountExamples" >> beam.combiners.Count.Globally()),
             user_ids=beam.pvalue.AsSingleton(user_ids), item_ids=beam.pvalue.AsSingleton(item_ids),
             vocabulary_files=beam.pvalue.AsList(tuple(vocabulary_files) | "VocabularyFiles" >> beam.Flatten())))


def _path(folder: str, name: str) -> str:
    return FileSystems.join(folder, name)


def _require_file(path: str) -> None:
    if not FileSystems.exists(path):
        raise DataError(path, None, None, "file not found: an ML-1M folder holds ratings.dat, movies.dat, users.dat")


def _read_file(path: str) -> bytes:
    _require_file(path)
    with FileSystems.open(path) as file:
        return file.read()


def _line_chunks(path: str, chunk_bytes: int) -> Iterator[tuple[int, bytes]]:
    """(first line number, whole lines) chunks of a file, read sequentially so line numbers are exact."""
    _require_file(path)
    next_line, carry = 1, b""
    with FileSystems.open(path) as file:
        while block := file.read(chunk_bytes):
            data = carry + block
            end = data.rfind(b"\n") + 1
            if end:
                yield next_line, data[:end]
                next_line += data.count(b"\n", 0, end)
            carry = data[end:]
    if carry or next_line == 1:
        yield next_line, carry  # the last line without a newline; or the empty file, which the parser rejects


def _parse_rating_chunk(chunk: tuple[int, bytes], path: str, max_users: int | None, movies: pd.DataFrame,
                        users: pd.DataFrame) -> Iterator[tuple[str, tuple[int, str, float, int]]]:
    """Parses lines with the loader's parser; yields (user_id, (line, movie_id, rating, timestamp))."""
    first_line, data = chunk
    try:
        ratings = parse_ratings(path, data, movies=movies, users=users)
    except DataError as error:
        line = None if error.line is None else error.line + first_line - 1
        raise DataError(error.path, line, error.field, error.problem) from None
    ratings["line"] = np.arange(first_line, first_line + len(ratings))
    if max_users is not None:
        ratings = keep_first_users(MovieLens(ratings=ratings, movies=movies, users=users), max_users).ratings
    for user_id, line, movie_id, rating, timestamp in zip(
            ratings["user_id"], ratings["line"], ratings["movie_id"], ratings["user_rating"], ratings["timestamp"]):
        yield user_id, (int(line), movie_id, float(rating), int(timestamp))


def _user_training_examples(user_ratings: tuple[str, Iterable[tuple[int, str, float, int]]], max_length: int,
                            holdout: str) -> Iterator[bytes]:
    """One user's training windows, built by the in-memory path's functions, as serialized examples."""
    user_id, ratings = user_ratings
    _, movie_ids, rating_values, timestamps = zip(*sorted(ratings))  # file order, before the stable sort
    table = pd.DataFrame({"user_id": user_id, "item_id": list(movie_ids),
                          "rating": np.asarray(rating_values, np.float32),
                          "timestamp": np.asarray(timestamps, np.int64)})
    train = retrieval_training_sequences(user_sequences(table), holdout)
    examples = training_windows(train.user_ids, train.item_ids, max_length)
    yield from tfrecords.encode_examples(examples)


def retrieval_training_sequences(sequences: UserSequences, holdout: str) -> UserSequences:
    """What retrieval trains on (`pipelines/two_stage.py`): without the test item (``holdout="test"``)
    and without the ranker's item, the last one left."""
    kept = leave_last_out(sequences)[0] if holdout == "test" else sequences
    return leave_last_out(kept)[0]


def _user_vocabulary_order(user_ids: list[str]) -> list[str]:
    """The order of `split.user_sequences` (numeric ids numerically), which `tfrecords` reads back in."""
    user_ids = np.asarray(user_ids, dtype=str)
    return list(user_ids[user_order(user_ids)])


def _catalog_order(rated_item_ids: list[str], movies: pd.DataFrame) -> list[str]:
    """The rated movies in movies.dat order: the item indices 1..N of the item tower."""
    rated = set(rated_item_ids)
    return [movie_id for movie_id in movies["movie_id"] if movie_id in rated]


def _write_manifest(output_dir: str, data_dir: str, settings: dict, shards: list[str], num_examples: int,
                    user_ids: list[str], item_ids: list[str], vocabulary_files: list[str]) -> str:
    """Writes manifest.json once every shard and vocabulary is final (they are its side inputs)."""
    manifest = {
        "format": tfrecords.FORMAT,
        "source": data_dir,
        "settings": settings,
        "num_examples": num_examples,
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
    try:
        with beam.Pipeline(runner=runner, options=PipelineOptions(beam_args)) as pipeline:
            build_pipeline(pipeline, flags.data_dir, output_dir, max_length=flags.max_length,
                           holdout=flags.holdout, max_users=flags.max_users, num_shards=flags.num_shards,
                           chunk_bytes=flags.chunk_bytes)
    except Exception as error:
        # A local runner wraps a worker's exception in its own; show the user the DataError inside.
        cause = error
        while cause is not None and not isinstance(cause, DataError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        raise cause from None
    return manifest


def _flag_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tfrs_pipeline.data.beam_pipeline",
                                     description=__doc__.splitlines()[0],
                                     epilog="Other flags go to Beam as pipeline options.")
    parser.add_argument("--data_dir", required=True, help="folder with ratings.dat, movies.dat, users.dat")
    parser.add_argument("--output_dir", required=True, help="receives examples/, vocabularies/, manifest.json")
    parser.add_argument("--runner", default=LOCAL_RUNNER,
                        help="DirectRunner (in this process), DataflowRunner, FlinkRunner, SparkRunner, ...")
    parser.add_argument("--max_length", type=int, default=200, help="history window (as train --max_length)")
    parser.add_argument("--holdout", choices=HOLDOUTS, default="test", help="as train --holdout")
    parser.add_argument("--max_users", type=int, default=None, help="as train --max_users")
    parser.add_argument("--num_shards", type=int, default=8, help="TFRecord shards (0: the runner decides)")
    parser.add_argument("--chunk_bytes", type=int, default=CHUNK_BYTES, help="bytes of ratings.dat per parse task")
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
