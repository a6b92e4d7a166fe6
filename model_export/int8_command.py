"""The int8 graph on the command line: ``quantize`` (into an existing package) and ``export --precision int8``.

Light on purpose: ONNX Runtime's quantizer, pycocotools and the image reading load only when a command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from model_export.cli_options import config_from, config_option
from model_export.command_errors import CalibrationError
from model_export.config import QuantizeConfig

if TYPE_CHECKING:
    from model_export.calibration import ImageSet


def add_int8_options(parser: argparse._ActionsContainer, calibration_required: bool) -> None:
    parser.add_argument(
        "--calibration",
        type=Path,
        required=calibration_required,
        help="calibration images: a folder of images (subfolders too) or a COCO data set directory; "
        f"at least {QuantizeConfig.min_calibration_images} readable images",
    )
    share = f"{QuantizeConfig.val_fraction:.0%}".replace("%", "%%")  # argparse %-formats help texts
    parser.add_argument(
        "--val",
        type=Path,
        help="validation images for the accuracy gate, a folder or a COCO data set (default: the last "
        f"{share} of --calibration, at least {QuantizeConfig.min_val_images} images, held out)",
    )
    map_help = "gate: largest mAP drop allowed against the float graph (mAP@[.5:.95] on a COCO set; mAP@.5 against the float graph's detections on a plain folder)"
    config_option(parser, QuantizeConfig, "--max-map-drop", map_help, type=float)
    recall_help = "gate: least share of the float graph's detections at score >= 0.5 found again (same label, IoU >= 0.5)"
    config_option(parser, QuantizeConfig, "--min-recall", recall_help, type=float)


def add_quantize(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "quantize",
        help="add an int8 graph (Q/DQ) to a model package, if it passes its accuracy gate",
        description="Calibrates and quantizes the package's float graph (Conv, Gemm and MatMul in int8; the first conv, "
        "the RPN decoding, TopK, RoiAlign and NMS in float), measures it against the float graph on validation images, "
        "and writes it as model.int8.onnx with its figures in model.json only if it passes the gate.",
    )
    parser.add_argument("--package", type=Path, required=True, help="model package directory")
    add_int8_options(parser, calibration_required=True)
    parser.set_defaults(run=_run_quantize)


def int8_sets(args: argparse.Namespace, precision: str) -> tuple[ImageSet, ImageSet | None] | None:
    """The calibration and validation images the command line names, read and checked; None for a float-only export."""
    if precision != "int8":
        if args.calibration is not None or args.val is not None:
            raise CalibrationError("--calibration and --val are for an int8 graph: add --precision int8")
        return None
    if args.calibration is None:
        raise CalibrationError("--precision int8 needs --calibration DIR: a folder of images or a COCO data set to calibrate on")
    from model_export.calibration import read_image_set

    config = config_from(QuantizeConfig, args)
    calibration = read_image_set(args.calibration, config.min_calibration_images, config.max_image_pixels)
    val = read_image_set(args.val, config.min_val_images, config.max_image_pixels, what="validation") if args.val else None
    return calibration, val


def write_int8_graph(args: argparse.Namespace, package: Path, calibration: ImageSet, val: ImageSet | None) -> None:
    from model_export.quantize import add_int8_graph

    entry = add_int8_graph(package, calibration, val, config_from(QuantizeConfig, args), progress=lambda line: print(line, flush=True))
    gate = entry.accuracy
    against = "the ground truth" if gate.reference == "annotations" else "the float graph's detections"
    print(
        f"wrote {Path(package) / entry.file}: on {gate.val_images} validation images, {gate.metric} against {against} "
        f"{gate.float_map:.4f} (float) -> {gate.map:.4f} (int8), drop {gate.map_drop:.4f} <= {gate.max_map_drop:g}; "
        f"recall {gate.recall:.2%} of {gate.float_detections} detections >= {gate.min_recall:.0%}"
    )


def _run_quantize(args: argparse.Namespace) -> None:
    from service.manifest import read_manifest, verify_graph_file

    verify_graph_file(args.package, read_manifest(args.package))  # a bad package is named before the images are read
    sets = int8_sets(args, "int8")
    if sets is not None:
        write_int8_graph(args, args.package, *sets)
