"""The base of the training side's expected failures.

The command line answers each with one line naming the file and field at fault
(exit 2) instead of a traceback. Being torch-free, this module lets the command
line catch them without importing the modules that raise them.
"""

from __future__ import annotations


class CommandError(Exception):
    """Bad input or a failed check that the user can act on: a data set, a checkpoint, an export, an engine build."""
