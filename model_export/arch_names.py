"""The names of the supported architectures, without their builders.

The command line offers these as choices; importing them costs nothing, whereas
``model_export.architectures`` imports torch and torchvision (about 5 s on a
small CPU) for subcommands such as ``synth`` or ``--help`` that need neither.
"""

from __future__ import annotations

COMPACT_ARCH = "fasterrcnn_compact_fpn"
TORCHVISION_ARCHS = (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
)
ARCH_NAMES = (COMPACT_ARCH, *TORCHVISION_ARCHS)
