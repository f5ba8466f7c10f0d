"""The Kubernetes manifests in deploy/kubernetes/ hold together: schema, cross-references, flags, configs.

No cluster here, so the check is what `kubectl apply` and the pods would trip over: each object
against a JSON schema of the fields we rely on; every flag a server container gets is one
`tensorflow_model_server` has and our server parses; every file a flag names is a key of the
ConfigMap mounted there, and parses with the real proto; every model lives under the model store
mount; Services, probes and autoscalers point at ports and Deployments that exist; and the
generated ConfigMaps are what `serving_config/` generates today.
"""
import importlib.util
import pathlib

import jsonschema
import pytest
import yaml
from google.protobuf import text_format

from tfrs_pipeline.export.serving_config import parse_config
from tfrs_pipeline.serving.server import build_flag_parser
from tfrs_pipeline.serving.server_protos import BatchingParameters, MonitoringConfig

DEPLOY_DIR = pathlib.Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"
# tensorflow_model_server flags the manifests may use (all also parsed by tfrs-model-server).
TF_SERVING_FLAGS = {
    "port", "rest_api_port", "model_config_file", "model_config_file_poll_wait_seconds",
    "file_system_poll_wait_seconds", "enable_batching", "batching_parameters_file", "monitoring_config_file",
    "allow_version_labels_for_unavailable_models", "model_name", "model_base_path",
}
OUR_SERVER_ONLY_FLAGS = {"host"}  # tensorflow_model_server binds every address by itself

_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
_METADATA = {"type": "object", "required": ["name", "labels"],
             "properties": {"name": _NAME, "labels": {"type": "object", "additionalProperties": {"type": "string"}}}}
_PORT_REF = {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 65535}, {"type": "string", "maxLength": 15}]}
_PROBE = {"type": "object", "minProperties": 1,
          "properties": {"httpGet": {"type": "object", "required": ["path", "port"],
                                     "properties": {"path": {"type": "string", "pattern": "^/"}, "port": _PORT_REF}},
                         "tcpSocket": {"type": "object", "required": ["port"], "properties": {"port": _PORT_REF}},
                         "periodSeconds": {"type": "integer", "minimum": 1},
                         "failureThreshold": {"type": "integer", "minimum": 1}}}
_QUANTITY = {"anyOf": [{"type": "string", "pattern": r"^[0-9.]+(m|Ki|Mi|Gi|Ti)?$"}, {"type": "number"}]}
_CONTAINER = {
    "type": "object",
    "required": ["name", "image", "args", "ports", "readinessProbe", "livenessProbe", "resources", "volumeMounts"],
    "properties": {
        "name": _NAME,
        "image": {"type": "string", "pattern": r"^[^:\s]+:[^:\s]+$"},  # a pinned tag, never implicit :latest
        "command": {"type": "array", "items": {"type": "string"}},
        "args": {"type": "array", "items": {"type": "string", "pattern": r"^--[a-z_]+=\S+$"}},
        "ports": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["name", "containerPort"],
            "properties": {"name": {"type": "string", "maxLength": 15},
                           "containerPort": {"type": "integer", "minimum": 1, "maximum": 65535}}}},
        "readinessProbe": _PROBE, "livenessProbe": _PROBE, "startupProbe": _PROBE,
        "resources": {"type": "object", "required": ["requests", "limits"], "properties": {
            "requests": {"type": "object", "required": ["cpu", "memory"], "additionalProperties": _QUANTITY},
            "limits": {"type": "object", "required": ["memory"], "additionalProperties": _QUANTITY}}},
        "volumeMounts": {"type": "array", "items": {
            "type": "object", "required": ["name", "mountPath"],
            "properties": {"mountPath": {"type": "string", "pattern": "^/"}, "readOnly": {"type": "boolean"}}}},
    },
}
SCHEMAS = {
    ("apps/v1", "Deployment"): {
        "type": "object", "required": ["metadata", "spec"],
        "properties": {"metadata": _METADATA, "spec": {
            "type": "object", "required": ["replicas", "selector", "template"],
            "properties": {
                "replicas": {"type": "integer", "minimum": 2},  # one replica is no load balancing
                "selector": {"type": "object", "required": ["matchLabels"]},
                "template": {"type": "object", "required": ["metadata", "spec"], "properties": {
                    "spec": {"type": "object", "required": ["containers", "volumes"], "properties": {
                        "containers": {"type": "array", "minItems": 1, "items": _CONTAINER},
                        "volumes": {"type": "array", "items": {
                            "type": "object", "required": ["name"],
                            "oneOf": [{"required": ["configMap"]}, {"required": ["persistentVolumeClaim"]}]}}}}}}}}}},
    ("v1", "Service"): {
        "type": "object", "required": ["metadata", "spec"],
        "properties": {"metadata": _METADATA, "spec": {
            "type": "object", "required": ["selector", "ports"],
            "properties": {"type": {"enum": ["ClusterIP", "LoadBalancer", "NodePort"]},
                           "ports": {"type": "array", "minItems": 1, "items": {
                               "type": "object", "required": ["name", "port", "targetPort"],
                               "properties": {"port": {"type": "integer"}, "targetPort": _PORT_REF}}}}}}},
    ("autoscaling/v2", "HorizontalPodAutoscaler"): {
        "type": "object", "required": ["metadata", "spec"],
        "properties": {"metadata": _METADATA, "spec": {
            "type": "object", "required": ["scaleTargetRef", "minReplicas", "maxReplicas", "metrics"],
            "properties": {
                "scaleTargetRef": {"type": "object", "required": ["apiVersion", "kind", "name"],
                                   "properties": {"kind": {"const": "Deployment"}}},
                "minReplicas": {"type": "integer", "minimum": 2},
                "metrics": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["type"],
                    "properties": {"type": {"enum": ["Resource", "Pods"]}}}}}}}},
    ("v1", "ConfigMap"): {
        "type": "object", "required": ["metadata", "data"],
        "properties": {"metadata": _METADATA,
                       "data": {"type": "object", "additionalProperties": {"type": "string"}}}},
    ("v1", "PersistentVolumeClaim"): {
        "type": "object", "required": ["metadata", "spec"],
        "properties": {"metadata": _METADATA, "spec": {
            "type": "object", "required": ["accessModes", "resources"],
            "properties": {"accessModes": {"type": "array", "contains": {"const": "ReadWriteMany"}}}}}},
}


@pytest.fixture(scope="module")
def manifests() -> list[dict]:
    objects = []
    for path in sorted(DEPLOY_DIR.glob("*.yaml")):
        objects += [document for document in yaml.safe_load_all(path.read_text()) if document]
    return objects


def _of_kind(manifests: list[dict], kind: str) -> dict[str, dict]:
    found = {}
    for manifest in manifests:
        if manifest["kind"] == kind:
            found.setdefault(manifest["metadata"]["name"], manifest)  # the latency HPA replaces the CPU one
    return found


def test_every_object_matches_its_schema(manifests):
    kinds = {(manifest["apiVersion"], manifest["kind"]) for manifest in manifests}
    assert kinds == set(SCHEMAS)
    for manifest in manifests:
        jsonschema.validate(manifest, SCHEMAS[(manifest["apiVersion"], manifest["kind"])])


def test_schema_rejects_what_would_break_a_deployment(manifests):
    deployment = _of_kind(manifests, "Deployment")["tf-serving"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    for broken in ({**container, "image": "tensorflow/serving"}, {**container, "args": ["--port", "8500"]},
                   {key: value for key, value in container.items() if key != "readinessProbe"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, _CONTAINER)


def test_server_flags_are_tensorflow_model_server_flags_that_our_server_parses(manifests):
    for name, deployment in _of_kind(manifests, "Deployment").items():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        flag_names = {arg[2:].split("=")[0] for arg in container["args"]}
        ours = container["image"].startswith("tfrs-pipeline")
        allowed = TF_SERVING_FLAGS | (OUR_SERVER_ONLY_FLAGS if ours else set())
        assert flag_names <= allowed, (name, flag_names - allowed)
        flags = build_flag_parser().parse_args(container["args"])
        assert flags.enable_batching and flags.model_config_file


def test_config_files_named_by_flags_are_mounted_and_parse(manifests):
    config_maps = _of_kind(manifests, "ConfigMap")
    models_mount = "/models"
    for name, deployment in _of_kind(manifests, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        mounts = {mount["mountPath"]: volumes[mount["name"]] for mount in container["volumeMounts"]}
        claims = _of_kind(manifests, "PersistentVolumeClaim")
        assert mounts[models_mount]["persistentVolumeClaim"]["claimName"] in claims
        flags = build_flag_parser().parse_args(container["args"])
        files = {}
        for path in (flags.model_config_file, flags.batching_parameters_file, flags.monitoring_config_file):
            folder, file_name = path.rsplit("/", 1)
            config_map = config_maps[mounts[folder]["configMap"]["name"]]
            files[path] = config_map["data"][file_name]
        model_config = parse_config(files[flags.model_config_file], source=f"{name}: {flags.model_config_file}")
        assert {model.name for model in model_config.model_config_list.config} >= {"retrieval", "ranking"}
        for model in model_config.model_config_list.config:
            assert model.base_path.startswith(models_mount + "/"), (name, model.base_path)
        text_format.Parse(files[flags.batching_parameters_file], BatchingParameters())
        monitoring = text_format.Parse(files[flags.monitoring_config_file], MonitoringConfig())
        assert monitoring.prometheus_config.enable
        assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"] == \
            monitoring.prometheus_config.path


def test_only_our_server_is_given_the_scann_export(manifests):
    config_maps = _of_kind(manifests, "ConfigMap")
    for name, deployment in _of_kind(manifests, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        config_map = next(volume["configMap"]["name"] for volume in pod["volumes"] if "configMap" in volume)
        model_config = parse_config(config_maps[config_map]["data"]["models.config"])
        base_paths = {model.base_path for model in model_config.model_config_list.config}
        serves_scann = "/models/retrieval" in base_paths
        assert serves_scann == pod["containers"][0]["image"].startswith("tfrs-pipeline"), name


def test_services_probes_and_autoscalers_point_at_what_exists(manifests):
    deployments = _of_kind(manifests, "Deployment")
    for deployment in deployments.values():
        template = deployment["spec"]["template"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
        container = template["spec"]["containers"][0]
        port_names = {port["name"] for port in container["ports"]}
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            for action in ("httpGet", "tcpSocket"):
                if action in container.get(probe, {}):
                    assert container[probe][action]["port"] in port_names
    for service in _of_kind(manifests, "Service").values():
        selector = service["spec"]["selector"].items()
        selected = [deployment for deployment in deployments.values()
                    if selector <= deployment["spec"]["template"]["metadata"]["labels"].items()]
        assert len(selected) == 1, service["metadata"]["name"]
        container_ports = {port["name"] for port in selected[0]["spec"]["template"]["spec"]["containers"][0]["ports"]}
        assert {port["targetPort"] for port in service["spec"]["ports"]} <= container_ports
    autoscalers = [manifest for manifest in manifests if manifest["kind"] == "HorizontalPodAutoscaler"]
    assert len(autoscalers) == 3  # CPU for each Deployment, and the latency variant
    for autoscaler in autoscalers:
        assert autoscaler["spec"]["scaleTargetRef"]["name"] in deployments
        assert autoscaler["spec"]["maxReplicas"] >= autoscaler["spec"]["minReplicas"]


def test_generated_config_maps_match_serving_config():
    spec = importlib.util.spec_from_file_location("generate_configmaps", DEPLOY_DIR / "generate_configmaps.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert (DEPLOY_DIR / "model-config.yaml").read_text() == generator.render(), (
        "deploy/kubernetes/model-config.yaml is stale: run python deploy/kubernetes/generate_configmaps.py")
