"""``python -m tfrs_pipeline.recommend``: recommendations for one user (readable) or many (JSON lines).

    python -m tfrs_pipeline.recommend --server=localhost:8500 --user_id=42 --k=10 --items=export/items.tsv
    python -m tfrs_pipeline.recommend --server=localhost:8500 --user_ids_file=users.txt --output=recs.jsonl
    python -m tfrs_pipeline.recommend --server=localhost:8500 --items=export/items.tsv \
        --feature segment=vip --feature interests='garden|books' --history sku-2291 sku-0042

    python -m tfrs_pipeline.recommend --server=localhost:8500 --feature_repo=export/feature_repo --user_id=42

It asks a TF Serving endpoint (``tfrs-model-server`` or TensorFlow Serving) for two-stage
recommendations; ``--transport=rest`` uses the REST API (give the REST port in ``--server``).
``--feature`` and ``--history`` answer a user the export may not know, from fresh features and
history: the feature names and kinds are read from the export's description (``schema.json``,
found beside ``--items`` or given by ``--description``), and features left out are sent as missing.
``--feature_repo`` reads each user's features and recent history from the export's online feature
store at request time (events pushed with ``python -m tfrs_pipeline.features push`` count at once);
the answer says whether it came from the store, from features alone, or, for a user the store does
not know, from the popular items.

Exit status: 0 when every answer came from the models, 3 when some users got a fallback (each is
counted on standard error, and the answers say so), 1 when the server failed, 2 for a usage error.
"""
import argparse
import collections
import json
import pathlib
import sys

from tfrs_pipeline.atomic import write_text_atomically
from tfrs_pipeline.catalog import read_items_file
from tfrs_pipeline.contracts import (
    CANARY_LABEL,
    DESCRIPTION_FILE,
    ITEMS_COLUMNS,
    ITEMS_FILE,
    RANKING_MODEL,
    RECOMMENDER_MODEL,
    RETRIEVAL_MODEL,
    SESSION_MODEL,
    ExportDescription,
)
from tfrs_pipeline.features.store import FeatureStoreError, OnlineFeatureStore
from tfrs_pipeline.serving.client import (
    QUERY_USER_ID,
    GrpcTransport,
    PredictError,
    Recommendations,
    RestTransport,
    TwoStageClient,
    fresh_feature_inputs,
)


def build_flag_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tfrs_pipeline.recommend", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    flag = parser.add_argument
    flag("--server", default="localhost:8500", help="host:port of the gRPC (or, with --transport=rest, REST) API")
    flag("--transport", choices=["grpc", "rest"], default="grpc")
    flag("--user_id", action="append", default=[], help="a user id; repeat for several")
    flag("--user_ids_file", help="a file with one user id per line (batch mode)")
    flag("--session", nargs="+", metavar="ITEM_ID",
         help="an anonymous session's item ids, oldest first: recommends its next items with the session model")
    flag("--session_model", default=SESSION_MODEL)
    flag("--feature", action="append", default=[], metavar="NAME=VALUE",
         help="a user feature for a fresh-feature request (repeat for several; several values of a "
              "multi-valued feature as a|b); features left out are sent as missing")
    flag("--history", nargs="*", metavar="ITEM_ID",
         help="the user's item ids, oldest first, for a fresh-feature request (none: features only)")
    flag("--history_timestamps", nargs="*", type=int, metavar="SECONDS",
         help="Unix seconds of each --history item, for exports whose towers read time (schema.json's "
              "history_timestamps)")
    flag("--feature_repo", help="the export's feature repository (<export_dir>/feature_repo): each user's features "
                                "and recent history are read from its online store per request")
    flag("--description", help=f"the export's {DESCRIPTION_FILE}, which names the features a fresh-feature request "
                               f"takes (default: the one beside --items)")
    flag("--output", help="write JSON lines here (batch mode; default: standard output)")
    flag("--k", type=positive_int, default=10, help="how many items to recommend")
    flag("--items", help=f"the export's {ITEMS_FILE} ({', '.join(ITEMS_COLUMNS)}; most popular first) for titles "
                         "and the popular fallback")
    flag("--canary_fraction", type=float, default=0.1, help=f"share of users routed to the '{CANARY_LABEL}' label")
    flag("--timeout_s", type=float, default=1.0, help="deadline of each Predict call")
    flag("--retries", type=int, default=2, help="retries of a call that answers UNAVAILABLE")
    flag("--batch_size", type=positive_int, default=256,
         help="users per Predict call in batch mode (a batch that does not fit is split)")
    flag("--recommender_model", default=RECOMMENDER_MODEL,
         help="the one-call model (both stages in one graph); '' asks retrieval and ranking apart")
    flag("--retrieval_model", default=RETRIEVAL_MODEL)
    flag("--ranking_model", default=RANKING_MODEL)
    return parser


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def report_fallbacks(answers: list[Recommendations]) -> int:
    """Counts the answers that did not come from both models on standard error; the exit status (0 or 3).

    An unknown user's answer is what such a user gets by design, not a fallback: it is counted apart.
    """
    fallbacks = collections.Counter(answer.source for answer in answers if not answer.unknown_user
                                    and answer.source in ("popular_fallback", "retrieval_only"))
    unknown = sum(answer.unknown_user for answer in answers)
    if unknown:
        print(f"recommend: {unknown} of {len(answers)} users are not known to the export (new-user answers)",
              file=sys.stderr)
    for source, count in sorted(fallbacks.items()):
        first_error = next(answer.error for answer in answers if answer.source == source and not answer.unknown_user)
        print(f"recommend: {count} of {len(answers)} answers are {source}: {first_error}", file=sys.stderr)
    return 3 if fallbacks else 0


def read_user_ids(flags: argparse.Namespace) -> list[str]:
    user_ids = list(flags.user_id)
    if flags.user_ids_file:
        lines = pathlib.Path(flags.user_ids_file).read_text().splitlines()
        user_ids += [line.strip() for line in lines if line.strip()]
    return user_ids


def read_features(assignments: list[str]) -> dict[str, str]:
    """``--feature NAME=VALUE`` flags as a dict; raises ValueError on a malformed or repeated one."""
    features = {}
    for assignment in assignments:
        name, equals, value = assignment.partition("=")
        if not equals or not name.strip():
            raise ValueError(f"--feature takes NAME=VALUE, got {assignment!r}")
        if name.strip() in features:
            raise ValueError(f"--feature {name.strip()} is given twice")
        features[name.strip()] = value
    return features


def read_description(flags: argparse.Namespace) -> ExportDescription:
    """The export description of ``--description``, or the one beside ``--items``."""
    if flags.description:
        path = pathlib.Path(flags.description)
    elif flags.items:
        path = pathlib.Path(flags.items).parent / DESCRIPTION_FILE
    else:
        raise ValueError(f"a fresh-feature request needs the export's {DESCRIPTION_FILE}: give --description "
                         f"or --items (it is read from beside the items file)")
    try:
        return ExportDescription.read(path)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"cannot read the export description {path}: {error}") from None


def format_readable(answer: Recommendations, who: str | None = None) -> str:
    who = who or (f"user {answer.user_id}" if answer.user_id else "this session")
    query = f", query from {answer.query}" if answer.query not in ("", QUERY_USER_ID) else ""
    lines = [f"Top {len(answer.items)} for {who} (arm: {answer.arm}, {answer.source}{query})"]
    if answer.unknown_user:
        lines.append("  note: this user is not known: these are the answers for a new user")
    if answer.error:
        lines.append(f"  note: {answer.error}")
    for rank, item in enumerate(answer.items, start=1):
        score = "" if item.score is None else f"  score {item.score:.3f}"
        lines.append(f"{rank:>3}. {item.title or '(no title)'}  [{item.item_id}]{score}")
    return "\n".join(lines)


def write_json_lines(answers: list[Recommendations], output: str | None) -> None:
    text = "".join(json.dumps(answer.to_json()) + "\n" for answer in answers)
    if not output:
        sys.stdout.write(text)
        return
    write_text_atomically(output, text)


def main(argv: list[str] | None = None) -> int:
    flags = build_flag_parser().parse_args(argv)
    user_ids = read_user_ids(flags)
    fresh = bool(flags.feature) or flags.history is not None
    if not user_ids and not flags.session and not fresh:
        print("recommend: give --user_id, --user_ids_file, --session, or --feature / --history", file=sys.stderr)
        return 2
    if fresh and (flags.session or flags.user_ids_file or len(user_ids) > 1):
        print("recommend: --feature / --history answer one user: at most one --user_id (it chooses the A/B arm), "
              "no --session or --user_ids_file", file=sys.stderr)
        return 2
    if flags.feature_repo and (fresh or flags.session or not user_ids):
        print("recommend: --feature_repo answers users by id (--user_id, --user_ids_file), with no --feature, "
              "--history or --session", file=sys.stderr)
        return 2
    items = flags.items or (str(pathlib.Path(flags.feature_repo).parent / ITEMS_FILE) if flags.feature_repo else None)
    try:
        catalog = read_items_file(items)[0] if items else None
    except (OSError, ValueError) as error:
        print(f"recommend: cannot read the items file: {error}", file=sys.stderr)
        return 2
    try:
        store = OnlineFeatureStore(flags.feature_repo) if flags.feature_repo else None
    except FeatureStoreError as error:
        print(f"recommend: {error}", file=sys.stderr)
        return 2
    try:
        features = read_features(flags.feature)
        description = read_description(flags) if fresh else None
        if fresh:  # refuses a feature the export does not take before anything is sent
            fresh_feature_inputs(description, features, flags.history or [], flags.history_timestamps)
    except ValueError as error:
        print(f"recommend: {error}", file=sys.stderr)
        return 2
    transport = GrpcTransport(flags.server) if flags.transport == "grpc" else RestTransport(flags.server)
    client = TwoStageClient(transport, catalog, flags.canary_fraction, flags.retrieval_model, flags.ranking_model,
                            flags.timeout_s, flags.retries, description=description,
                            recommender_model=flags.recommender_model or None)
    batch_mode = bool(flags.user_ids_file or flags.output or len(user_ids) > 1)
    try:
        if flags.session:
            answer = client.recommend_next(flags.session, flags.k, flags.session_model)
            print(format_readable(answer))
            return report_fallbacks([answer])
        if fresh:
            user_id = user_ids[0] if user_ids else ""
            answer = client.recommend_fresh(features, flags.history or [], flags.k, user_id,
                                            flags.history_timestamps)
            print(format_readable(answer, f"user {user_id}" if user_id else "these features and history"))
            return report_fallbacks([answer])
        if store is not None:
            answers = [client.recommend_from_store(store, user_id, flags.k) for user_id in user_ids]
        else:
            answers = [answer for start in range(0, len(user_ids), flags.batch_size)
                       for answer in client.recommend_many(user_ids[start:start + flags.batch_size], flags.k)]
    except PredictError as error:
        print(f"recommend: the server at {flags.server} failed: {error}", file=sys.stderr)
        return 1
    finally:
        transport.close()
    if batch_mode:
        write_json_lines(answers, flags.output)
    else:
        print(format_readable(answers[0]))
    return report_fallbacks(answers)


if __name__ == "__main__":
    sys.exit(main())
