"""TF Serving's gRPC services, implemented on the stubs and messages of ``tensorflow-serving-api``.

``tensorflow.serving.PredictionService`` (Predict, GetModelMetadata; Classify, Regress and
MultiInference answer UNIMPLEMENTED: our exports have predict signatures only) and
``tensorflow.serving.ModelService`` (GetModelStatus, HandleReloadConfigRequest). Any TF Serving
client, in any language, talks to this server unchanged.

``HandleReloadConfigRequest`` changes what the server reads from disk, so it is not open to any
client: only loopback peers may call it (unless the server is started with
``--allow_remote_config_reload``), and every ``base_path`` must lie under one of the server's
base path roots (a reload naming ``/proc`` would otherwise list process ids as versions).
"""
import dataclasses
import ipaddress
import os
import pathlib

import grpc
from google.protobuf import any_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tfrs_pipeline.contracts import SERVING_SIGNATURE
from tfrs_pipeline.serving import tensors
from tfrs_pipeline.serving.errors import ServingError
from tfrs_pipeline.serving.model_manager import ModelManager, missing_base_paths
from tfrs_pipeline.serving.prediction import PredictionBackend
from tfrs_pipeline.serving.servable import Servable

STATE_NUMBERS = get_model_status_pb2.ModelVersionStatus.State


def requested_version(model_spec) -> tuple[int | None, str | None]:
    """(version, label) from a ``ModelSpec``'s ``version_choice`` oneof."""
    choice = model_spec.WhichOneof("version_choice")
    if choice == "version":
        return model_spec.version.value, None
    if choice == "version_label":
        return None, model_spec.version_label
    return None, None


def _fill_spec(model_spec, servable: Servable, signature_name: str = "") -> None:
    model_spec.name = servable.name
    model_spec.version.value = servable.version
    if signature_name:
        model_spec.signature_name = signature_name


def _abort_on_serving_error(method):
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except ServingError as error:
            context.abort(error.code, error.message)
    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, backend: PredictionBackend):
        self._backend = backend

    @_abort_on_serving_error
    def Predict(self, request: predict_pb2.PredictRequest, context) -> predict_pb2.PredictResponse:
        version, label = requested_version(request.model_spec)
        inputs = {name: tensors.from_tensor_proto(name, proto, self._backend.max_batch_size)
                  for name, proto in request.inputs.items()}
        signature_name = request.model_spec.signature_name or SERVING_SIGNATURE
        servable, outputs = self._backend.predict(request.model_spec.name, version, label, signature_name, inputs,
                                                  list(request.output_filter), entrypoint="GRPC")
        response = predict_pb2.PredictResponse()
        _fill_spec(response.model_spec, servable, signature_name)
        for name, value in outputs.items():
            tensors.fill_tensor_proto(response.outputs[name], value)
        return response

    @_abort_on_serving_error
    def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest, context):
        if list(request.metadata_field) != ["signature_def"]:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"metadata_field must be ['signature_def'], got {list(request.metadata_field)}")
        version, label = requested_version(request.model_spec)
        servable = self._backend.manager.servable(request.model_spec.name, version, label)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        _fill_spec(response.model_spec, servable)
        response.metadata["signature_def"].CopyFrom(_packed(signature_def_map(servable)))
        return response

    def Classify(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, _no_signature_for("Classify", "tensorflow/serving/classify"))

    def Regress(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, _no_signature_for("Regress", "tensorflow/serving/regress"))

    def MultiInference(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED,
                      _no_signature_for("MultiInference", "tensorflow/serving/classify or regress"))


def _no_signature_for(api: str, method_name: str) -> str:
    return (f"{api} is not supported by this server: it needs a signature whose method_name is {method_name}, "
            "and the exported models have predict signatures only; use Predict")


def signature_def_map(servable: Servable) -> get_model_metadata_pb2.SignatureDefMap:
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for name, signature_def in servable.signature_defs.items():
        signature_map.signature_def[name].CopyFrom(signature_def)
    return signature_map


def _packed(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


@dataclasses.dataclass(frozen=True)
class ReloadPolicy:
    """Who may reload the configuration over gRPC, and where its base paths may point.

    Attributes:
      allow_remote: accept reloads from peers other than loopback.
      base_path_roots: folders every reloaded ``base_path`` must lie in (after resolving links).
    """

    allow_remote: bool
    base_path_roots: tuple[pathlib.Path, ...]

    def refusal(self, peer: str, config) -> ServingError | None:
        """Why a reload from ``peer`` (``context.peer()``) of ``config`` is refused, or None."""
        if not self.allow_remote and not _is_loopback(peer):
            return ServingError(grpc.StatusCode.PERMISSION_DENIED,
                                f"configuration reload is accepted from loopback peers only, not {peer} "
                                "(start the server with --allow_remote_config_reload to allow it)")
        outside = [model.base_path for model in config.model_config_list.config
                   if not any(_is_within(model.base_path, root) for root in self.base_path_roots)]
        if outside:
            roots = ", ".join(str(root) for root in self.base_path_roots)
            return ServingError(grpc.StatusCode.PERMISSION_DENIED,
                                f"base_path {', '.join(outside)} is outside the base path roots ({roots}; "
                                "--model_base_path_roots)")
        missing = missing_base_paths(config)
        if missing:
            return ServingError(grpc.StatusCode.INVALID_ARGUMENT, "; ".join(missing))
        return None


def _is_loopback(peer: str) -> bool:
    kind, _, address = peer.partition(":")
    if kind == "unix":
        return True
    host = address.rsplit(":", 1)[0].strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_within(path: str, root: pathlib.Path) -> bool:
    return pathlib.Path(os.path.realpath(path)).is_relative_to(root)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager: ModelManager, reload_policy: ReloadPolicy):
        self._manager = manager
        self._reload_policy = reload_policy

    @_abort_on_serving_error
    def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest, context):
        return model_status_response(self._manager, request.model_spec.name, *requested_version(request.model_spec))

    def HandleReloadConfigRequest(self, request: model_management_pb2.ReloadConfigRequest, context):
        response = model_management_pb2.ReloadConfigResponse()
        try:
            refusal = self._reload_policy.refusal(context.peer(), request.config)
            if refusal:
                raise refusal
            self._manager.apply_config(request.config)
        except ServingError as error:
            response.status.error_code = error.code.value[0]
            response.status.error_message = error.message
        return response


def model_status_response(manager: ModelManager, name: str, version: int | None, label: str | None
                          ) -> get_model_status_pb2.GetModelStatusResponse:
    response = get_model_status_pb2.GetModelStatusResponse()
    for version_number, status in manager.statuses(name, version, label).items():
        entry = response.model_version_status.add(version=version_number, state=STATE_NUMBERS.Value(status.state))
        entry.status.SetInParent()  # TF Serving always reports a status, OK included
        if status.error_message:
            entry.status.error_code = grpc.StatusCode.UNKNOWN.value[0]
            entry.status.error_message = status.error_message
    return response


def add_services(server: grpc.Server, backend: PredictionBackend, reload_policy: ReloadPolicy) -> None:
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(backend), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(backend.manager, reload_policy), server)
