"""Two-stage recommendations from a TF Serving endpoint (ours or TensorFlow Serving's), over gRPC or REST.

One Predict to the ``recommender`` model (both stages in one graph) answers a recommendation where the
server serves it. Otherwise, or with ``recommender_model=None``, stage one asks the ``retrieval``
model for a user's candidates (``item_ids``, ``scores``) and stage two asks the ``ranking`` model to
re-score exactly those candidates; either way the best ``k`` are returned with their titles. Around
that sit the things a production caller needs:

- A/B testing: each user id is hashed to a number in [0, 1); users below ``canary_fraction`` go to
  the ``canary`` version label, the rest to ``stable``. The hash is stable across calls and
  machines, so a user always sees the same arm, and each answer says which arm served it. Where
  the server defines no such labels (or a label's version is not loaded), the latest versions serve
  and the arm reads ``latest``; the label is asked for again a minute later, so labels added to a
  running server are picked up.
- Deadlines on every call, retries with backoff on UNAVAILABLE (a replica restarting).
- Batches that do not fit (a message above a receive limit, a batch above the server's
  ``--max_request_batch_size``) are split in halves until they do, rather than served the fallback.
- Fallbacks: if ranking fails the retrieval order is kept; if retrieval fails, the most popular
  items are returned, so a page never comes back empty.

A user the export does not know (one who signed up after training) is answered from fresh features
and history (``recommend_fresh``), through the ``query_features`` signatures of the same two models.
Those requests are built from the export's description (``contracts.ExportDescription``, its
``schema.json``), so the client knows no data set's column names: a feature the caller leaves out
is sent as missing, as the models saw missing values in training.

``recommend_from_store`` reads those features and the user's recent history from the export's online
feature store (``features/store.py``) per request, so what a user did a moment ago counts: a user
the store knows without a history gets a features-only query, a user it does not know the popular
items, and a store that cannot be read (locked, gone) the export's snapshot by user id; each answer
says which (``Recommendations.query``).
"""
import dataclasses
import hashlib
import json
import time
import urllib.error
import urllib.request
from typing import Any, Mapping, Protocol, Sequence

import grpc
import numpy as np
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tfrs_pipeline.catalog import Catalog
from tfrs_pipeline.contracts import (
    CANARY_LABEL,
    CANDIDATES_INPUT,
    HISTORY_INPUT,
    HISTORY_TIMESTAMPS_INPUT,
    ITEM_IDS_OUTPUT,
    KNOWN_USER_OUTPUT,
    MULTI_CATEGORICAL,
    MULTI_VALUE_SEPARATOR,
    NUMERIC,
    QUERY_FEATURES_SIGNATURE,
    RANKING_MODEL,
    RECOMMENDER_MODEL,
    RETRIEVAL_MODEL,
    SCORES_OUTPUT,
    SERVING_SIGNATURE,
    SESSION_INPUT,
    SESSION_MODEL,
    STABLE_LABEL,
    USER_ID_INPUT,
    ExportDescription,
    FeatureSpec,
)
from tfrs_pipeline.features.arrays import feature_array
from tfrs_pipeline.features.store import FeatureStoreError, OnlineFeatureStore
from tfrs_pipeline.serving import tensors

LATEST = "latest"  # the arm of answers served by the latest versions, where the server lacks the arm's label
RETRYABLE = (grpc.StatusCode.UNAVAILABLE,)
MAX_MESSAGE_BYTES = 64 << 20  # the server's default --grpc_max_message_bytes (gRPC's own default is 4 MiB)
BATCH_LIMIT_FLAG = "--max_request_batch_size"  # named by the server's answer to a batch above its limit
LABEL_RECHECK_S = 60.0  # how long a label the server lacked is not asked for again
# What a two-stage answer's query was built from (``Recommendations.query``).
QUERY_USER_ID = "user_id"  # the export's snapshot of the user
QUERY_FRESH = "fresh_features"  # features and history given by the caller
QUERY_STORE = "feature_store"  # features and recent history read from the online store
QUERY_STORE_FEATURES_ONLY = "feature_store_features_only"  # the store knows the user, but no history
QUERY_UNKNOWN_USER = "unknown_user"  # the store does not know the user: popular items
GRPC_CODE_OF_HTTP = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
                     413: grpc.StatusCode.RESOURCE_EXHAUSTED, 501: grpc.StatusCode.UNIMPLEMENTED,
                     503: grpc.StatusCode.UNAVAILABLE,
                     504: grpc.StatusCode.DEADLINE_EXCEEDED}


class PredictError(Exception):
    """A Predict call that failed, with its gRPC status code (REST statuses are mapped to one)."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class Transport(Protocol):
    def predict(self, model: str, label: str | None, inputs: Mapping[str, np.ndarray], timeout_s: float,
                signature: str = SERVING_SIGNATURE) -> dict[str, np.ndarray]:
        """Runs ``signature`` of ``model`` (at ``label``, or the latest version); raises PredictError."""


class GrpcTransport:
    """``PredictionService.Predict`` through the official stub."""

    def __init__(self, target: str):
        self._channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                                                                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)])
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def predict(self, model, label, inputs, timeout_s, signature=SERVING_SIGNATURE):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.model_spec.signature_name = signature
        if label:
            request.model_spec.version_label = label
        for name, value in inputs.items():
            tensors.fill_tensor_proto(request.inputs[name], np.asarray(value))
        try:
            response = self._stub.Predict(request, timeout=timeout_s)
        except grpc.RpcError as error:
            raise PredictError(error.code(), error.details() or "") from None
        return {name: tensors.from_tensor_proto(name, proto) for name, proto in response.outputs.items()}

    def close(self) -> None:
        self._channel.close()


class RestTransport:
    """``POST /v1/models/NAME[/labels/L]:predict`` in the columnar format.

    TF Serving answers a signature with a single output with the bare value, without its name; the
    name is then read once from the model's ``/metadata``.
    """

    def __init__(self, base_url: str):
        self._base_url = base_url if "://" in base_url else f"http://{base_url}"
        self._single_output_names: dict[tuple[str, str | None, str], str] = {}

    def predict(self, model, label, inputs, timeout_s, signature=SERVING_SIGNATURE):
        path = self._model_path(model, label) + ":predict"
        body = {"signature_name": signature, "inputs": {name: _json_ready(value) for name, value in inputs.items()}}
        outputs = self._call(path, body, timeout_s)["outputs"]
        if not isinstance(outputs, dict):
            outputs = {self._single_output_name(model, label, signature, timeout_s): outputs}
        return {name: np.array(value) for name, value in outputs.items()}

    def _single_output_name(self, model: str, label: str | None, signature: str, timeout_s: float) -> str:
        if (model, label, signature) not in self._single_output_names:
            metadata = self._call(self._model_path(model, label) + "/metadata", None, timeout_s)
            outputs = metadata["metadata"]["signature_def"]["signature_def"][signature]["outputs"]
            self._single_output_names[(model, label, signature)] = next(iter(outputs))
        return self._single_output_names[(model, label, signature)]

    @staticmethod
    def _model_path(model: str, label: str | None) -> str:
        return f"/v1/models/{model}" + (f"/labels/{label}" if label else "")

    def _call(self, path: str, body: dict | None, timeout_s: float) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self._base_url + path, data=data,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            message = error.read().decode(errors="replace")
            try:
                message = json.loads(message)["error"]
            except (ValueError, KeyError, TypeError):
                pass
            raise PredictError(GRPC_CODE_OF_HTTP.get(error.code, grpc.StatusCode.UNKNOWN), message) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
            raise PredictError(grpc.StatusCode.UNAVAILABLE, str(error)) from None

    def close(self) -> None:
        pass


def _json_ready(value: np.ndarray) -> list:
    if value.dtype == object or value.dtype.kind in "SU":
        return np.vectorize(lambda item: item.decode() if isinstance(item, bytes) else str(item),
                            otypes=[object])(value).tolist()
    return value.tolist()


def ab_arm(user_id: str, canary_fraction: float) -> str:
    """``canary`` for a stable ``canary_fraction`` of user ids (by SHA-256), ``stable`` for the others."""
    digest = hashlib.sha256(str(user_id).encode("utf-8")).digest()
    return CANARY_LABEL if int.from_bytes(digest[:8], "big") / 2 ** 64 < canary_fraction else STABLE_LABEL


def fresh_feature_inputs(description: ExportDescription, features: Mapping[str, Any],
                         history_item_ids: Sequence[str],
                         history_timestamps: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """One user's ``query_features`` inputs: each user feature the export declares, and the history
    (with its timestamps, where the export's towers read time).

    Values are normalised as the data layer normalises a users file (text stripped, set values split
    on "|"), so a value typed by hand reaches the model as the same value it trained on.

    Args:
      description: the export's description (``ExportDescription.read(export_dir / DESCRIPTION_FILE)``).
      features: feature name -> value: a string for categorical and text features, a number (or its
        text) for numeric ones, a list of strings or one "|"-separated string for multi-categorical
        ones. A feature left out, None or "" is sent as missing ("", NaN, the empty set).
      history_item_ids: the user's item ids, oldest first; may be empty.
      history_timestamps: when each of those items happened, Unix seconds; required where the
        export's towers read time (``ExportDescription.history_timestamps``), ignored elsewhere.

    Returns:
      The signature's inputs by name, each with a batch of one.

    Raises:
      ValueError: a name the export's signatures do not take (the message lists those they do), a
        numeric feature whose value is not a number, or timestamps missing or not one per item.
    """
    specs = description.features.user_features
    unknown = sorted(set(features) - {spec.name for spec in specs})
    if unknown:
        known = ", ".join(spec.name for spec in specs) or "no user feature"
        raise ValueError(f"unknown feature {', '.join(map(repr, unknown))}: this export's {QUERY_FEATURES_SIGNATURE} "
                         f"signatures take {known} (and the history, given apart)")
    inputs = {spec.name: feature_array([_feature_cell(spec, features.get(spec.name))], spec.kind) for spec in specs}
    history = [str(item_id) for item_id in history_item_ids]
    inputs[HISTORY_INPUT] = np.array([history or [""]], dtype=object)
    if description.history_timestamps:
        times = [] if history_timestamps is None and not history else history_timestamps
        if times is None or len(times) != len(history):
            raise ValueError(f"this export's towers read when each history item happened: give "
                             f"{HISTORY_TIMESTAMPS_INPUT} (Unix seconds), one per item: {len(history)} items, "
                             f"{'no' if times is None else len(times)} timestamps")
        inputs[HISTORY_TIMESTAMPS_INPUT] = np.array([[int(time) for time in times] or [0]], np.int64)
    return inputs


def _feature_cell(spec: FeatureSpec, value: Any) -> Any:
    """A caller's value as a cell of a users table of its kind (``InteractionData``'s convention)."""
    if spec.kind == MULTI_CATEGORICAL:
        parts = [] if value is None else value.split(MULTI_VALUE_SEPARATOR) if isinstance(value, str) else value
        return tuple(str(part).strip() for part in parts if str(part).strip())
    if spec.kind == NUMERIC:
        if value is None or (isinstance(value, str) and not value.strip()):
            return np.nan
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"feature {spec.name!r} is numeric: {value!r} is not a number") from None
    return "" if value is None else str(value).strip()


@dataclasses.dataclass(frozen=True)
class Recommendation:
    item_id: str
    title: str
    score: float | None


@dataclasses.dataclass(frozen=True)
class Recommendations:
    """One user's answer: the items, the A/B arm that served it, and which path produced it."""

    user_id: str  # "" for an anonymous session or a fresh-feature request without one
    arm: str
    source: str  # "two_stage", "retrieval_only" (ranking failed), "popular_fallback" (retrieval failed), "session"
    items: list[Recommendation]
    error: str = ""
    query: str = QUERY_USER_ID  # what the query was built from: one of the QUERY_* names ("" for a session)
    unknown_user: bool = False  # the export (or the feature store) does not know this user: a new user's answer

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


class TwoStageClient:
    """Retrieval, then ranking of the retrieved candidates, with A/B routing, retries and fallbacks.

    Args:
      transport: ``GrpcTransport`` or ``RestTransport``.
      catalog: the export's items file (``catalog.read_items_file``), most popular first: titles and the
        popular fallback; without one, titles are empty and there is no fallback.
      canary_fraction: the share of users routed to the ``canary`` label (0 sends everyone to ``stable``).
      timeout_s: the deadline of each Predict call.
      retries: how many times an UNAVAILABLE call is retried (with doubling backoff).
      description: the export's description (``ExportDescription.read``), which ``recommend_fresh`` builds
        its requests from; the user-id and session paths do not need it.
      recommender_model: the one-call model; None asks retrieval and ranking apart. Where it cannot
        answer, the two calls do (with their fallbacks); where the server does not serve it, it is
        asked for again a minute later.
    """

    def __init__(self, transport: Transport, catalog: Catalog | None = None, canary_fraction: float = 0.0,
                 retrieval_model: str = RETRIEVAL_MODEL, ranking_model: str = RANKING_MODEL, timeout_s: float = 1.0,
                 retries: int = 2, backoff_s: float = 0.05, description: ExportDescription | None = None,
                 recommender_model: str | None = RECOMMENDER_MODEL):
        self.transport = transport
        self.recommender_model = recommender_model
        self._recommender_missing_since: float | None = None
        self.catalog = catalog if catalog is not None else Catalog([])
        self.description = description
        self.canary_fraction = canary_fraction
        self.retrieval_model = retrieval_model
        self.ranking_model = ranking_model
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self._label_missing_since: dict[tuple[str, str], float] = {}  # (model, label) -> when the server lacked it

    def recommend(self, user_id: str, k: int = 10) -> Recommendations:
        return self.recommend_many([user_id], k)[0]

    def recommend_many(self, user_ids: Sequence[str], k: int = 10) -> list[Recommendations]:
        """Recommendations for many users: one retrieval and one ranking call per A/B arm."""
        arms = {user_id: ab_arm(user_id, self.canary_fraction) for user_id in user_ids}
        answers = {}
        for arm in (STABLE_LABEL, CANARY_LABEL):
            arm_users = [user_id for user_id in user_ids if arms[user_id] == arm]
            if arm_users:
                answers.update({answer.user_id: answer for answer in self._recommend_arm(arm_users, arm, k)})
        return [answers[user_id] for user_id in user_ids]

    def recommend_fresh(self, features: Mapping[str, Any], history_item_ids: Sequence[str] = (), k: int = 10,
                        user_id: str = "", history_timestamps: Sequence[int] | None = None) -> Recommendations:
        """Two-stage recommendations from fresh features and history, for a user the export may not know.

        Retrieval's ``query_features`` signature gives the candidates (the history's items excluded),
        ranking's re-scores them from the same features and history; the fallbacks are those of
        ``recommend``, and the popular fallback leaves out the history's items too.

        Args:
          features: user feature name -> value, as ``fresh_feature_inputs`` takes them; features left
            out are sent as missing, so ``{}`` with a history answers from the history alone.
          history_item_ids: the user's item ids, oldest first; empty answers from the features alone.
          k: how many items to return.
          user_id: the user's id if there is one: it chooses the A/B arm as in ``recommend``; without
            one the ``stable`` label serves.
          history_timestamps: Unix seconds of each history item, where the export's towers read time.

        Raises:
          ValueError: the client has no export description, ``features`` names a feature the
            export does not take, or the timestamps the export needs are missing.
        """
        if self.description is None:
            raise ValueError("recommend_fresh needs the export's description: pass description="
                             "ExportDescription.read(<export_dir>/schema.json) to the client")
        return self._recommend_fresh(self.description, features, history_item_ids, k, user_id, history_timestamps)

    def _recommend_fresh(self, description: ExportDescription, features: Mapping[str, Any],
                         history_item_ids: Sequence[str], k: int, user_id: str,
                         history_timestamps: Sequence[int] | None) -> Recommendations:
        inputs = fresh_feature_inputs(description, features, history_item_ids, history_timestamps)
        arm = ab_arm(user_id, self.canary_fraction) if user_id else STABLE_LABEL
        history = {str(item_id) for item_id in history_item_ids}
        answer = self._two_stage([user_id], arm, k, inputs, QUERY_FEATURES_SIGNATURE, history)[0]
        return dataclasses.replace(answer, query=QUERY_FRESH)

    def recommend_from_store(self, store: OnlineFeatureStore, user_id: str, k: int = 10) -> Recommendations:
        """Two-stage recommendations from the user's features and recent history in the online store.

        The store is read at request time, so events pushed a moment ago count. A user the store
        knows without any history is answered from the features alone; a user it does not know
        gets the popular items; if the store cannot be read, the export's snapshot answers by user
        id. ``Recommendations.query`` says which, and ``error`` why where it is not the store.
        """
        try:
            user = store.users([user_id])[0]
        except FeatureStoreError as error:
            return dataclasses.replace(self.recommend(user_id, k), error=f"feature store unavailable: {error}")
        if not user.known:
            answer = self._popular(user_id, ab_arm(user_id, self.canary_fraction), k,
                                   f"user {user_id!r} is not in the feature store")
            return dataclasses.replace(answer, query=QUERY_UNKNOWN_USER, unknown_user=True)
        answer = self._recommend_fresh(store.description, user.features, user.history_item_ids, k, user_id,
                                       user.history_timestamps)
        return dataclasses.replace(answer, query=QUERY_STORE if user.history_item_ids else QUERY_STORE_FEATURES_ONLY)

    def recommend_next(self, session_item_ids: Sequence[str], k: int = 10,
                       session_model: str = SESSION_MODEL) -> Recommendations:
        """Next items for an anonymous session (its item ids, oldest first), from the session model.

        The session has no user id, so it is served by the ``stable`` label; when the session model
        cannot answer, popular items are returned, as for users.
        """
        inputs = {SESSION_INPUT: np.array([list(session_item_ids) or [""]], dtype=object)}
        try:
            predicted, arm = self._predict(session_model, STABLE_LABEL, inputs)
        except PredictError as error:
            return self._popular("", STABLE_LABEL, k, error)
        return Recommendations("", arm, "session",
                               self._top_k(predicted[ITEM_IDS_OUTPUT][0], predicted[SCORES_OUTPUT][0], k), query="")

    def _recommend_arm(self, user_ids: list[str], arm: str, k: int) -> list[Recommendations]:
        return self._two_stage(user_ids, arm, k, {USER_ID_INPUT: np.array(user_ids, dtype=object)}, SERVING_SIGNATURE)

    def _two_stage(self, user_ids: list[str], arm: str, k: int, query: Mapping[str, np.ndarray], signature: str,
                   excluded: set[str] = frozenset()) -> list[Recommendations]:
        """Retrieval, then ranking of its candidates, both through ``signature`` with the same ``query`` inputs.

        ``excluded``: items the popular fallback leaves out (retrieval excludes the user's items itself).
        """
        one_call = self._one_call(user_ids, arm, k, query, signature)
        if one_call is not None:
            return one_call
        try:
            retrieved, arm = self._predict(self.retrieval_model, arm, query, signature)
        except PredictError as error:
            return [self._popular(user_id, arm, k, error, excluded) for user_id in user_ids]
        candidates = retrieved[ITEM_IDS_OUTPUT]
        try:
            ranked, arm = self._predict(self.ranking_model, arm, {**query, CANDIDATES_INPUT: candidates}, signature)
            scores, source, problem = ranked[SCORES_OUTPUT], "two_stage", ""
        except PredictError as error:
            scores, source, problem = retrieved[SCORES_OUTPUT], "retrieval_only", str(error)
        return [Recommendations(user_id, arm, source, self._top_k(candidates[row], scores[row], k), problem,
                                unknown_user=unknown)
                for row, (user_id, unknown) in enumerate(zip(user_ids, _unknown_users(retrieved, len(user_ids))))]

    def _one_call(self, user_ids: list[str], arm: str, k: int, query: Mapping[str, np.ndarray],
                  signature: str) -> list[Recommendations] | None:
        """The recommender model's answers; None where the server does not serve it (the two calls answer then)."""
        missing_since = self._recommender_missing_since
        if self.recommender_model is None or (
                missing_since is not None and time.monotonic() - missing_since < LABEL_RECHECK_S):
            return None
        try:
            predicted, arm = self._predict(self.recommender_model, arm, query, signature)
        except PredictError as error:
            if error.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                self._recommender_missing_since = time.monotonic()  # not served (or an older one): two calls
            return None
        return [Recommendations(user_id, arm, "two_stage",
                                self._top_k(predicted[ITEM_IDS_OUTPUT][row], predicted[SCORES_OUTPUT][row], k),
                                unknown_user=unknown)
                for row, (user_id, unknown) in enumerate(zip(user_ids, _unknown_users(predicted, len(user_ids))))]

    def _predict(self, model: str, arm: str, inputs: Mapping[str, np.ndarray],
                 signature: str = SERVING_SIGNATURE) -> tuple[dict, str]:
        """Predict at the arm's label; where the server has no such label, at the latest version."""
        missing_since = self._label_missing_since.get((model, arm))
        if arm == LATEST or (missing_since is not None and time.monotonic() - missing_since < LABEL_RECHECK_S):
            return self._predict_with_retries(model, None, inputs, signature), LATEST
        try:
            return self._predict_with_retries(model, arm, inputs, signature), arm
        except PredictError as error:
            label_undefined = error.code == grpc.StatusCode.INVALID_ARGUMENT and "version label" in error.message
            if label_undefined or error.code == grpc.StatusCode.NOT_FOUND:  # NOT_FOUND: its version was unloaded
                self._label_missing_since[(model, arm)] = time.monotonic()  # skip the failing round trip a while
                return self._predict_with_retries(model, None, inputs, signature), LATEST
            raise

    def _predict_with_retries(self, model: str, label: str | None, inputs: Mapping[str, np.ndarray],
                              signature: str) -> dict:
        for attempt in range(self.retries + 1):
            try:
                return self.transport.predict(model, label, inputs, self.timeout_s, signature)
            except PredictError as error:
                batch_size = len(next(iter(inputs.values())))
                too_big = error.code == grpc.StatusCode.RESOURCE_EXHAUSTED or BATCH_LIMIT_FLAG in error.message
                if too_big and batch_size > 1:
                    halves = [{name: value[:batch_size // 2] for name, value in inputs.items()},
                              {name: value[batch_size // 2:] for name, value in inputs.items()}]
                    first, second = (self._predict_with_retries(model, label, half, signature) for half in halves)
                    return {name: np.concatenate([first[name], second[name]]) for name in first}
                if error.code not in RETRYABLE or attempt == self.retries:
                    raise
                time.sleep(self.backoff_s * 2 ** attempt)

    def _top_k(self, item_ids: np.ndarray, scores: np.ndarray, k: int) -> list[Recommendation]:
        order = [index for index in np.argsort(-scores, kind="stable") if _text(item_ids[index])][:k]
        return self._items([_text(item_ids[index]) for index in order], [float(scores[index]) for index in order])

    def _popular(self, user_id: str, arm: str, k: int, error: PredictError | str,
                 excluded: set[str] = frozenset()) -> Recommendations:
        """The most popular items, for a user no model can answer (``error`` says why)."""
        if not len(self.catalog) and isinstance(error, PredictError):
            raise error
        # The items file lists the most popular first.
        popular = [item_id for item_id in self.catalog.item_ids[:k + len(excluded)] if item_id not in excluded][:k]
        return Recommendations(user_id, arm, "popular_fallback", self._items(popular, [None] * len(popular)),
                               str(error))

    def _items(self, item_ids: list[str], scores: Sequence[float | None]) -> list[Recommendation]:
        """The recommendations with their titles; an item the catalog lacks gets an empty title."""
        indices = self.catalog.indices(item_ids)
        return [Recommendation(item_id, str(self.catalog.titles[index - 1]) if index else "", score)
                for item_id, index, score in zip(item_ids, indices, scores)]


def _unknown_users(predicted: Mapping[str, np.ndarray], batch_size: int) -> list[bool]:
    """Which users the export's snapshot does not hold (its ``known_user`` output; none without it)."""
    known = predicted.get(KNOWN_USER_OUTPUT)
    return [False] * batch_size if known is None else [not bool(value) for value in np.asarray(known).reshape(-1)]


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
