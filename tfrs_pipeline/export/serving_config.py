"""The TF Serving model configuration (``ModelServerConfig``): built, written and checked with the real proto.

One text file tells a model server which models to serve side by side, where their versions live,
which versions to keep loaded (the version policy) and which names clients may use instead of
numbers (version labels such as ``stable`` and ``canary``). The same file drives our server and
``tensorflow_model_server``, so it is never assembled from string templates: it is a
``ModelServerConfig`` message, printed and parsed by ``google.protobuf.text_format``.

Labels and the version policy must never contradict each other: a label pointing to a version the
policy unloads answers NOT_FOUND, and a server restarted on such a config refuses to start. So a
labelled model is served with the ``specific`` policy of its labelled versions
(``pin_labelled_versions``), and the labels move only through ``python -m tfrs_pipeline.rollout``.
"""
import dataclasses
import os
import pathlib
from typing import Mapping, Sequence

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from tfrs_pipeline.atomic import write_text_atomically

ModelServerConfig = model_server_config_pb2.ModelServerConfig
ModelConfig = model_server_config_pb2.ModelConfig

PLATFORM = "tensorflow"
VERSION_POLICIES = ("latest", "all", "specific")


class ServingConfigError(ValueError):
    """A model server configuration file that cannot be used, naming the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One served model: its name, the folder holding its integer versions, and which of them to serve.

    Attributes:
      name: the name clients ask for (``ModelSpec.name``, ``/v1/models/<name>``).
      base_path: the folder holding ``<version>/`` SavedModels.
      version_policy: ``latest`` (the ``num_versions`` highest), ``all``, or ``specific`` (``versions``).
      num_versions: how many of the latest versions to serve under the ``latest`` policy.
      versions: the versions to serve under the ``specific`` policy.
      version_labels: label -> version, e.g. ``{"stable": 3, "canary": 4}``.
    """

    name: str
    base_path: str
    version_policy: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()
    version_labels: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def to_proto(self) -> ModelConfig:
        model = ModelConfig(name=self.name, base_path=str(self.base_path), model_platform=PLATFORM)
        if self.version_policy == "latest":
            model.model_version_policy.latest.num_versions = self.num_versions
        elif self.version_policy == "all":
            model.model_version_policy.all.SetInParent()
        elif self.version_policy == "specific":
            model.model_version_policy.specific.versions.extend(self.versions)
        else:
            raise ValueError(f"model {self.name!r}: version_policy must be one of {VERSION_POLICIES}, "
                             f"got {self.version_policy!r}")
        for label, version in self.version_labels.items():
            model.version_labels[label] = version
        return model


def build_config(entries: Sequence[ModelEntry]) -> ModelServerConfig:
    """A ``ModelServerConfig`` serving ``entries`` side by side; raises ``ValueError`` if it is inconsistent."""
    config = ModelServerConfig()
    for entry in entries:
        config.model_config_list.config.append(entry.to_proto())
    problems = config_problems(config)
    if problems:
        raise ValueError("invalid model server config: " + "; ".join(problems))
    return config


def config_problems(config: ModelServerConfig) -> list[str]:
    """Everything that would stop a model server from using ``config`` (empty when it is sound)."""
    if config.WhichOneof("config") == "custom_model_config":
        return ["custom_model_config is not supported; list the models in model_config_list"]
    problems = []
    seen_names = set()
    for index, model in enumerate(config.model_config_list.config):
        where = f"model {model.name!r}" if model.name else f"model #{index + 1}"
        problems += [f"{where}: {problem}" for problem in _model_problems(model)]
        if model.name in seen_names:
            problems.append(f"{where}: the name is used twice")
        seen_names.add(model.name)
    return problems


def _model_problems(model: ModelConfig) -> list[str]:
    problems = []
    if not model.name:
        problems.append("name is missing")
    if not model.base_path:
        problems.append("base_path is missing")
    if model.model_platform not in ("", PLATFORM):
        problems.append(f"model_platform must be {PLATFORM!r}, got {model.model_platform!r}")
    policy = model.model_version_policy
    if policy.WhichOneof("policy_choice") == "specific" and not policy.specific.versions:
        problems.append("the specific version policy lists no versions")
    for label, version in model.version_labels.items():
        if not label or label[0].isdigit():
            problems.append(f"version label {label!r} must be a name, not empty or a number")
        if version <= 0:
            problems.append(f"version label {label!r} must point to a positive version, got {version}")
    return problems


def pin_labelled_versions(model: ModelConfig) -> None:
    """Makes ``model``'s policy serve exactly its labelled versions (``specific``); unlabelled models keep theirs."""
    if model.version_labels:
        model.model_version_policy.specific.versions[:] = sorted(set(model.version_labels.values()))


def config_to_text(config: ModelServerConfig) -> str:
    return text_format.MessageToString(config)


def write_config(config: ModelServerConfig, path: str | os.PathLike) -> pathlib.Path:
    """Writes ``config`` as a text proto atomically (a polling server never reads half a file)."""
    problems = config_problems(config)
    if problems:
        raise ServingConfigError(path, "refusing to write an invalid config: " + "; ".join(problems))
    text = config_to_text(config)
    if parse_config(text, path) != config:  # what the server will parse is what was meant
        raise ServingConfigError(path, "the config does not survive printing and parsing with the proto")
    target = pathlib.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(target, text)
    return target


def parse_config(text: str, source: str | os.PathLike = "<text>") -> ModelServerConfig:
    """Parses and checks a ``ModelServerConfig`` text proto; errors name ``source`` and the problem."""
    config = ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as error:
        raise ServingConfigError(source, f"not a ModelServerConfig text proto: {error}") from None
    problems = config_problems(config)
    if problems:
        raise ServingConfigError(source, "; ".join(problems))
    return config


def read_config(path: str | os.PathLike) -> ModelServerConfig:
    """Reads, parses and checks a ``ModelServerConfig`` file."""
    try:
        text = pathlib.Path(path).read_text()
    except OSError as error:
        raise ServingConfigError(path, f"cannot read the model config file: {error.strerror}") from None
    return parse_config(text, source=path)


def upsert_model(path: str | os.PathLike, entry: ModelEntry) -> ModelServerConfig:
    """Adds ``entry`` to the config file at ``path`` (created if missing), replacing a model of the same name.

    The other models keep their place and settings, so the train command can add retrieval,
    ranking and the session model one after another to the same file. A model that has labels keeps
    them (a new export does not move ``stable`` or ``canary``: the rollout command does), and a
    labelled model serves exactly its labelled versions, so no label ever points to an unloaded one.
    """
    config = read_config(path) if pathlib.Path(path).exists() else ModelServerConfig()
    models = config.model_config_list.config
    new_model = entry.to_proto()
    for index, model in enumerate(models):
        if model.name == entry.name:
            labels = {**model.version_labels, **entry.version_labels}
            new_model.ClearField("version_labels")
            new_model.version_labels.update(labels)
            models[index].CopyFrom(new_model)
            break
    else:
        models.append(new_model)
    for model in models:
        pin_labelled_versions(model)
    write_config(config, path)
    return config
