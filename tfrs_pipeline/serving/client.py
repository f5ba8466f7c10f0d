"""Two-stage recommendations from a TF Serving endpoint (ours or TensorFlow Serving's), over gRPC or REST.

Stage one asks the ``retrieval`` model for a user's candidates (``item_ids``, ``scores``); stage two
asks the ``ranking`` model to re-score exactly those candidates, and the best ``k`` are returned
with their titles. Around that sit the things a production caller needs:

- A/B testing: each user id is hashed to a number in [0, 1); users below ``canary_fraction`` go to
  the ``canary`` version label, the rest to ``stable``. The hash is stable across calls and
  machines, so a user always sees the same arm, and each answer says which arm served it. Where
  the server defines no such labels (or a label's version is not loaded), the latest versions serve
  and the arm reads ``latest``; the label is asked for again a minute later, so labels added to a
  running server are picked up.
- Deadlines on every call, retries with backoff on UNAVAILABLE (a replica restarting).
- Fallbacks: if ranking fails the retrieval order is kept; if retrieval fails, the most popular
  items are returned, so a page never comes back empty.
"""
import dataclasses
import hashlib
import json
import time
import urllib.error
import urllib.request
from typing import Mapping, Protocol, Sequence

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tfrs_pipeline.catalog import Catalog
from tfrs_pipeline.contracts import (
    CANARY_LABEL,
    CANDIDATES_INPUT,
    ITEM_IDS_OUTPUT,
    RANKING_MODEL,
    RETRIEVAL_MODEL,
    SCORES_OUTPUT,
    SERVING_SIGNATURE,
    SESSION_INPUT,
    SESSION_MODEL,
    STABLE_LABEL,
    USER_ID_INPUT,
)

LATEST = "latest"  # the arm of answers served by the latest versions, where the server lacks the arm's label
RETRYABLE = (grpc.StatusCode.UNAVAILABLE,)
LABEL_RECHECK_S = 60.0  # how long a label the server lacked is not asked for again
GRPC_CODE_OF_HTTP = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
                     501: grpc.StatusCode.UNIMPLEMENTED, 503: grpc.StatusCode.UNAVAILABLE,
                     504: grpc.StatusCode.DEADLINE_EXCEEDED}


class PredictError(Exception):
    """A Predict call that failed, with its gRPC status code (REST statuses are mapped to one)."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class Transport(Protocol):
    def predict(self, model: str, label: str | None, inputs: Mapping[str, np.ndarray],
                timeout_s: float) -> dict[str, np.ndarray]:
        """Runs the serving signature of ``model`` (at ``label``, or the latest version); raises PredictError."""


class GrpcTransport:
    """``PredictionService.Predict`` through the official stub."""

    def __init__(self, target: str):
        self._channel = grpc.insecure_channel(target)
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def predict(self, model, label, inputs, timeout_s):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        if label:
            request.model_spec.version_label = label
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        try:
            response = self._stub.Predict(request, timeout=timeout_s)
        except grpc.RpcError as error:
            raise PredictError(error.code(), error.details() or "") from None
        return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}

    def close(self) -> None:
        self._channel.close()


class RestTransport:
    """``POST /v1/models/NAME[/labels/L]:predict`` in the columnar format.

    TF Serving answers a signature with a single output with the bare value, without its name; the
    name is then read once from the model's ``/metadata``.
    """

    def __init__(self, base_url: str):
        self._base_url = base_url if "://" in base_url else f"http://{base_url}"
        self._single_output_names: dict[tuple[str, str | None], str] = {}

    def predict(self, model, label, inputs, timeout_s):
        path = self._model_path(model, label) + ":predict"
        body = {"inputs": {name: _json_ready(value) for name, value in inputs.items()}}
        outputs = self._call(path, body, timeout_s)["outputs"]
        if not isinstance(outputs, dict):
            outputs = {self._single_output_name(model, label, timeout_s): outputs}
        return {name: np.array(value) for name, value in outputs.items()}

    def _single_output_name(self, model: str, label: str | None, timeout_s: float) -> str:
        if (model, label) not in self._single_output_names:
            metadata = self._call(self._model_path(model, label) + "/metadata", None, timeout_s)
            outputs = metadata["metadata"]["signature_def"]["signature_def"][SERVING_SIGNATURE]["outputs"]
            self._single_output_names[(model, label)] = next(iter(outputs))
        return self._single_output_names[(model, label)]

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


@dataclasses.dataclass(frozen=True)
class Recommendation:
    item_id: str
    title: str
    score: float | None


@dataclasses.dataclass(frozen=True)
class Recommendations:
    """One user's answer: the items, the A/B arm that served it, and which path produced it."""

    user_id: str
    arm: str
    source: str  # "two_stage", "retrieval_only" (ranking failed) or "popular_fallback" (retrieval failed)
    items: list[Recommendation]
    error: str = ""

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
    """

    def __init__(self, transport: Transport, catalog: Catalog | None = None, canary_fraction: float = 0.0,
                 retrieval_model: str = RETRIEVAL_MODEL, ranking_model: str = RANKING_MODEL, timeout_s: float = 1.0,
                 retries: int = 2, backoff_s: float = 0.05):
        self.transport = transport
        self.catalog = catalog if catalog is not None else Catalog([])
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
                               self._top_k(predicted[ITEM_IDS_OUTPUT][0], predicted[SCORES_OUTPUT][0], k))

    def _recommend_arm(self, user_ids: list[str], arm: str, k: int) -> list[Recommendations]:
        users = np.array(user_ids, dtype=object)
        try:
            retrieved, arm = self._predict(self.retrieval_model, arm, {USER_ID_INPUT: users})
        except PredictError as error:
            return [self._popular(user_id, arm, k, error) for user_id in user_ids]
        candidates = retrieved[ITEM_IDS_OUTPUT]
        try:
            ranked, arm = self._predict(self.ranking_model, arm, {USER_ID_INPUT: users, CANDIDATES_INPUT: candidates})
            scores, source, problem = ranked[SCORES_OUTPUT], "two_stage", ""
        except PredictError as error:
            scores, source, problem = retrieved[SCORES_OUTPUT], "retrieval_only", str(error)
        return [Recommendations(user_id, arm, source, self._top_k(candidates[row], scores[row], k), problem)
                for row, user_id in enumerate(user_ids)]

    def _predict(self, model: str, arm: str, inputs: Mapping[str, np.ndarray]) -> tuple[dict, str]:
        """Predict at the arm's label; where the server has no such label, at the latest version."""
        missing_since = self._label_missing_since.get((model, arm))
        if arm == LATEST or (missing_since is not None and time.monotonic() - missing_since < LABEL_RECHECK_S):
            return self._predict_with_retries(model, None, inputs), LATEST
        try:
            return self._predict_with_retries(model, arm, inputs), arm
        except PredictError as error:
            label_undefined = error.code == grpc.StatusCode.INVALID_ARGUMENT and "version label" in error.message
            if label_undefined or error.code == grpc.StatusCode.NOT_FOUND:  # NOT_FOUND: its version was unloaded
                self._label_missing_since[(model, arm)] = time.monotonic()  # skip the failing round trip a while
                return self._predict_with_retries(model, None, inputs), LATEST
            raise

    def _predict_with_retries(self, model: str, label: str | None, inputs: Mapping[str, np.ndarray]) -> dict:
        for attempt in range(self.retries + 1):
            try:
                return self.transport.predict(model, label, inputs, self.timeout_s)
            except PredictError as error:
                if error.code not in RETRYABLE or attempt == self.retries:
                    raise
                time.sleep(self.backoff_s * 2 ** attempt)

    def _top_k(self, item_ids: np.ndarray, scores: np.ndarray, k: int) -> list[Recommendation]:
        order = [index for index in np.argsort(-scores, kind="stable") if _text(item_ids[index])][:k]
        return self._items([_text(item_ids[index]) for index in order], [float(scores[index]) for index in order])

    def _popular(self, user_id: str, arm: str, k: int, error: PredictError) -> Recommendations:
        if not len(self.catalog):
            raise error
        popular = list(self.catalog.item_ids[:k])  # the items file lists the most popular first
        return Recommendations(user_id, arm, "popular_fallback", self._items(popular, [None] * len(popular)),
                               str(error))

    def _items(self, item_ids: list[str], scores: Sequence[float | None]) -> list[Recommendation]:
        """The recommendations with their titles; an item the catalog lacks gets an empty title."""
        indices = self.catalog.indices(item_ids)
        return [Recommendation(item_id, str(self.catalog.titles[index - 1]) if index else "", score)
                for item_id, index, score in zip(item_ids, indices, scores)]


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
