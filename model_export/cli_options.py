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


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"should be at least 1, got {value}")
    return value


def parse_canvas(text: str) -> tuple[int, int]:
    """``HxW`` (or one number for a square) -> (H, W)."""
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"canvas should be HxW, like 320x320, got {text!r}") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) < 32:
        raise argparse.ArgumentTypeError(f"canvas should be HxW with both sides at least 32, got {text!r}")
    return values[0], values[1]
