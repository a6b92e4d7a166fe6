"""The training side's expected failures: bad input, or a failed check, that the user can act on.

The command line answers each with one line naming the file and field at fault
(exit 2) instead of a traceback. Being torch-free, this module lets the command
line catch them, and the torch-free configs raise them, without importing the
modules that do the work.
"""

from __future__ import annotations


class CommandError(Exception):
    """Bad input or a failed check that the user can act on: a data set, a checkpoint, an export, an engine build."""


class DatasetError(CommandError, ValueError):
    """A data set that cannot be used, with the file and field at fault in the message."""


class CheckpointError(CommandError, ValueError):
    """A checkpoint that cannot be loaded as asked, with the file and what differs."""


class ExportError(CommandError, RuntimeError):
    """The export cannot go on; the message says what to change."""


class PrecisionError(CommandError, ValueError):
    """The graph cannot be converted; the message says why."""


class EngineBuildError(CommandError, RuntimeError):
    """The engine cannot be built here; the message says why."""


class CalibrationError(CommandError, ValueError):
    """Calibration or validation images that cannot be used, or int8 options out of range; the message names the folder or option."""


class AccuracyGateError(CommandError, RuntimeError):
    """A reduced-precision graph missed its accuracy gate; the message gives the figures and by how much it missed."""


class OptionError(CommandError, ValueError):
    """Options out of range or at odds with each other (synthetic data, evaluation); the message names the option."""


class PhotoFolderError(CommandError, ValueError):
    """A folder of photos (``synth --backgrounds``, ``evaluate --negatives``) that is missing, empty or holds no usable
    image; the message names the folder."""
