"""The command: ``python -m tfrs_pipeline.train --data_dir=PATH --export_dir=PATH``.

Trains, evaluates and exports the models of one task with good defaults. ``--task`` chooses the
task's configuration class (``tfrs_pipeline/config.py``); every other flag is one of its fields,
with the field's default, help and choices, and the configuration is written next to the run's
outputs.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Sequence

import tfrs_pipeline  # noqa: F401  (selects Keras 2 before TensorFlow builds anything)
from tfrs_pipeline.config import TASKS, TaskConfig, TwoStageConfig, config_for_task
from tfrs_pipeline.data.errors import DataError

_PROG = "python -m tfrs_pipeline.train"
_TASK_HELP = ("two_stage: retrieval + ranking on user histories; session: the next item of anonymous "
              "sessions, with its own defaults (see --task=session --help)")
# Annotations are strings under ``from __future__ import annotations``.
_FLAG_TYPES = {"int": int, "int | None": int, "float": float, "float | None": float}


def _parser(config_class: type[TaskConfig]) -> argparse.ArgumentParser:
    """The flags of ``config_class``: one per field, plus ``--task``."""
    parser = argparse.ArgumentParser(prog=_PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=TASKS, default=config_class.task, help=f"{_TASK_HELP} (default: "
                        f"{config_class.task})")
    for field in dataclasses.fields(config_class):
        _add_flag(parser, field)
    return parser


def _add_flag(parser: argparse.ArgumentParser, field: dataclasses.Field) -> None:
    """``--<field>`` with the field's default, help and choices: the dataclass is the only place they live."""
    help_text = field.metadata["help"] + (f" (default: {field.default})" if field.default is not None else "")
    if field.type == "bool":
        parser.add_argument(f"--{field.name}", action=argparse.BooleanOptionalAction, default=field.default,
                            help=help_text)
    else:
        parser.add_argument(f"--{field.name}", type=_FLAG_TYPES.get(field.type, str), default=field.default,
                            choices=field.metadata.get("choices"), help=help_text)


def parse_config(argv: Sequence[str]) -> TaskConfig:
    """The run's configuration from command-line flags; flags left out take the task's defaults."""
    task_only = argparse.ArgumentParser(prog=_PROG, add_help=False)  # --help must describe the chosen task's flags
    task_only.add_argument("--task", choices=TASKS, default=TwoStageConfig.task)
    task = task_only.parse_known_args(argv)[0].task
    config_class = config_for_task(task)
    parser = _parser(config_class)
    for flag, reason in config_class.refused_flags.items():
        if any(arg == f"--{flag}" or arg.startswith(f"--{flag}=") for arg in argv):
            parser.error(f"--{flag} is not a flag of --task={task}: {reason}")
    values = vars(parser.parse_args(argv))
    del values["task"]
    try:
        return config_class(**values)
    except ValueError as error:  # a value the field's checks refuse: a usage error, not a traceback
        parser.error(str(error))


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(sys.argv[1:] if argv is None else argv)
    try:
        if config.task == "session":
            from tfrs_pipeline.pipelines import session as pipeline
        else:
            from tfrs_pipeline.pipelines import two_stage as pipeline
        pipeline.run(config)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
