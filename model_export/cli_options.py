"""Options of the command line whose defaults come from the configs (``model_export.config``): written once, there.

Light on purpose, like the configs: ``--help`` loads no torch.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Config = TypeVar("Config", bound="DataclassInstance")


def config_option(parser: argparse._ActionsContainer, config: type[DataclassInstance], flag: str, help: str, **kwargs: Any) -> None:
    """Adds the option that sets the config's field of the same name (``--max-batch``: ``max_batch``), with the field's
    default, shown in the help: the defaults are written once, in ``model_export.config``."""
    default = {field.name: field.default for field in dataclasses.fields(config)}[flag.removeprefix("--").replace("-", "_")]
    if default is not None and default is not False:
        help += f" (default {default!r})" if isinstance(default, str) else f" (default {default})"
    parser.add_argument(flag, default=default, help=help, **kwargs)


def config_from(config: type[Config], args: argparse.Namespace, **given: Any) -> Config:
    """The config with each field that has an option taken from the command line, the others from ``given`` or the defaults."""
    options = {field.name: getattr(args, field.name) for field in dataclasses.fields(config) if hasattr(args, field.name)}
    return config(**options, **given)
