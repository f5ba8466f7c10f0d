"""TF Serving's gRPC services, implemented on the stubs and messages of ``tensorflow-serving-api``.

``tensorflow.serving.PredictionService`` (Predict, GetModelMetadata; Classify, Regress and
MultiInference answer UNIMPLEMENTED: our exports have predict signatures only) and
``tensorflow.serving.ModelService`` (GetModelStatus, HandleReloadConfigRequest). Any TF Serving
client, in any language, talks to this server unchanged.
"""
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
from tfrs_pipeline.serving.model_manager import ModelManager
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
        inputs = {name: tensors.from_tensor_proto(name, proto) for name, proto in request.inputs.items()}
        signature_name = request.model_spec.signature_name or SERVING_SIGNATURE
        servable, outputs = self._backend.predict(request.model_spec.name, version, label, signature_name, inputs,
                                                  list(request.output_filter), entrypoint="GRPC")
        response = predict_pb2.PredictResponse()
        _fill_spec(response.model_spec, servable, signature_name)
        for name, value in outputs.items():
            response.outputs[name].CopyFrom(tensors.to_tensor_proto(value))
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


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager: ModelManager):
        self._manager = manager

    @_abort_on_serving_error
    def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest, context):
        return model_status_response(self._manager, request.model_spec.name, *requested_version(request.model_spec))

    def HandleReloadConfigRequest(self, request: model_management_pb2.ReloadConfigRequest, context):
        response = model_management_pb2.ReloadConfigResponse()
        try:
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


def add_services(server: grpc.Server, backend: PredictionBackend) -> None:
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(backend), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(backend.manager), server)
