"""``python -m tfrs_pipeline.rollout canary|promote|rollback``: move the A/B labels as a command, never by hand.

    python -m tfrs_pipeline.rollout canary --model_config_file=serving_config/models.config   # newest export
    python -m tfrs_pipeline.rollout canary --version=7 --model_config_file=...
    python -m tfrs_pipeline.rollout promote --model_config_file=...    # stable := canary
    python -m tfrs_pipeline.rollout rollback --model_config_file=...   # canary := stable

Hand edits of ``models.config`` broke serving: a label left on a version the ``latest`` policy had
unloaded answered NOT_FOUND, and a restart on that file exited with status 2 (a crash loop). This
command changes the labels of retrieval, ranking and the one-call recommender together (an A/B arm
must use matching versions), sets each labelled model's policy to exactly its labelled versions,
checks that every labelled version exists on disk, prints and re-parses the file with the real
``ModelServerConfig`` proto and writes it atomically, so a polling server only ever reads a whole,
consistent config.
"""
import argparse
import pathlib
import sys
from typing import Sequence

from tfrs_pipeline.contracts import CANARY_LABEL, RANKING_MODEL, RECOMMENDER_MODEL, RETRIEVAL_MODEL, STABLE_LABEL
from tfrs_pipeline.export.serving_config import (
    ModelConfig,
    ModelServerConfig,
    ServingConfigError,
    pin_labelled_versions,
    read_config,
    write_config,
)
from tfrs_pipeline.export.versioning import existing_versions

ACTIONS = ("canary", "promote", "rollback")
ARM_MODELS = (RETRIEVAL_MODEL, RANKING_MODEL, RECOMMENDER_MODEL)  # what one A/B arm's answers come from


class RolloutError(ValueError):
    """A rollout that would leave a label on a version that cannot serve; the config is left unchanged."""


def rolled_out(config: ModelServerConfig, action: str, model_names: Sequence[str],
               version: int | None = None) -> ModelServerConfig:
    """A copy of ``config`` after ``action`` on ``model_names``.

    Args:
      config: the current config.
      action: ``canary`` (``canary`` := ``version``, by default the newest version every model has on
        disk; ``stable`` is set to the newest older version on a model's first rollout), ``promote``
        (``stable`` := ``canary``) or ``rollback`` (``canary`` := ``stable``).
      model_names: the models whose labels move together.
      version: the canary version (``canary`` only).

    Raises:
      RolloutError: a model is not in the config, a label the action reads is missing, or a labelled
        version is not on disk.
    """
    updated = ModelServerConfig()
    updated.CopyFrom(config)
    models = {model.name: model for model in updated.model_config_list.config}
    unknown = [name for name in model_names if name not in models]
    if unknown:
        raise RolloutError(f"no model {', '.join(unknown)} in the config (it has {', '.join(sorted(models))})")
    selected = [models[name] for name in model_names]
    on_disk = {model.name: existing_versions(model.base_path) for model in selected}
    if action == "canary":
        if version is None:
            common = set.intersection(*(set(versions) for versions in on_disk.values()))
            if not common:
                raise RolloutError(f"no version is on disk for all of {', '.join(model_names)}")
            version = max(common)
        for model in selected:
            older = [existing for existing in on_disk[model.name] if existing < version]
            if STABLE_LABEL not in model.version_labels:
                model.version_labels[STABLE_LABEL] = older[-1] if older else version
            model.version_labels[CANARY_LABEL] = version
    else:
        source, target = (CANARY_LABEL, STABLE_LABEL) if action == "promote" else (STABLE_LABEL, CANARY_LABEL)
        for model in selected:
            if source not in model.version_labels:
                raise RolloutError(f"model {model.name} has no '{source}' label to {action} from")
            model.version_labels[target] = model.version_labels[source]
    for model in selected:
        _check_on_disk(model, on_disk[model.name])
        pin_labelled_versions(model)
    return updated


def _check_on_disk(model: ModelConfig, versions: list[int]) -> None:
    missing = {label: version for label, version in model.version_labels.items() if version not in versions}
    if missing:
        raise RolloutError(f"model {model.name}: label(s) {missing} would point to versions not in "
                           f"{model.base_path} (it has {versions or 'none'})")


def build_flag_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tfrs_pipeline.rollout", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("action", choices=ACTIONS)
    parser.add_argument("--model_config_file", required=True, help="the ModelServerConfig file the server polls")
    parser.add_argument("--model", action="append", dest="models",
                        help=f"a model whose labels move (repeat; default: those of {', '.join(ARM_MODELS)} that the "
                             "config serves)")
    parser.add_argument("--version", type=int, help="the canary version (default: the newest on disk for all)")
    return parser


def main(argv: list[str] | None = None) -> int:
    flags = build_flag_parser().parse_args(argv)
    if flags.version is not None and flags.action != "canary":
        print("rollout: --version is for canary only", file=sys.stderr)
        return 2
    try:
        config = read_config(flags.model_config_file)
        served = {model.name for model in config.model_config_list.config}
        models = flags.models or [name for name in ARM_MODELS if name in served]
        updated = rolled_out(config, flags.action, models, flags.version)
        write_config(updated, flags.model_config_file)
    except (ServingConfigError, RolloutError) as error:
        print(f"rollout: {error}; {pathlib.Path(flags.model_config_file)} is unchanged", file=sys.stderr)
        return 2
    for model in updated.model_config_list.config:
        if model.version_labels:
            labels = ", ".join(f"{label}={version}" for label, version in sorted(model.version_labels.items()))
            print(f"{model.name}: {labels}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
