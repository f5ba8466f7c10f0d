"""Which model versions are loaded: version policies, labels, polling, and rollouts that never drop a request.

The manager follows TF Serving's model lifecycle. For each model in the ``ModelServerConfig`` it
lists the plain-integer folders under ``base_path`` (a half-written export is never one: see
``export/versioning.py``; a name such as ``06`` or ``²`` is ignored with a warning), picks the
versions its policy asks for (latest N, all, or specific) plus every version a label points to,
loads the new ones, and only then unloads versions no longer wanted. A request holds a reference
to the version it is running on, so unloading never interrupts it, and while the new version loads
the old one keeps serving. A config that moves labels takes effect in the same order: the versions
it labels are loaded first, then the labels move, then the versions no label or policy names any
more are unloaded, so a rollout never answers NOT_FOUND.

Faults have one home here. A version that fails to load is reported in its status (state END with
the error) and retried ``max_num_load_retries`` times, ``load_retry_interval_s`` apart, as TF
Serving does (a folder copied in slowly, a version fixed in place). If no wanted version could be
loaded, the versions already loaded stay in service, and a model serving nothing (a corrupt newest
version at start-up) serves the newest older version that loads: better than TF Serving, which
then serves nothing. An empty config is ignored, as TF Serving ignores it.
"""
import dataclasses
import logging
import pathlib
import threading
import time
from typing import Callable

import grpc
from tensorflow.core.protobuf import config_pb2

from tfrs_pipeline.export.serving_config import ModelConfig, ModelServerConfig, config_problems
from tfrs_pipeline.export.versioning import scan_versions
from tfrs_pipeline.serving.errors import ServingError, invalid_argument, not_found
from tfrs_pipeline.serving.servable import Servable

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class VersionStatus:
    """A version's state as GetModelStatus reports it (``ModelVersionStatus.State`` names)."""

    state: str
    error_message: str = ""


@dataclasses.dataclass
class _Model:
    config: ModelConfig
    labels: dict[str, int] = dataclasses.field(default_factory=dict)  # the labels requests resolve: see apply_config
    servables: dict[int, Servable] = dataclasses.field(default_factory=dict)
    statuses: dict[int, VersionStatus] = dataclasses.field(default_factory=dict)
    failed_loads: dict[int, tuple[int, float]] = dataclasses.field(default_factory=dict)  # version -> (tries, when)


def wanted_versions(config: ModelConfig, versions_on_disk: list[int]) -> list[int]:
    """The versions ``config``'s version policy serves out of ``versions_on_disk`` (sorted)."""
    policy = config.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return list(versions_on_disk)
    if choice == "specific":
        return [version for version in versions_on_disk if version in set(policy.specific.versions)]
    num_versions = policy.latest.num_versions if choice == "latest" and policy.latest.num_versions else 1
    return versions_on_disk[-num_versions:]


class ModelManager:
    """Loads, serves and unloads the versions of the configured models; thread-safe.

    Args:
      allow_labels_for_unavailable_versions: like TF Serving's
        ``--allow_version_labels_for_unavailable_models``; when False a config whose labels point
        to versions that are not loaded is refused.
      on_unload: called with each servable taken out of service (e.g. to stop its batching threads).
      max_num_load_retries: how many more times a version that failed to load is tried (TF Serving's
        ``--max_num_load_retries``).
      load_retry_interval_s: the time between those tries (``--load_retry_interval_micros``).
      session_config: how each version's session runs (``servable.session_config_for``).
    """

    def __init__(self, allow_labels_for_unavailable_versions: bool = False,
                 on_unload: Callable[[Servable], None] = lambda servable: None,
                 max_num_load_retries: int = 5, load_retry_interval_s: float = 60.0,
                 session_config: config_pb2.ConfigProto | None = None):
        self._allow_unavailable_labels = allow_labels_for_unavailable_versions
        self._session_config = session_config
        self._on_unload = on_unload
        self._max_load_retries = max_num_load_retries
        self._load_retry_interval_s = load_retry_interval_s
        self._warned_folders: set[tuple[str, str]] = set()
        self._models: dict[str, _Model] = {}
        self._config = ModelServerConfig()
        self._lock = threading.Lock()  # guards _models and _config; held only briefly
        self._reconcile_lock = threading.Lock()  # one load/unload pass at a time
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def config(self) -> ModelServerConfig:
        with self._lock:
            return self._config

    def apply_config(self, config: ModelServerConfig) -> None:
        """Serves the models of ``config``: adds, updates and removes models, then loads their versions.

        An empty config (no models) is ignored with a warning, as TF Serving ignores it: a config
        file caught mid-edit or an empty reload request must not unload every model. A base path
        that does not exist is logged (its versions may be published later).

        Raises:
          ServingError: INVALID_ARGUMENT for an inconsistent config, FAILED_PRECONDITION when a
            version label points to a version that is not available; the previous config is then
            kept in service.
        """
        problems = config_problems(config)
        if problems:
            raise invalid_argument("invalid model server config: " + "; ".join(problems))
        if not config.model_config_list.config:
            log.warning("ignoring an empty model config: the %d models served stay in service", len(self._models))
            return
        for problem in missing_base_paths(config):
            log.warning("%s", problem)
        with self._reconcile_lock:
            previous = self._config
            self._install(config)
            self._reconcile_all()
            problems = self._label_problems()
            if problems and not self._allow_unavailable_labels:
                self._install(previous)
                self._reconcile_all()
                raise ServingError(grpc.StatusCode.FAILED_PRECONDITION, "; ".join(problems))
            with self._lock:
                for model in self._models.values():
                    model.labels = dict(model.config.version_labels)
            self._reconcile_all()  # unloads the versions only the old labels named

    def _install(self, config: ModelServerConfig) -> None:
        new_configs = {model.name: model for model in config.model_config_list.config}
        with self._lock:
            removed = [self._models.pop(name) for name in list(self._models) if name not in new_configs]
            for name, model_config in new_configs.items():
                model = self._models.setdefault(name, _Model(model_config))
                if model.config != model_config:
                    model.config = model_config
                    model.failed_loads.clear()
            self._config = config
        for model in removed:
            for servable in model.servables.values():
                self._on_unload(servable)

    def reconcile(self) -> None:
        """Looks for new or removed version folders of every model and loads / unloads accordingly."""
        with self._reconcile_lock:
            self._reconcile_all()

    def _reconcile_all(self) -> None:
        with self._lock:
            models = list(self._models.values())
        for model in models:
            self._reconcile_model(model)

    def _reconcile_model(self, model: _Model) -> None:
        name = model.config.name
        on_disk, ignored = scan_versions(model.config.base_path)
        for folder in ignored:
            if (name, folder) not in self._warned_folders:
                self._warned_folders.add((name, folder))
                log.warning("model %s: ignoring the folder %r in %s: a version folder is named by a plain "
                            "integer (no sign, no leading zero, at most 2^63 - 1)", name, folder,
                            model.config.base_path)
        labelled = set(model.config.version_labels.values()) | set(model.labels.values())
        wanted = sorted(set(wanted_versions(model.config, on_disk)) | (labelled & set(on_disk)))
        for version in wanted:
            if version not in model.servables and self._may_load(model, version):
                self._load(model, version)
        if not any(version in model.servables for version in wanted):
            if not model.servables:  # serve the newest older version that loads rather than nothing
                for version in reversed([version for version in on_disk if version < max(wanted, default=0)]):
                    if self._may_load(model, version) and self._load(model, version):
                        break
            return  # keep what is serving rather than serve nothing
        for version in [version for version in model.servables if version not in wanted]:
            with self._lock:
                model.statuses[version] = VersionStatus("UNLOADING")
                servable = model.servables.pop(version)
                model.statuses[version] = VersionStatus("END")
            self._on_unload(servable)
            log.info("unloaded model %s version %d", name, version)

    def _may_load(self, model: _Model, version: int) -> bool:
        """Whether a version is new, or failed and is due for another of its retries."""
        if version not in model.failed_loads:
            return True
        tries, last_try = model.failed_loads[version]
        return tries <= self._max_load_retries and time.monotonic() - last_try >= self._load_retry_interval_s

    def _load(self, model: _Model, version: int) -> bool:
        name = model.config.name
        with self._lock:
            model.statuses[version] = VersionStatus("LOADING")
        path = pathlib.Path(model.config.base_path) / str(version)
        try:
            started = time.monotonic()
            servable = Servable(name, version, path, self._session_config)
            refused = servable.warm_up()
        except Exception as error:  # a broken version must not take the server down
            message = f"failed to load model {name} version {version} from {path}: {type(error).__name__}: {error}"
            tries = model.failed_loads.get(version, (0, 0.0))[0] + 1
            retry = (f"; retrying in {self._load_retry_interval_s:g} s" if tries <= self._max_load_retries
                     else f"; giving up after {tries} tries")
            log.error(message + retry)
            with self._lock:
                model.statuses[version] = VersionStatus("END", message)
                model.failed_loads[version] = (tries, time.monotonic())
            return False
        with self._lock:
            model.servables[version] = servable
            model.statuses[version] = VersionStatus("AVAILABLE")
            model.failed_loads.pop(version, None)
        log.info("loaded model %s version %d from %s in %.1f s, warmed up%s", name, version, path,
                 time.monotonic() - started, f" but for {', '.join(refused)}" if refused else "")
        return True

    def _label_problems(self) -> list[str]:
        with self._lock:
            return [f"version label '{label}' of model {name} points to version {version}, which is not available"
                    for name, model in self._models.items()
                    for label, version in model.config.version_labels.items() if version not in model.servables]

    def unavailable_models(self) -> list[str]:
        """The configured models with no available version: while there is one, the server is not ready."""
        with self._lock:
            return sorted(name for name, model in self._models.items() if not model.servables)

    def serves(self, name: str) -> bool:
        """Whether ``name`` is a configured model (metrics label only these)."""
        with self._lock:
            return name in self._models

    def servable(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """The loaded version a request asks for: a number, a label, or (neither) the latest.

        Raises:
          ServingError: NOT_FOUND for an unknown model or a version that is not available,
            INVALID_ARGUMENT for an unknown label, as TF Serving answers.
        """
        with self._lock:
            model = self._model(name)
            version = self._resolve_label(model, label) if label else version
            if version is None:
                if not model.servables:
                    raise not_found(f"Servable not found for request: Latest({name}): no version is available")
                return model.servables[max(model.servables)]
            if version not in model.servables:
                raise not_found(f"Servable not found for request: Specific({name}, {version})")
            return model.servables[version]

    def statuses(self, name: str, version: int | None = None, label: str | None = None) -> dict[int, VersionStatus]:
        """Version -> status for a model (or the one version asked for), as GetModelStatus reports it."""
        with self._lock:
            model = self._model(name)
            version = self._resolve_label(model, label) if label else version
            if version is not None:
                if version not in model.statuses:
                    raise not_found(f"Could not find version {version} of model {name}")
                return {version: model.statuses[version]}
            if not model.statuses:
                raise not_found(f"Could not find any versions of model {name}")
            return dict(sorted(model.statuses.items()))

    def _model(self, name: str) -> _Model:
        if name not in self._models:
            shown = name if len(name) <= 100 else name[:100] + f"... ({len(name)} characters)"
            raise not_found(f"Servable not found for request: model {shown!r} is not served")
        return self._models[name]

    @staticmethod
    def _resolve_label(model: _Model, label: str) -> int:
        if label not in model.labels:
            raise invalid_argument(f"Unrecognized servable version label: {label} (model {model.config.name} has "
                                   f"{sorted(model.labels) or 'no labels'})")
        return model.labels[label]

    def start_polling(self, file_system_poll_seconds: float,
                      config_source: Callable[[], ModelServerConfig] | None = None,
                      config_poll_seconds: float = 0) -> None:
        """Polls the base paths for new versions and, if ``config_source`` is given, the config for changes."""
        if file_system_poll_seconds > 0:
            self._start_thread("version-poller", file_system_poll_seconds, self.reconcile)
        if config_source is not None and config_poll_seconds > 0:
            self._start_thread("config-poller", config_poll_seconds, lambda: self._reload_if_changed(config_source))

    def _reload_if_changed(self, config_source: Callable[[], ModelServerConfig]) -> None:
        config = config_source()
        if config != self.config:
            self.apply_config(config)
            log.info("applied the changed model config")

    def _start_thread(self, name: str, interval_s: float, action: Callable[[], None]) -> None:
        def loop():
            while not self._stop.wait(interval_s):
                try:
                    action()
                except Exception as error:  # a bad poll (e.g. a broken config edit) must not stop polling
                    log.error("%s: %s", name, error)
        thread = threading.Thread(target=loop, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def missing_base_paths(config: ModelServerConfig) -> list[str]:
    """One line per model whose ``base_path`` is not a folder (a typo, or a volume not mounted)."""
    return [f"model {model.name}: base_path {model.base_path} does not exist or is not a folder"
            for model in config.model_config_list.config if not pathlib.Path(model.base_path).is_dir()]
